"""Under real load over HTTP: the model deployment autoscales up and back down without failing
requests, and overload past `max_queued_requests` is a quick 503 with a JSON error and Retry-After.

One Serve for both: the autoscaling service at /, and beside it (at /overload) one with a small
queue, which stays idle while the other scales."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from serve_app.launch.harness import (
    SteadyLoad,
    beside,
    deployment,
    fast_autoscaling,
    free_port,
    processes_named,
    replica_title,
    serve_run,
    sized_config,
    wait_until,
)

pytestmark = pytest.mark.serve

OVERLOAD = "overload"  # the second application's name and route


def model_replicas() -> int:
    return len(processes_named(replica_title("Classifier")))


def small_queue(config: dict) -> None:
    """Room for 8 model calls of 2 images each: 96 requests at once overflow it."""
    classifier = deployment(config, "Classifier")
    classifier.pop("autoscaling_config", None)
    classifier.update(num_replicas=1, max_ongoing_requests=4, max_queued_requests=4)
    classifier["user_config"]["max_batch_size"] = 4
    config["applications"][0]["args"]["ingress"].update(retry_after_s=2, max_images_per_call=2)


@pytest.fixture(scope="module")
def service():
    port = free_port()
    # Smaller CPU shares for the idle one (each replica still runs one thread), so that both, and the
    # second model replica of the first, fit the 2 CPUs.
    config = beside(sized_config(port, edit=fast_autoscaling), OVERLOAD,
                    sized_config(port, ingress_cpus=0.2, classifier_cpus=0.4, edit=small_queue))
    with serve_run(config) as base_url:
        yield base_url


def test_model_deployment_scales_up_under_load_and_back_down(service, shared_images):
    url = f"{service}/v1/classify"
    assert model_replicas() == 1

    with SteadyLoad(url, shared_images, concurrency=12) as under_load:
        wait_until(lambda: model_replicas() == 2, 120, "sustained load bringing a second model replica")
        time.sleep(5)
    assert set(under_load.since()) == {200}, f"failures while scaling up: {sorted(set(under_load.since()))}"

    # Idle but for one request at a time: the extra replica goes, no request fails on the way.
    with SteadyLoad(url, shared_images, concurrency=1) as trickle:
        wait_until(lambda: model_replicas() == 1, 90, "the model deployment scaling back down when idle")
    assert trickle.since() and set(trickle.since()) == {200}, f"failures while scaling down: {sorted(set(trickle.since()))}"


def test_overload_is_answered_with_503_and_the_service_recovers(service, shared_images):
    url = f"{service}/{OVERLOAD}/v1/classify"
    expected = {p.name: httpx.post(url, files={"file": (p.name, p.read_bytes(), "image/jpeg")}).json()
                ["predictions"][0]["index"] for p in shared_images[:16]}

    async def burst():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            async def one(path):
                started = time.monotonic()
                response = await client.post(url, files={"file": (path.name, path.read_bytes(), "image/jpeg")})
                return path.name, response, time.monotonic() - started
            return await asyncio.gather(*(one(shared_images[i % 16]) for i in range(96)))

    answers = asyncio.run(burst())
    statuses = [response.status_code for _, response, _ in answers]
    assert set(statuses) == {200, 503}, f"expected some accepted and some shed: {sorted(set(statuses))}"
    for name, response, seconds in answers:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert response.headers["retry-after"] == "2"
            assert seconds < 10, "a rejection must be quick, not a timeout"
        else:
            assert response.json()["predictions"][0]["index"] == expected[name], "accepted answers stay right"

    after = [httpx.post(url, files={"file": (p.name, p.read_bytes(), "image/jpeg")}, timeout=60) for p in shared_images[:8]]
    assert [r.status_code for r in after] == [200] * 8, "the service must recover once the load stops"

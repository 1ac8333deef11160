"""configs/cpu.yaml on a real three-node Ray cluster on 127.0.0.1, deployed with the `serve deploy`
CLI: replicas spread over nodes, an in-place config update with `python -m serve_app deploy`, and
the loss of a worker node, all under steady HTTP load; and `python -m serve_app deploy` refusing a
config no node can hold. First, on the same cluster: a deployment that fails says why, and the
deploying shell's SERVE_APP_* overrides reach the replicas. Run alone with `pytest -m cluster`."""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app.imaging import image_files
from serve_app.launch.harness import (
    QUICK_SHUTDOWN_ENV,
    SteadyLoad,
    deployment,
    free_port,
    sized_config,
    wait_until,
)
from serve_app.launch.launcher import RAY_ENV
from serve_app.settings import SHARED_IMAGES
from tests.cluster import LocalCluster

pytestmark = pytest.mark.cluster

PHOTOS = image_files(SHARED_IMAGES)[:20]


def on_this_cluster(config: dict) -> None:
    config["proxy_location"] = "HeadOnly"  # one HTTP port per machine, and several nodes share this one
    deployment(config, "Ingress")["ray_actor_options"]["resources"] = {"ingress": 0.1}  # beside the proxy, on the head


def cluster_config(port: int, classifier_replicas: int, max_batch_size: int) -> dict:
    def edit(config: dict) -> None:
        on_this_cluster(config)
        ingress, classifier = deployment(config, "Ingress"), deployment(config, "Classifier")
        ingress.pop("autoscaling_config")
        ingress["num_replicas"] = 1
        classifier.pop("autoscaling_config")
        classifier["num_replicas"] = classifier_replicas
        classifier["user_config"]["max_batch_size"] = max_batch_size

    return sized_config(port, classifier_cpus=0.5, edit=edit)


@pytest.fixture(scope="module")
def cluster():
    # Faster node-failure detection than Ray's default, so the test stays short.
    cluster = LocalCluster({**RAY_ENV, **QUICK_SHUTDOWN_ENV, "RAY_health_check_period_ms": "1000",
                            "RAY_health_check_failure_threshold": "3"})
    try:
        cluster.start_head(num_cpus=1, resources={"ingress": 1})
        cluster.add_worker("worker-a", num_cpus=1)
        cluster.add_worker("worker-b", num_cpus=1)
        cluster.port = free_port()
        cluster.url = f"http://127.0.0.1:{cluster.port}"
        yield cluster
    finally:
        cluster.stop()


# ---- `python -m serve_app deploy`: what it says ----------------------------------------------------

def test_a_deploy_whose_weights_cannot_be_found_says_why_within_30_s(cluster):
    config = sized_config(cluster.port, weights="/nonexistent/resnet18-f37072fd.pth", edit=on_this_cluster)
    started = time.monotonic()
    failed = cluster.serve_app_deploy(config)
    elapsed = time.monotonic() - started
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert elapsed < 30, f"took {elapsed:.0f}s"
    assert "deployment 'Classifier' of application 'classifier' failed to start: WeightsError: weights file " \
           "/nonexistent/resnet18-f37072fd.pth does not exist." in failed.stderr, output
    assert "SERVE_APP_WEIGHTS" in failed.stderr, "the ways to provide weights come with it"
    assert 'File "' not in failed.stderr, "the exception, not the whole traceback"
    assert "/tmp/ray/session_latest/logs/serve/replica_classifier_Classifier_*.log" in failed.stderr


def test_overrides_set_in_the_deploying_shell_reach_the_replicas(cluster):
    """The config names the official weights, which this cluster does not have: only the deploying
    shell's SERVE_APP_WEIGHTS=standin makes it start. The API key travels too, and is never printed."""
    key = "k-7c1e-not-for-logs"
    deployed = cluster.serve_app_deploy(sized_config(cluster.port, weights="torchvision", edit=on_this_cluster),
                                         env={"SERVE_APP_WEIGHTS": "standin", "SERVE_APP_API_KEYS": key,
                                              "SERVE_APP_WEIGTHS": "typo"})
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0 and "running" in deployed.stdout, output
    assert "forwarding to the replicas (runtime_env env_vars): SERVE_APP_WEIGHTS=standin, " \
           "SERVE_APP_API_KEYS=********" in deployed.stdout
    assert key not in output
    assert "warning: SERVE_APP_WEIGTHS is set here but is not a setting this service reads" in deployed.stdout
    health = httpx.get(f"{cluster.url}/healthz", timeout=10).json()
    assert health["model"]["standin"] is True
    photo = PHOTOS[0]
    files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    assert httpx.post(f"{cluster.url}/v1/classify", files=files, timeout=60).status_code == 401
    authorized = httpx.post(f"{cluster.url}/v1/classify", files=files, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})
    assert authorized.status_code == 200 and authorized.json()["model"]["standin"] is True


# ---- the service on three nodes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(cluster):
    """The service as `serve deploy` deploys it, on nodes the tests above left empty."""
    cluster.serve_shutdown()
    cluster.serve_deploy(cluster_config(cluster.port, classifier_replicas=2, max_batch_size=16))
    photo = PHOTOS[0]

    def answers_without_a_key_on_two_model_replicas() -> bool:
        answer = httpx.post(f"{cluster.url}/v1/classify", files={"file": (photo.name, photo.read_bytes())}, timeout=30)
        status = cluster.serve_status()["applications"]["classifier"]["status"]
        return answer.status_code == 200 and status == "RUNNING" and len(cluster.replica_nodes("Classifier")) == 2

    wait_until(answers_without_a_key_on_two_model_replicas, 300, "the service deployed")
    return cluster


def test_deployed_service_answers_and_spreads_model_replicas_over_nodes(service):
    with httpx.Client(timeout=60) as client:
        statuses = [client.post(f"{service.url}/v1/classify", files={"file": (p.name, p.read_bytes(), "image/jpeg")}).status_code
                    for p in PHOTOS]
    assert statuses == [200] * len(PHOTOS)
    nodes = service.replica_nodes("Classifier")
    assert len(nodes) == 2 and len(set(nodes)) == 2, f"model replicas on {nodes}"
    assert service.serve_status()["applications"]["classifier"]["status"] == "RUNNING"


def test_in_place_update_rolls_out_without_failed_requests(service):
    def batch_size_is_live() -> bool:
        info = httpx.get(f"{service.url}/healthz", timeout=5).json()["replica"]
        return info["batching"]["max_batch_size"] == 4

    with SteadyLoad(f"{service.url}/v1/classify", PHOTOS) as load:
        time.sleep(2)
        started = time.monotonic()
        deployed = service.serve_app_deploy(cluster_config(service.port, classifier_replicas=3, max_batch_size=4))
        assert deployed.returncode == 0 and "running" in deployed.stdout, deployed.stdout + deployed.stderr
        wait_until(lambda: len(service.replica_nodes("Classifier")) == 3, 120, "a third model replica")
        wait_until(batch_size_is_live, 60, "the new max_batch_size live")
        time.sleep(3)
    during = load.since(started)
    print(f"in-place update: {len(during)} requests during the rollout, statuses {sorted(set(during))}")
    assert len(during) > 20 and set(during) == {200}, f"statuses during the update: {sorted(set(during))}"


def test_a_config_no_node_can_hold_is_refused_at_once_saying_what_to_change(service):
    config = cluster_config(service.port, classifier_replicas=2, max_batch_size=16)
    deployment(config, "Classifier")["ray_actor_options"]["num_cpus"] = 2  # every node here has 1 CPU
    started = time.monotonic()
    refused = service.serve_app_deploy(config)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "'Classifier' asks for 2 CPUs per replica" in refused.stderr
    assert "largest node has 1 CPUs" in refused.stderr and "Lower ray_actor_options for 'Classifier'" in refused.stderr
    assert time.monotonic() - started < 60
    assert len(service.replica_nodes("Classifier")) >= 2  # the running service was left alone


def test_losing_a_worker_node_under_load(service):
    victim = next(node for node in service.replica_nodes("Classifier") if node != "head")
    with SteadyLoad(f"{service.url}/v1/classify", PHOTOS) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        service.kill_node(victim)

        def full_capacity() -> bool:
            nodes = service.replica_nodes("Classifier")
            return len(nodes) == 3 and victim not in nodes and \
                service.serve_status()["applications"]["classifier"]["status"] == "RUNNING"

        recovered_at = wait_until(full_capacity, 60, "three model replicas on the surviving nodes")
        time.sleep(5)
    during = load.since(killed_at)
    failures = sum(status != 200 for status in during)
    print(f"node {victim} killed: {failures} of {len(during)} requests failed, "
          f"full capacity after {recovered_at - killed_at:.1f}s")
    assert len(during) > 50
    assert failures / len(during) < 0.01, f"{failures} of {len(during)} requests failed after the node loss"
    assert recovered_at - killed_at <= 30, f"back to full capacity after {recovered_at - killed_at:.0f}s"
    assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200


"""The result cache in a real Redis (redis-server started by the test): ingress replicas share hits, and
Redis killed, hung or restarted under load fails no request.

In process first (two ingress apps over the fake model, one Redis), then end to end: configs/cpu.yaml
sized for 2 cores with two Ingress replicas and `ingress.cache.redis_url`, served as `make serve`
serves it, over real HTTP.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from serve_app.http.result_stores import FAILURES_TO_SKIP, RedisStore
from serve_app.launch.harness import RAY_ENV, SteadyLoad, deployment, free_port, serve_run, sized_config, wait_until
from serve_app.settings import METRICS_PORT_ENV_VAR
from tests.fakes import client_for
from serve_app.launch.redis_server import RedisServer
from tests.test_hardening import metric_total

RETRY_S = 1.0


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def post(url: str, path, **kwargs) -> httpx.Response:
    # A new connection each time, so the HTTP front may route each to either ingress replica.
    return httpx.post(url, files={"file": (path.name, path.read_bytes(), "image/jpeg")}, timeout=30, **kwargs)


@pytest.mark.fast
def test_two_ingress_replicas_share_one_redis(redis_server, shared_images):
    settings = {"ingress": {"cache": {"redis_url": redis_server.url}}}
    first, first_model, _ = client_for(result_cache=True, **settings)
    second, second_model, _ = client_for(result_cache=True, **settings)
    with first, second:  # one event loop each for the app's life, as a replica has (the Redis client lives in it)
        photo = shared_images[10]
        files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
        computed = first.post("/v1/classify", files=files)
        assert computed.headers["X-Cache"] == "miss"
        wait_until(lambda: redis_server.client().dbsize() == 1, 10, "the answer in Redis (written in the background)")
        # The second ingress's very first request: it asks the model for its answer identity, not for the answer.
        shared = second.post("/v1/classify", files=files)
        assert shared.headers["X-Cache"] == "hit" and shared.json() == computed.json()
        assert not second_model.requests, "the second replica never computed the first one's photo"
        cache = second.get("/healthz").json()["ingress"]["cache"]
        assert cache["store"] == "redis" and cache["reachable"] and cache["store_errors"] == 0
        assert cache["url"] == redis_server.url


@pytest.mark.fast
def test_a_hung_redis_costs_a_lookup_its_timeout_at_most_then_is_skipped(redis_server):
    store = RedisStore(redis_server.url, ttl_s=60, timeout_s=0.05, retry_s=RETRY_S)

    async def lookups() -> list[float]:
        await store.put({"a": b"answer"})
        assert await store.get(["a"]) == [b"answer"]
        redis_server.pause()
        waits = []
        for _ in range(FAILURES_TO_SKIP + 2):
            started = time.perf_counter()
            assert await store.get(["a"]) == [None]
            waits.append(time.perf_counter() - started)
        redis_server.resume()
        await asyncio.sleep(RETRY_S + 0.1)
        assert await store.get(["a"]) == [b"answer"], "tried again after redis_retry_s, and it answers"
        return waits

    waits = asyncio.run(lookups())
    assert all(wait < 0.2 for wait in waits), waits
    assert all(wait < 0.01 for wait in waits[FAILURES_TO_SKIP:]), f"skipped once it failed in a row: {waits}"
    assert store.stats()["store_errors"] == FAILURES_TO_SKIP and store.stats()["reachable"]


CONFIG_PORT, METRICS_PORT = free_port(), free_port()


@pytest.fixture(scope="module")
def shared_redis():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(shared_redis):
    def two_ingress_replicas_on_redis(config: dict) -> None:
        ingress = deployment(config, "Ingress")
        ingress.pop("autoscaling_config")
        ingress["num_replicas"] = 2
        config["applications"][0]["args"]["ingress"]["cache"].update(redis_url=shared_redis.url,
                                                                     redis_retry_s=RETRY_S)

    config = sized_config(CONFIG_PORT, result_cache=True, edit=two_ingress_replicas_on_redis)
    with serve_run(config, env={**RAY_ENV, METRICS_PORT_ENV_VAR: str(METRICS_PORT)}, launcher=True) as base_url:
        yield base_url


@pytest.mark.serve
def test_over_serve_every_repeat_is_a_hit_whichever_ingress_replica_answers(service, shared_redis, shared_images):
    url = f"{service}/v1/classify"
    photos = shared_images[20:30]
    first = {photo: post(url, photo) for photo in photos}
    assert all(answer.headers["X-Cache"] == "miss" for answer in first.values())
    wait_until(lambda: shared_redis.client().dbsize() == len(photos), 10, "every answer in Redis")
    for _ in range(3):
        for photo in photos:
            again = post(url, photo)
            assert again.headers["X-Cache"] == "hit" and again.json() == first[photo].json()

    def hits_by_replica() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
        lines = [line for line in text.splitlines()
                 if line.startswith("ray_serve_app_result_cache_lookups_total{") and 'outcome="hit"' in line]
        return {line.split('replica="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}

    # Prometheus counts each replica's hits: both answered repeats, and neither computed them again.
    wait_until(lambda: len(hits_by_replica()) == 2 and sum(hits_by_replica().values()) >= 3 * len(photos), 120,
               "hits counted on both ingress replicas")
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    assert metric_total(text, "ray_serve_app_result_cache_lookups_total", outcome="miss") == len(photos)


@pytest.mark.serve
def test_redis_killed_hung_and_restarted_under_load_fails_no_request(service, shared_redis, shared_images):
    url = f"{service}/v1/classify"
    with SteadyLoad(url, shared_images[30:50], concurrency=6) as load:
        time.sleep(4)
        shared_redis.pause()  # hung: every call to it times out
        time.sleep(3)
        shared_redis.resume()
        time.sleep(2)
        shared_redis.kill()  # gone: connections refused
        time.sleep(3)
        shared_redis.start()  # back, empty
        time.sleep(4)
    statuses = load.since()
    assert len(statuses) > 50 and set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} failed"

    photo = shared_images[55]
    post(url, photo)

    def hits_again() -> bool:
        return post(url, photo).headers["X-Cache"] == "hit" and shared_redis.client().dbsize() > 0

    wait_until(hits_again, 30, "hits from the restarted Redis")
    errors = [httpx.get(f"{service}/healthz", timeout=10).json()["ingress"]["cache"] for _ in range(6)]
    assert any(cache["store_errors"] > 0 for cache in errors), "the outage was counted"

    def exported() -> bool:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
        return metric_total(text, "ray_serve_app_result_cache_store_errors_total") > 0

    wait_until(exported, 120, "the store errors on Prometheus")

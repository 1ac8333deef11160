"""The result cache in process: what it keys answers by, its bounds, single flight, and that a hit is the
answer the model would give now for any top_k.

The real HTTP app and model client over the fake model handle (tests/fakes.py), behind the cache
as the Ingress deployment has it (`with_result_cache`); the stores alone where their bounds are the
point. Real Redis: tests/test_redis_cache.py."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from starlette.testclient import TestClient

from serve_app.errors import CorruptImageError, OverloadedError
from serve_app.http.api import build_app
from serve_app.http.model_client import RayModelClient
from serve_app.http.result_cache import CachingModelClient, Ranking, decoding_identity, with_result_cache
from serve_app.http.result_stores import FAILURES_TO_SKIP, MemoryStore, RedisStore
from serve_app.model.classifier import answer_identity
from serve_app.settings import RESULT_CACHE_ENV_VAR, AppSettings, DecodeLimits, ModelSettings
from tests.fakes import FakeModelHandle, RecordingMetrics, client_for
from tests.test_coalescing import held_then_released
from tests.images import truncated

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`


def cached_client(handle: FakeModelHandle, **args) -> CachingModelClient:
    settings = AppSettings.model_validate(args)
    model = with_result_cache(RayModelClient(handle, settings), settings)
    assert isinstance(model, CachingModelClient)
    return model


def post(client, data: bytes, top_k: int | None = None, name: str = "photo.jpg"):
    params = {"top_k": top_k} if top_k else {}
    return client.post("/v1/classify", params=params, files={"file": (name, data, "image/jpeg")})


def images_sent(handle: FakeModelHandle) -> int:
    return sum(len(request) for request in handle.requests)


def test_a_repeat_is_a_hit_that_answers_any_top_k_exactly_as_the_model_does_now(shared_images):
    photo = shared_images[0].read_bytes()
    client, handle, metrics = client_for(result_cache=True)
    plain, _, _ = client_for()  # no cache: what the model answers now
    first = post(client, photo, top_k=3)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    for k in (1, 3, 5, 1000):
        again = post(client, photo, top_k=k)
        assert again.status_code == 200 and again.headers["X-Cache"] == "hit"
        assert again.json() == post(plain, photo, top_k=k).json()
    assert images_sent(handle) == 1, "a hit neither decodes nor calls the model"
    assert metrics.cache_lookups == {"miss": 1, "hit": 4}
    cache = client.get("/healthz").json()["ingress"]["cache"]
    assert cache["enabled"] and cache["store"] == "memory"
    assert (cache["hits"], cache["misses"], cache["entries"]) == (4, 1, 1)
    assert cache["bytes"] > 6000 and cache["hit_ratio"] == 0.8


def test_every_route_that_takes_encoded_images_says_hit_or_miss(shared_images):
    photo = shared_images[1].read_bytes()
    client, handle, _ = client_for(result_cache=True)
    assert client.post("/predict", files={"file": ("a.jpg", photo, "image/jpeg")}).headers["X-Cache"] == "miss"
    assert client.post("/predict", files={"file": ("a.jpg", photo, "image/jpeg")}).headers["X-Cache"] == "hit"
    raw = client.post("/v1/classify", content=photo, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and raw.headers["X-Cache"] == "hit"
    other = shared_images[2].read_bytes()
    both = client.post("/v1/classify", files=[("file", ("a.jpg", photo, "image/jpeg")),
                                              ("file", ("b.jpg", other, "image/jpeg"))])
    assert both.headers["X-Cache"] == "miss", "hit only when every image of the request was"
    assert [len(r) for r in handle.requests] == [1, 1], "a request's misses go to the model, its hits do not"


def test_a_changed_byte_another_backend_or_other_weights_miss(shared_images):
    photo = shared_images[3].read_bytes()
    handle = FakeModelHandle(identity="weights-a")
    client, _, _ = client_for(handle, result_cache=True)
    post(client, photo)
    changed = bytearray(photo)
    changed[-3] ^= 0x01  # inside the entropy-coded data, before the EOI marker: still a JPEG
    assert post(client, bytes(changed)).headers["X-Cache"] == "miss"
    handle.identity = "weights-b"  # the model deployment now runs other weights, or another backend
    assert post(client, photo).headers["X-Cache"] == "hit", "looked up under the identity it knows"
    assert post(client, photo).headers["X-Cache"] == "hit"
    post(client, shared_images[4].read_bytes())  # an answer from weights-b: the cache learns the new identity
    assert post(client, photo).headers["X-Cache"] == "miss", "answers of other weights are never served"
    assert post(client, photo).headers["X-Cache"] == "hit"


def test_what_decides_an_answer_is_in_the_replicas_identity_and_the_ingress_decoding():
    info = {"weights": {"sha256": "a" * 64}, "backend": "onnx-int8", "device": "cpu", "decodes_jpeg": False}
    settings, limits = ModelSettings(), DecodeLimits(40_000_000, True)
    identity = answer_identity(info, "1" * 64, settings, limits)
    assert identity == answer_identity(dict(info), "1" * 64, settings, limits)
    others = [
        answer_identity({**info, "weights": {"sha256": "b" * 64}}, "1" * 64, settings, limits),
        answer_identity({**info, "backend": "onnx"}, "1" * 64, settings, limits),
        answer_identity(info, "2" * 64, settings, limits),  # another artifact (INT8 calibrated otherwise)
        answer_identity({**info, "device": "cuda"}, "1" * 64, settings, limits),
        answer_identity({**info, "decodes_jpeg": True}, "1" * 64, settings, limits),
    ]
    assert identity not in others and len(set(others)) == len(others)
    drafts = {decoding_identity(AppSettings.model_validate({"ingress": {"draft_decode": draft}}))
              for draft in (True, False)}
    assert len(drafts) == 2, "draft decoding changes the pixels: it keys the answer"


def knowing_the_model(handle: FakeModelHandle, shared_images) -> CachingModelClient:
    """A cache that has had one answer from the model (it learns the model's answer identity from it)."""
    model = cached_client(handle)
    asyncio.run(model.classify([shared_images[99].read_bytes()], 1))
    handle.calls.clear()
    return model


def test_concurrent_identical_requests_make_one_model_call_and_all_but_one_are_hits(shared_images):
    photo = shared_images[5].read_bytes()
    handle = FakeModelHandle()
    model = knowing_the_model(handle, shared_images)
    ks = (1, 2, 3, 4, 5, 6, 7, 8)
    answers = asyncio.run(held_then_released(handle, [model.classify([photo], k) for k in ks]))
    assert images_sent(handle) == 1
    assert sorted(answer.cached for answer in answers) == [(False,)] + [(True,)] * 7
    for k, answer in zip(ks, answers):
        assert answer.indices.shape == (1, k)
        np.testing.assert_array_equal(answer.indices[0], answers[-1].indices[0, :k])
    assert (model.counts.hits, model.counts.misses) == (7, 1 + 1)  # the first answer's miss too


def test_a_request_that_leaves_does_not_strand_those_waiting_for_its_answer(shared_images):
    photo = shared_images[6].read_bytes()
    handle = FakeModelHandle()
    model = knowing_the_model(handle, shared_images)

    async def run():
        handle.gate = asyncio.Event()
        leader = asyncio.ensure_future(model.classify([photo], 3))
        await asyncio.sleep(0.2)
        follower = asyncio.ensure_future(model.classify([photo], 3))
        await asyncio.sleep(0.05)
        leader.cancel()  # its deadline passed, or its client went away
        await asyncio.sleep(0.05)
        handle.gate.set()
        return await asyncio.wait_for(follower, 10)

    answer = asyncio.run(run())
    assert answer.indices.shape == (1, 3) and not answer.errors
    assert images_sent(handle) == 2, "the follower computed it itself"


def test_a_failed_computation_fails_its_followers_too_and_is_not_kept(shared_images):
    from ray.serve.exceptions import BackPressureError

    photo = shared_images[7].read_bytes()
    handle = FakeModelHandle()
    model = knowing_the_model(handle, shared_images)
    full = BackPressureError(num_queued_requests=16, max_queued_requests=16)
    failed = asyncio.run(held_then_released(handle, [model.classify([photo], 3) for _ in range(3)], [full]))
    assert all(isinstance(answer, OverloadedError) for answer in failed)
    assert len({id(answer) for answer in failed}) == 3, "each request raises its own copy"
    later = asyncio.run(model.classify([photo], 3))
    assert later.cached == (False,) and not later.errors


def test_a_broken_upload_is_refused_each_time_and_never_kept(shared_images):
    broken = truncated(shared_images[8])
    client, _, metrics = client_for(result_cache=True)
    for _ in range(2):
        answer = post(client, broken)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == CorruptImageError.code
    assert client.get("/healthz").json()["ingress"]["cache"]["entries"] == 0


def test_off_in_the_config_or_the_environment_no_header_and_every_request_computed(shared_images, monkeypatch):
    photo = shared_images[9].read_bytes()
    for args, env in (({"ingress": {"cache": {"enabled": False}}}, None), ({}, "off"), ({}, "OFF")):
        if env:
            monkeypatch.setenv(RESULT_CACHE_ENV_VAR, env)
        settings = AppSettings.from_args(args)
        handle = FakeModelHandle()
        model = with_result_cache(RayModelClient(handle, settings), settings)
        client = TestClient(build_app(model, settings, RecordingMetrics()))
        assert "X-Cache" not in post(client, photo).headers and "X-Cache" not in post(client, photo).headers
        assert images_sent(handle) == 2
        assert client.get("/healthz").json()["ingress"]["cache"] == {"enabled": False}
    monkeypatch.setenv(RESULT_CACHE_ENV_VAR, "on")
    assert AppSettings.from_args({}).ingress.cache.enabled
    monkeypatch.setenv(RESULT_CACHE_ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=f"{RESULT_CACHE_ENV_VAR} must be 'on' or 'off'"):
        AppSettings.from_args({})


def test_the_memory_store_drops_the_least_recently_used_past_its_bytes():
    value = bytes(1000)
    store = MemoryStore(max_bytes=3 * (1000 + 1 + 100), ttl_s=60)

    async def run():
        await store.put({"a": value, "b": value, "c": value})
        await store.get(["a"])  # a is now the most recently used
        await store.put({"d": value})
        return await store.get(["a", "b", "c", "d"])

    assert asyncio.run(run()) == [value, None, value, value]
    assert store.stats()["entries"] == 3 and store.stats()["bytes"] <= store.stats()["max_bytes"]
    asyncio.run(store.put({"huge": bytes(10_000)}))
    assert asyncio.run(store.get(["huge"])) == [None], "a value larger than the whole store is not kept"


def test_the_memory_store_forgets_answers_after_their_ttl():
    now = [1000.0]
    store = MemoryStore(max_bytes=10**6, ttl_s=30, clock=lambda: now[0])
    asyncio.run(store.put({"a": b"x" * 10}))
    now[0] += 29.9
    assert asyncio.run(store.get(["a"])) == [b"x" * 10]
    now[0] += 0.2
    assert asyncio.run(store.get(["a"])) == [None]
    assert store.stats()["entries"] == 0 and store.stats()["bytes"] == 0


def test_a_ranking_survives_its_encoding_and_foreign_bytes_are_not_one():
    rng = np.random.default_rng(0)
    probabilities = rng.random(1000).astype(np.float32)
    order = np.argsort(-probabilities, kind="stable")
    ranking = Ranking(order.astype(np.int16), probabilities[order])
    decoded = Ranking.decode(ranking.encode())
    np.testing.assert_array_equal(decoded.indices, ranking.indices)
    np.testing.assert_array_equal(decoded.scores, ranking.scores)
    assert Ranking.decode(b"something else") is None


def test_redis_that_does_not_answer_is_a_quick_miss_logged_once_and_tried_again_later(caplog):
    from serve_app.launch.harness import free_port

    now, counted = [0.0], []
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, timeout_s=0.05, retry_s=1.0,
                       clock=lambda: now[0], on_error=lambda: counted.append(1))  # nothing listens there

    async def run():
        results = []
        for _ in range(5):
            results.append(await store.get(["a", "b"]))
            await store.put({"a": b"x"})
        now[0] += 1.5
        results.append(await store.get(["a"]))
        return results

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        results = asyncio.run(run())
    assert results[:5] == [[None, None]] * 5 and results[5] == [None]
    # FAILURES_TO_SKIP failed calls in a row, then skipped while it is down, then tried again after retry_s.
    assert store.stats()["store_errors"] == len(counted) == FAILURES_TO_SKIP + 1
    assert store.stats()["reachable"] is False
    assert sum("Redis at redis://127.0.0.1" in r.getMessage() for r in caplog.records) == 1

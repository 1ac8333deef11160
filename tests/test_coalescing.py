"""Concurrent requests travel to the model as one call, and each still gets exactly its own answer.

In process: the real model client (and, over HTTP, the real Starlette app) over the fake model
handle, whose gate holds a call in flight while the next requests arrive.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from serve_app.errors import CorruptImageError, OverloadedError
from serve_app.http.api import build_app
from serve_app.http.model_client import RayModelClient
from serve_app.imaging import load_image
from serve_app.settings import AppSettings
from tests.fakes import FakeModelHandle, expected_class
from tests.images import truncated

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`


def client(handle: FakeModelHandle, **ingress) -> RayModelClient:
    return RayModelClient(handle, AppSettings.model_validate({"ingress": ingress}))


def photos(shared_images, n: int) -> list[bytes]:
    return [path.read_bytes() for path in shared_images[:n]]


def expected(data: bytes) -> int:
    return expected_class(load_image(data, max_pixels=10**9, draft=True))


async def held_then_released(handle: FakeModelHandle, requests, failures: list[BaseException | None] = ()):
    """Start `requests` (coroutines) one after another while the first call is held in flight, then
    let every call through, the next ones to return failing with `failures`; their results (or
    exceptions) in order."""
    handle.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(request) for request in requests]
    await asyncio.sleep(0.2)  # decoding in threads, then queueing behind the held call
    handle.failures = list(failures)
    handle.gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows_k_and_errors(shared_images):
    handle = FakeModelHandle()
    model = client(handle)
    images = photos(shared_images, 12)
    broken = truncated(shared_images[0])
    # Requests of 1 to 3 images, each with its own k; request 4 carries a corrupt image among good ones.
    requests = [[images[i]] for i in range(6)] + [[images[6], images[7]], [images[8], broken, images[9]],
                                                     [images[10], images[11]]]
    ks = [1, 3, 5, 2, 7, 1, 4, 2, 10]

    async def run():
        return await held_then_released(handle, [model.classify(r, k) for r, k in zip(requests, ks)])

    answers = asyncio.run(run())
    assert len(handle.calls) < len(requests), "concurrent requests must share model calls"
    assert len(handle.requests) == len(requests)
    for request, k, answer in zip(requests, ks, answers):
        assert answer.indices.shape == (len(request), k) and answer.scores.shape == (len(request), k)
        for row, data in enumerate(request):
            if data is broken:
                assert isinstance(answer.errors[row], CorruptImageError), "the bad image fails alone"
            else:
                assert row not in answer.errors and answer.indices[row, 0] == expected(data)
                assert answer.scores[row, 0] == pytest.approx(0.9)


def test_a_request_that_finds_no_call_in_flight_goes_at_once(shared_images):
    handle = FakeModelHandle()
    model = client(handle)

    async def run():
        handle.gate = asyncio.Event()
        task = asyncio.ensure_future(model.classify(photos(shared_images, 1), 3))
        for _ in range(100):  # no timer: it is sent as soon as it is decoded
            await asyncio.sleep(0.01)
            if handle.calls:
                break
        sent_alone = [len(call) for call in handle.calls]
        handle.gate.set()
        await task
        return sent_alone

    assert asyncio.run(run()) == [1]


def test_a_call_carries_at_most_max_images_per_call_and_a_full_call_goes_at_once(shared_images):
    handle = FakeModelHandle()
    model = client(handle, max_images_per_call=4)
    images = photos(shared_images, 11)

    async def run():
        return await held_then_released(handle, [model.classify([data], 1) for data in images])

    answers = asyncio.run(run())
    assert [answer.indices[0, 0] for answer in answers] == [expected(data) for data in images]
    sizes = [sum(len(request) for request in call) for call in handle.calls]
    assert max(sizes) <= 4 and sum(sizes) == 11
    assert len(handle.calls) >= 3, "full calls went while the first was still held"


def test_a_request_larger_than_a_call_goes_alone(shared_images):
    handle = FakeModelHandle()
    model = client(handle, max_images_per_call=2)
    answer = asyncio.run(model.classify(photos(shared_images, 5), 1))
    assert [len(call) for call in handle.calls] == [1] and len(answer) == 5


def test_a_replica_that_dies_fails_no_request_of_the_merged_call(shared_images):
    handle = FakeModelHandle()
    model = client(handle)
    images = photos(shared_images, 6)

    # The call held alone succeeds; the merged one sent after it finds its replica dead once.
    answers = asyncio.run(held_then_released(handle, [model.classify([d], 1) for d in images],
                                             failures=[None, RayActorError()]))
    assert [len(call) for call in handle.calls] == [1, 5, 5], "the merged call was sent again, whole"
    assert [answer.indices[0, 0] for answer in answers] == [expected(d) for d in images]
    assert not any(answer.errors for answer in answers)


def test_a_full_model_queue_gives_each_request_its_own_503(shared_images):
    handle = FakeModelHandle()
    model = client(handle, retry_after_s=3)
    images = photos(shared_images, 5)

    full = BackPressureError(num_queued_requests=9, max_queued_requests=8)
    answers = asyncio.run(held_then_released(handle, [model.classify([d], 1) for d in images], failures=[full, full]))
    assert len(handle.calls) == 2, "one call alone, then the four queued behind it together"
    assert all(isinstance(a, OverloadedError) and a.headers == {"Retry-After": "3"} for a in answers)
    assert len({id(a) for a in answers}) == len(answers), "each request its own error, not one shared exception"


def test_a_request_that_leaves_does_not_fail_the_others(shared_images):
    """One request leaves while its call is in flight, another while it is still queued."""
    handle = FakeModelHandle()
    model = client(handle)
    images = photos(shared_images, 6)

    async def run():
        handle.gate = asyncio.Event()
        in_flight = asyncio.ensure_future(model.classify([images[0]], 1))
        await asyncio.sleep(0.1)
        queued = [asyncio.ensure_future(model.classify([d], 1)) for d in images[1:]]
        await asyncio.sleep(0.2)
        in_flight.cancel()  # its client went away: its call goes on for nobody
        queued[0].cancel()  # its deadline passed while it waited: it never travels
        handle.gate.set()
        return await asyncio.gather(*queued[1:]), in_flight, queued[0]

    answers, left_in_flight, left_queued = asyncio.run(run())
    assert left_in_flight.cancelled() and left_queued.cancelled()
    assert [answer.indices[0, 0] for answer in answers] == [expected(d) for d in images[2:]]
    assert sum(len(call) for call in handle.calls) == 5, "the request that left while queued was never sent"


def test_healthz_shows_requests_per_model_call(shared_images):
    handle = FakeModelHandle()
    settings = AppSettings()
    calls = []
    app = build_app(RayModelClient(handle, settings, on_call=lambda requests, images: calls.append(requests)),
                    settings)
    images = photos(shared_images, 12)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            posts = [http.post("/v1/classify", files={"file": ("p.jpg", data, "image/jpeg")}) for data in images]
            answers = await held_then_released(handle, posts)
            return answers, (await http.get("/healthz")).json()

    answers, health = asyncio.run(run())
    assert [a.json()["predictions"][0]["index"] for a in answers] == [expected(d) for d in images]
    stats = health["ingress"]
    assert stats["requests"] == 12 and stats["model_calls"] == len(handle.calls) < 12
    assert stats["requests_per_call"] == pytest.approx(12 / len(handle.calls), abs=0.01)
    assert sorted(calls) == sorted(len(call) for call in handle.calls), "the metric sees every call"
    assert health["replica"]["batching"]["max_batch_size"] == 16, "beside the model's batching"

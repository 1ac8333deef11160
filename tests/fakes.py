"""A stand-in for the model deployment's handle, so the HTTP app and its model client run in process:
through Starlette's TestClient (`client_for`), or served over real HTTP by uvicorn (`asgi_server`).

The fake handle answers the way a Classifier replica does (one call: a list of requests'
ImageBatches in, their TopKs out), deterministically: each image's top class is its mean grey
level, with probability 0.9. Calls are recorded; failures (Ray's exceptions), a delay, or a gate
that holds every call until it opens can be set up front.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import numpy as np
from starlette.testclient import TestClient

from serve_app.errors import ServiceError
from serve_app.http.api import build_app
from serve_app.http.model_client import RayModelClient
from serve_app.http.result_cache import with_result_cache
from serve_app.imaging import load_image
from serve_app.launch.harness import free_port
from serve_app.model.top_k import top_k_rows
from serve_app.settings import AppSettings
from serve_app.wire import ImageBatch, TopK

MODEL_INFO = {
    "architecture": "resnet18",
    "weights": {"name": "standin", "sha256": "0" * 64, "standin": True},
    "backend": "fake",
    "device": "cpu",
}


def expected_class(pixels: np.ndarray) -> int:
    return int(pixels.mean())


def fake_probabilities(pixels: np.ndarray) -> np.ndarray:
    probabilities = np.full(1000, 0.1 / 999, np.float32)
    probabilities[expected_class(pixels)] = 0.9
    return probabilities


class _Method:
    def __init__(self, function):
        self._function = function

    def remote(self, *args):
        return self._function(*args)


class _ByReference:
    def __init__(self, handle: "FakeModelHandle"):
        self.classify = _Method(lambda batches: handle._classify(batches, by_reference=True))
        self.info = handle.info


class FakeModelHandle:
    def __init__(self, failures: list[BaseException] | None = None, delay_s: float = 0.0, info_delay_s: float = 0.0,
                 identity: str = "fake-model-1"):
        self.calls: list[list[ImageBatch]] = []  # each model call: the requests it carried
        self.by_reference: list[bool] = []  # per call: whether it went through the object store
        self.failures = list(failures or [])
        self.delay_s = delay_s
        self.gate: asyncio.Event | None = None  # when set, every call waits until it opens
        self.info_delay_s = info_delay_s
        self.identity = identity  # the answer identity a replica stamps on its answers (what decided them)
        self.classify = _Method(self._classify)
        self.info = _Method(self._info)

    @property
    def requests(self) -> list[ImageBatch]:
        return [request for call in self.calls for request in call]

    def options(self, _by_reference: bool = False) -> "FakeModelHandle":
        return _ByReference(self) if _by_reference else self

    async def _classify(self, batches: list[ImageBatch], by_reference: bool = False) -> list[TopK]:
        self.calls.append(list(batches))
        self.by_reference.append(by_reference)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures and (failure := self.failures.pop(0)) is not None:  # None: this call succeeds
            raise failure
        await asyncio.sleep(self.delay_s)
        return [replace(answer(batch), identity=self.identity) for batch in batches]

    async def _info(self) -> dict:
        await asyncio.sleep(self.info_delay_s)
        return {**MODEL_INFO, "answer_identity": self.identity, "batching": {"max_batch_size": 16}}


def answer(batch: ImageBatch) -> TopK:
    """What a replica answers for one request's images."""
    rows: list[np.ndarray | ServiceError] = []
    for image in batch.images:
        if isinstance(image, bytes):  # a JPEG to decode, as a replica with decode_on_replica does
            try:
                image = load_image(image, max_pixels=10**9, draft=False)
            except ServiceError as error:
                image = error
        rows.append(image if isinstance(image, ServiceError) else fake_probabilities(image))
    return top_k_rows(rows, batch.k)


class RequestCounts(Counter):
    def inc(self, tags: dict) -> None:
        self[(tags["route"], tags["status"])] += 1


class RecordingMetrics:
    """Records what IngressMetrics would export: requests by (route, status), refusals by code."""

    def __init__(self):
        self.requests, self.rejections, self.decode_seconds = RequestCounts(), Counter(), []
        self.cache_lookups = Counter()

    def rejected(self, reason: str) -> None:
        self.rejections[reason] += 1

    def cache_lookup(self, outcome: str) -> None:
        self.cache_lookups[outcome] += 1


def client_for(handle=None, result_cache: bool = False, **args) -> tuple[TestClient, FakeModelHandle, RecordingMetrics]:
    """The HTTP app with these settings (`args`, as a config's), in process over the fake handle; behind
    the result cache of the settings where `result_cache` (as the Ingress deployment has it)."""
    settings = AppSettings.model_validate(args)
    handle, metrics = handle or FakeModelHandle(), RecordingMetrics()
    model = RayModelClient(handle, settings, on_decoded=metrics.decode_seconds.append)
    if result_cache:
        model = with_result_cache(model, settings, on_lookup=metrics.cache_lookup)
    return TestClient(build_app(model, settings, metrics), raise_server_exceptions=False), handle, metrics


@contextmanager
def asgi_server(app) -> Iterator[str]:
    """`app` served by uvicorn on 127.0.0.1 in a thread of this process: its base URL while open."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="asgi-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

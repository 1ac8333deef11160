"""A stand-in for the model deployment's handle, so the HTTP app and its model client run in process.

It answers the way a Classifier replica does (one call: a list of requests' ImageBatches in, their
TopKs out), deterministically: each image's top class is its mean grey level, with probability
0.9. Calls are recorded; failures (Ray's exceptions), a delay, or a gate that holds every call
until it opens can be set up front.
"""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.errors import ServiceError
from serve_app.imaging import load_image
from serve_app.predictions import ImageBatch, TopK, top_k_rows

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
    def __init__(self, failures: list[BaseException] | None = None, delay_s: float = 0.0, info_delay_s: float = 0.0):
        self.calls: list[list[ImageBatch]] = []  # each model call: the requests it carried
        self.by_reference: list[bool] = []  # per call: whether it went through the object store
        self.failures = list(failures or [])
        self.delay_s = delay_s
        self.gate: asyncio.Event | None = None  # when set, every call waits until it opens
        self.info_delay_s = info_delay_s
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
        return [answer(batch) for batch in batches]

    async def _info(self) -> dict:
        await asyncio.sleep(self.info_delay_s)
        return {**MODEL_INFO, "batching": {"max_batch_size": 16}}


def answer(batch: ImageBatch) -> TopK:
    """What a replica answers for one request's images."""
    rows: list[np.ndarray | ServiceError] = [fake_probabilities(pixels) for pixels in batch.pixels]
    for jpeg in batch.jpegs:
        try:
            rows.append(fake_probabilities(load_image(jpeg, max_pixels=10**9, draft=False)))
        except ServiceError as error:
            rows.append(error)
    return top_k_rows(rows, batch.k)

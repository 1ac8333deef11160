"""A stand-in for the model deployment's handle, so the HTTP app and its model client run in process.

It answers the way a Classifier replica does (one ImageBatch in, one TopK out), deterministically:
each image's top class is its mean grey level, with probability 0.9. Calls are recorded, and
failures (Ray's exceptions) or a delay can be queued up front.
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
        self.classify = _Method(lambda batch: handle._classify(batch, by_reference=True))
        self.info = handle.info


class FakeModelHandle:
    def __init__(self, failures: list[BaseException] | None = None, delay_s: float = 0.0):
        self.calls: list[ImageBatch] = []
        self.by_reference: list[bool] = []  # per call: whether it went through the object store
        self.failures = list(failures or [])
        self.delay_s = delay_s
        self.classify = _Method(self._classify)
        self.info = _Method(self._info)

    def options(self, _by_reference: bool = False) -> "FakeModelHandle":
        return _ByReference(self) if _by_reference else self

    async def _classify(self, batch: ImageBatch, by_reference: bool = False) -> TopK:
        self.calls.append(batch)
        self.by_reference.append(by_reference)
        if self.failures:
            raise self.failures.pop(0)
        await asyncio.sleep(self.delay_s)
        rows: list[np.ndarray | ServiceError] = [fake_probabilities(pixels) for pixels in batch.pixels]
        for jpeg in batch.jpegs:
            try:
                rows.append(fake_probabilities(load_image(jpeg, max_pixels=10**9, draft=False)))
            except ServiceError as error:
                rows.append(error)
        return top_k_rows(rows, batch.k)

    async def _info(self) -> dict:
        return {**MODEL_INFO, "batching": {"max_batch_size": 16}}

"""The model deployment: batches requests' images with @serve.batch and answers each request's top k.

A request arrives as one ImageBatch (all its images, uint8 224x224x3 pixels the ingress already
validated, plus JPEGs to decode here where `decode_on_replica`), so one bad upload can never fail
a batch, and leaves as one TopK: k indices and scores per image, not 1,000 probabilities. Labels
belong to the ingress. Inference runs in a worker thread so the replica keeps accepting requests
(and the next batch keeps filling) while the current one computes.

The batch wait adapts to load: a request that finds the replica empty starts its batch at once,
so a lone request is never held; one that finds other requests already inside (queued or
computing) lets its batch wait up to `batch_wait_timeout_s` to fill, since under load fuller
batches spend less CPU per image (benchmarks/results/batching.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import numpy as np
import ray
from ray import serve

from serve_app.backends import load_backend
from serve_app.errors import ServiceError
from serve_app.predictions import NUM_CLASSES, ImageBatch, TopK, softmax, top_k_rows
from serve_app.settings import BatchSettings, ModelSettings
from serve_app.telemetry import ModelMetrics
from serve_app.weights import resolve_weights

_DEFAULT_BATCH = BatchSettings()


def replica_cpu_count() -> int:
    """Threads to use: the CPUs Ray gave this replica, so replicas on one node don't oversubscribe."""
    try:
        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # not inside a Ray worker (tests, CLI)
        assigned = 1.0
    return max(1, math.ceil(assigned))


@serve.deployment(name="Classifier")
class Classifier:
    def __init__(self, settings: ModelSettings):
        started = time.perf_counter()
        source = resolve_weights(settings.weights, calibration_images=settings.calibration_images)
        threads = replica_cpu_count()
        self._backend = load_backend(settings, source, threads)
        self._info = {
            "architecture": "resnet18",
            "weights": source.describe(),
            "backend": self._backend.name,
            "device": self._backend.device,
            "threads": threads,
            "load_seconds": round(time.perf_counter() - started, 3),
        }
        self._batch = _DEFAULT_BATCH
        self._inside = 0  # requests in this replica: queued for a batch or computing
        self._batch_sizes: Counter[int] = Counter()  # how full batches run, since start
        self._metrics = ModelMetrics(self._backend.name)
        self._decode_device = None
        if settings.decode_on_replica:
            import torch  # only replicas that decode need it (ONNX replicas otherwise never import torch)

            self._decode_device = torch.device(self._backend.device)
        self._info["decodes_jpeg"] = self._decode_device is not None

    def reconfigure(self, user_config: dict) -> None:
        self._batch = BatchSettings.model_validate(user_config or {})
        self._classify_batch.set_max_batch_size(self._batch.max_batch_size)

    async def classify(self, images: ImageBatch) -> TopK:
        """The top k of each image of one request, computed in a batch with other requests' images."""
        # Set before enqueueing: the batch loop reads the wait when this request starts a batch.
        self._classify_batch.set_batch_wait_timeout_s(self._batch.batch_wait_timeout_s if self._inside else 0.0)
        self._inside += 1
        try:
            return await self._classify_batch(images)
        finally:
            self._inside -= 1

    @serve.batch(max_batch_size=_DEFAULT_BATCH.max_batch_size, batch_wait_timeout_s=0.0)
    async def _classify_batch(self, requests: list[ImageBatch]) -> list[TopK]:
        """Every request's pixels as one batch, and every JPEG to decode here as another, each run in
        chunks of max_batch_size images (a request may carry many); then each request's rows back,
        as top k."""
        chunk = self._batch.max_batch_size
        pixels = np.concatenate([r.pixels for r in requests])
        probabilities = [await self._probabilities(pixels[i : i + chunk]) for i in range(0, len(pixels), chunk)]
        pixel_probabilities = np.concatenate(probabilities) if probabilities else np.empty((0, NUM_CLASSES), np.float32)
        jpegs = [jpeg for r in requests for jpeg in r.jpegs]
        decoded = []
        for i in range(0, len(jpegs), chunk):
            decoded += await self._decoded_probabilities(jpegs[i : i + chunk])
        answers, pixel_row, jpeg_row = [], 0, 0
        for request in requests:
            rows = list(pixel_probabilities[pixel_row : pixel_row + len(request.pixels)])
            rows += decoded[jpeg_row : jpeg_row + len(request.jpegs)]
            pixel_row, jpeg_row = pixel_row + len(request.pixels), jpeg_row + len(request.jpegs)
            answers.append(top_k_rows(rows, request.k))
        return answers

    async def _decoded_probabilities(self, encoded: list[bytes]) -> list[np.ndarray | ServiceError]:
        """JPEGs decoded here, on the backend's device, as one batch: each one's probabilities or error."""
        from serve_app.device_imaging import decode_batch, in_batch_order

        if self._decode_device is None:
            raise RuntimeError("this model deployment does not decode (model.decode_on_replica is false)")
        decoded = await asyncio.to_thread(decode_batch, encoded, self._decode_device)
        probabilities = None if decoded.images is None else await self._probabilities(decoded.images)
        return in_batch_order(decoded, probabilities, len(encoded))

    async def _probabilities(self, batch) -> np.ndarray:
        """One forward pass, off the event loop, counted in the batch-size stats and metrics."""
        self._batch_sizes[len(batch)] += 1
        started = time.perf_counter()
        logits = await asyncio.to_thread(self._backend.infer, batch)
        self._metrics.batch(len(batch), time.perf_counter() - started)
        return softmax(logits)

    def info(self) -> dict:
        sizes = {str(size): count for size, count in sorted(self._batch_sizes.items())}
        return {**self._info, "batching": {**self._batch.model_dump(), "batch_sizes": sizes}}

"""The model deployment: batches requests' images with @serve.batch and answers each request's top k.

A call from an ingress replica carries the requests it held together (serve_app/coalescing.py), each
as one ImageBatch (all its images, uint8 224x224x3 pixels the ingress already validated, plus JPEGs
to decode here where `decode_on_replica`), so one bad upload can never fail a batch; each leaves as
one TopK: k indices and scores per image, not 1,000 probabilities. Labels belong to the ingress.
Inference runs in a worker thread so the replica keeps accepting calls (and the next batch keeps
filling) while the current one computes. A forward pass that raises fails that batch's calls only.

The batch wait adapts to load: a call that finds the replica empty starts its batch at once, so a
lone request is never held; one that finds other calls already inside (queued or computing) lets
its batch wait up to `batch_wait_timeout_s` to fill, since under load fuller batches spend less CPU
per image (benchmarks/results/batching.md). Each replica reports the images inside it, averaged
over time, as the custom metric the model deployment autoscales on (serve_app/autoscaling.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter

import numpy as np
import ray
from ray import serve

from serve_app.autoscaling import IMAGES_IN_FLIGHT, TimeAverage
from serve_app.backends import choose_backend, load_backend
from serve_app.errors import ServiceError
from serve_app.predictions import NUM_CLASSES, ImageBatch, TopK, softmax, top_k_rows
from serve_app.settings import BatchSettings, DecodeLimits, ModelSettings
from serve_app.telemetry import ModelMetrics
from serve_app.weights import weights_for

_DEFAULT_BATCH = BatchSettings()
log = logging.getLogger("ray.serve")


def replica_cpu_count() -> int:
    """Threads to use: the CPUs Ray gave this replica, so replicas on one node don't oversubscribe."""
    try:
        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # not inside a Ray worker (tests, CLI)
        assigned = 1.0
    return max(1, math.ceil(assigned))


@serve.deployment(name="Classifier")
class Classifier:
    def __init__(self, settings: ModelSettings, decode_limits: DecodeLimits):
        started = time.perf_counter()
        source = weights_for(settings)
        threads = replica_cpu_count()
        choice = choose_backend(settings, source)
        if choice.warning:
            log.warning("%s", choice.warning)
        self._backend = load_backend(settings, source, threads, choice.name)
        self._info = {
            "architecture": "resnet18",
            "weights": source.describe(),
            "backend": self._backend.name,
            "device": self._backend.device,
            "threads": threads,
            "load_seconds": round(time.perf_counter() - started, 3),
        }
        if choice.int8_check:
            self._info["int8_check"] = {**choice.int8_check, "min_agreement": settings.int8_min_agreement,
                                        "warning": choice.warning}
        self._batch = _DEFAULT_BATCH
        self._inside = 0  # calls in this replica: queued for a batch or computing
        self._images_in_flight = TimeAverage()
        self._batch_sizes: Counter[int] = Counter()  # how full batches run, since start
        self._metrics = ModelMetrics(self._backend.name)
        self._decode_device = None
        self._decode_limits = decode_limits
        if settings.decode_on_replica:
            import torch  # only replicas that decode need it (ONNX replicas otherwise never import torch)

            self._decode_device = torch.device(self._backend.device)
        self._info["decodes_jpeg"] = self._decode_device is not None

    def reconfigure(self, user_config: dict) -> None:
        batch = BatchSettings.model_validate(user_config or {})
        largest = getattr(self._backend, "max_batch_size", None)
        if largest is not None and batch.max_batch_size > largest:
            raise ValueError(
                f"user_config max_batch_size {batch.max_batch_size} is larger than the largest batch the "
                f"{self._backend.name} backend captured ({largest}): lower max_batch_size or add "
                f"{batch.max_batch_size} to model.graph_batch_sizes"
            )
        self._batch = batch
        self._classify_batch.set_max_batch_size(self._batch.max_batch_size)

    async def classify(self, requests: list[ImageBatch]) -> list[TopK]:
        """The top k of each image of each request in one call from an ingress replica (the requests
        it held together), computed in a batch with other calls' images."""
        # Set before enqueueing: the batch loop reads the wait when this call starts a batch.
        self._classify_batch.set_batch_wait_timeout_s(self._batch.batch_wait_timeout_s if self._inside else 0.0)
        images = sum(len(request) for request in requests)
        self._inside += 1
        self._images_in_flight.add(images)
        try:
            return await self._classify_batch(requests)
        finally:
            self._inside -= 1
            self._images_in_flight.add(-images)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The custom metric serve_app.autoscaling scales the model deployment on: the mean number of
        images in this replica (queued or computing) since the last report."""
        return {IMAGES_IN_FLIGHT: self._images_in_flight.mean_since_last_read()}

    @serve.batch(max_batch_size=_DEFAULT_BATCH.max_batch_size, batch_wait_timeout_s=0.0)
    async def _classify_batch(self, calls: list[list[ImageBatch]]) -> list[list[TopK]]:
        """Every call's requests together: their pixels as one batch, and every JPEG to decode here as
        another, each run in chunks of max_batch_size images; then each request's rows back, as top k."""
        requests = [request for call in calls for request in call]
        answers = await self._answers(requests)
        grouped, start = [], 0
        for call in calls:
            grouped.append(answers[start : start + len(call)])
            start += len(call)
        return grouped

    async def _answers(self, requests: list[ImageBatch]) -> list[TopK]:
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
        decoded = await asyncio.to_thread(decode_batch, encoded, self._decode_device, self._decode_limits)
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

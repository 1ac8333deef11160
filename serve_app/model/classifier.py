"""The model deployment: batches requests' images with @serve.batch and answers each request's top k.

A call from an ingress replica carries the requests it held together (serve_app/http/coalescing.py),
each as one ImageBatch: its images in upload order, as uint8 pixels the ingress already validated,
JPEGs to decode here where `decode_on_replica`, or the error the ingress gave an image, so one bad
upload can never fail a batch. Each leaves as one TopK in the same order: k indices and scores per
image, not 1,000 probabilities. Labels belong to the ingress.
Inference runs in a worker thread so the replica keeps accepting calls (and the next batch keeps
filling) while the current one computes. A forward pass that raises fails that batch's calls only.

The batch wait adapts to load: a call that finds the replica empty has nothing to batch with, so it
is computed at once, without @serve.batch's queue (whose hops cost about a millisecond per call on
2 cores), and a lone request is never held; one that finds other calls already inside (queued or
computing) goes through @serve.batch, whose batch waits up to `batch_wait_timeout_s` to fill, since
under load fuller batches spend less CPU per image (benchmarks/results/batching.md). Forward passes
run one at a time either way. Each replica reports the images inside it, averaged over time, as the
custom metric the model deployment autoscales on (serve_app/model/autoscaling.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import ray
from ray import serve

from serve_app.errors import ServiceError
from serve_app.imaging import PREPROCESSING_VERSION
from serve_app.model.autoscaling import IMAGES_IN_FLIGHT, TimeAverage
from serve_app.model.backends import choose_backend, load_backend
from serve_app.model.metrics import ModelMetrics
from serve_app.model.top_k import softmax, top_k_rows
from serve_app.model.weights import weights_for
from serve_app.settings import BatchSettings, DecodeLimits, ModelSettings
from serve_app.wire import ImageBatch, TopK

_DEFAULT_BATCH = BatchSettings()
log = logging.getLogger("ray.serve")


def replica_cpu_count() -> int:
    """Threads to use: the CPUs Ray gave this replica, so replicas on one node don't oversubscribe."""
    if not ray.is_initialized():  # not inside a Ray worker (tests): asking Ray would start a local cluster
        return 1
    return max(1, math.ceil(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)))


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
        self._forward_pass = asyncio.Lock()  # a lone call's and a batch's would share the same threads
        self._images_in_flight = TimeAverage()
        self._batch_sizes: Counter[int] = Counter()  # how full batches run, since start
        self._metrics = ModelMetrics(self._backend.name)
        self._decode_device = None
        self._decode_limits = decode_limits
        self._decode_parts = 1  # decoded side by side: one part per thread on a CPU, a whole chunk for nvJPEG
        if settings.decode_on_replica:
            import torch  # only replicas that decode need it (ONNX replicas otherwise never import torch)

            self._decode_device = torch.device(self._backend.device)
            self._decode_parts = threads if self._decode_device.type == "cpu" else 1
        self._info["decodes_jpeg"] = self._decode_device is not None
        self._info["answer_identity"] = answer_identity(self._info, self._backend.artifact_sha256, settings,
                                                        decode_limits)

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
        self._classify_batch.set_max_batch_size(self._batch.max_calls_per_batch)
        self._classify_batch.set_batch_wait_timeout_s(self._batch.batch_wait_timeout_s)

    async def classify(self, requests: list[ImageBatch]) -> list[TopK]:
        """The top k of each image of each request in one call from an ingress replica (the requests
        it held together), computed in a batch with other calls' images, or at once where it finds
        the replica empty."""
        lone = not self._inside
        images = sum(len(request) for request in requests)
        self._inside += 1
        self._images_in_flight.add(images)
        try:
            return await (self._answers(requests) if lone else self._classify_batch(requests))
        finally:
            self._inside -= 1
            self._images_in_flight.add(-images)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The custom metric serve_app.model.autoscaling scales the model deployment on: the mean number of
        images in this replica (queued or computing) since the last report."""
        return {IMAGES_IN_FLIGHT: self._images_in_flight.mean_since_last_read()}

    @serve.batch(max_batch_size=_DEFAULT_BATCH.max_calls_per_batch,
                 batch_wait_timeout_s=_DEFAULT_BATCH.batch_wait_timeout_s)
    async def _classify_batch(self, calls: list[list[ImageBatch]]) -> list[list[TopK]]:
        """Up to max_calls_per_batch calls together; each call's requests get their answers back."""
        answers = iter(await self._answers([request for call in calls for request in call]))
        return [[next(answers) for _ in call] for call in calls]

    async def _answers(self, requests: list[ImageBatch]) -> list[TopK]:
        """Every image of every request, in one list: pixels run in forward passes of at most
        max_batch_size images, JPEGs are decoded here and run the same way, and an image the ingress
        refused keeps its error. Each probability row goes back to the image's own place, and each
        request's places become its top k."""
        images = [image for request in requests for image in request.images]
        rows: list[np.ndarray | ServiceError | None] = [
            image if isinstance(image, ServiceError) else None for image in images
        ]
        for kind, probabilities_of in ((np.ndarray, self._pixel_probabilities), (bytes, self._decoded_probabilities)):
            places = [at for at, image in enumerate(images) if isinstance(image, kind)]
            for chunk in _chunks(places, self._batch.max_batch_size):
                for at, row in zip(chunk, await probabilities_of([images[at] for at in chunk])):
                    rows[at] = row
        answers, start = [], 0
        for request in requests:
            answers.append(replace(top_k_rows(rows[start : start + len(request)], request.k),
                                   identity=self._info["answer_identity"]))
            start += len(request)
        return answers

    async def _pixel_probabilities(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Images the ingress decoded, as one batch: each one's probabilities."""
        return await self._probabilities(np.stack(pixels))

    async def _decoded_probabilities(self, encoded: list[bytes]) -> list[np.ndarray | ServiceError]:
        """JPEGs decoded here, on the backend's device, as one batch: each one's probabilities or error."""
        from serve_app.model.device_imaging import decode_batch, joined, split_for_threads

        if self._decode_device is None:
            raise RuntimeError("this model deployment does not decode (model.decode_on_replica is false)")
        parts = split_for_threads(encoded, self._decode_parts)
        decoded = joined(await asyncio.gather(*(asyncio.to_thread(decode_batch, part, self._decode_device,
                                                                  self._decode_limits) for part in parts)))
        rows: list[np.ndarray | ServiceError] = [decoded.errors.get(index) for index in range(len(encoded))]
        if decoded.images is not None:
            for index, row in zip(decoded.order, await self._probabilities(decoded.images)):
                rows[index] = row
        return rows

    async def _probabilities(self, batch) -> np.ndarray:
        """One forward pass, off the event loop, counted in the batch-size stats and metrics."""
        self._batch_sizes[len(batch)] += 1
        async with self._forward_pass:
            started = time.perf_counter()
            logits = await asyncio.to_thread(self._backend.infer, batch)
            self._metrics.batch(len(batch), time.perf_counter() - started)
        return softmax(logits)

    def info(self) -> dict:
        sizes = {str(size): count for size, count in sorted(self._batch_sizes.items())}
        return {**self._info, "batching": {**self._batch.model_dump(), "batch_sizes": sizes}}


def answer_identity(info: dict, artifact_sha256: str | None, settings: ModelSettings,
                    decode_limits: DecodeLimits) -> str:
    """A digest of what decides this replica's answer to an image: the weights, the backend and the
    file it runs, the device and precision, and how it decodes where it does. Every answer carries it,
    and the ingress's result cache keys answers with it: answers made by other weights or another
    backend are never served for this one's, even from a Redis shared through a rolling update."""
    decides = {
        "weights_sha256": info["weights"]["sha256"],
        "backend": info["backend"],
        "artifact_sha256": artifact_sha256,
        "device": info["device"],
        "precision": settings.precision if info["backend"] == "cuda-graphs" else None,
        "decoding": [PREPROCESSING_VERSION, decode_limits.draft] if info["decodes_jpeg"] else None,
    }
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:32]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]

"""How the ingress reaches the model: decode where the settings say, send concurrent requests as one
Ray call (coalescing.py), retry when a replica dies, and answer 503 when the model's queue is full.

`ModelClient` is what the route handlers (handlers.py) need; `RayModelClient` is the real one, over a Serve
deployment handle. Where to decode is decided from the settings when the app is built: the
ingress decodes and sends uint8 pixels, or, with `model.decode_on_replica` (GPUs), it checks each
header and sends plain JPEGs' bytes for the replicas to decode on their device.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from serve_app.errors import (
    InferenceFailedError,
    ModelUnavailableError,
    OverloadedError,
    ProcessingTimeoutError,
    ServiceError,
)
from serve_app.http.coalescing import Coalescer
from serve_app.imaging import is_plain_jpeg, load_image, open_image
from serve_app.settings import AppSettings
from serve_app.wire import Image, ImageBatch, TopK

REPLICA_FAILURE_RETRIES = 4
log = logging.getLogger("ray.serve")
# Serve sends a call's arguments inline over gRPC, whose messages a replica caps at 4 MiB
# (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH). A larger request (many images, or a big JPEG for
# the replica to decode) goes by reference through Ray's object store instead.
INLINE_LIMIT_BYTES = 3 * 1024 * 1024


class ModelClient(Protocol):
    async def classify(self, images: Sequence[bytes], k: int, deadline: float = math.inf) -> TopK:
        """The top k of each encoded image; an image that cannot be classified has its error in TopK.errors.
        No image starts decoding after `deadline` (time.monotonic())."""

    async def classify_pixels(self, pixels: np.ndarray, k: int) -> TopK:
        """The top k of each of the caller's own uint8 (N, 224, 224, 3) images."""

    async def info(self) -> dict[str, Any]:
        """What the model replica says about itself (weights, backend, device, batching)."""

    def call_stats(self) -> dict[str, Any]:
        """How this ingress replica's requests travelled: requests, model calls, requests per call."""


class RayModelClient:
    def __init__(self, handle, settings: AppSettings, on_decoded: Callable[[float], None] = lambda seconds: None,
                 on_call: Callable[[int, int], None] = lambda requests, images: None):
        self._handle = handle
        self._handle_by_reference = handle.options(_by_reference=True)
        self._ingress = settings.ingress
        self._replicas_decode = settings.model.decode_on_replica
        self._on_decoded = on_decoded
        self._coalescer = Coalescer(self._send, settings.ingress.max_images_per_call, on_call)

    async def classify(self, images: Sequence[bytes], k: int, deadline: float = math.inf) -> TopK:
        prepared = await asyncio.gather(*(asyncio.to_thread(self._prepare, data, deadline) for data in images))
        batch = ImageBatch(tuple(prepared), k)
        return await self._coalescer.classify(batch) if batch.has_work else TopK.unanswered(batch)

    async def classify_pixels(self, pixels: np.ndarray, k: int) -> TopK:
        return await self._coalescer.classify(ImageBatch(tuple(pixels), k))

    async def info(self) -> dict[str, Any]:
        return await self._handle.info.remote()

    def call_stats(self) -> dict[str, Any]:
        return self._coalescer.stats.as_json()

    def _prepare(self, data: bytes, deadline: float) -> Image:
        """uint8 pixels decoded here, or a plain JPEG's bytes for the replica to decode, or the error."""
        if time.monotonic() > deadline:  # the request has had its 504; its images still queued for a thread stay undone
            return ProcessingTimeoutError("the request timed out before this image was decoded")
        started = time.perf_counter()
        try:
            if self._replicas_decode and is_plain_jpeg(open_image(data, max_pixels=self._ingress.max_image_pixels)):
                return data
            pixels = load_image(data, max_pixels=self._ingress.max_image_pixels, draft=self._ingress.draft_decode)
        except ServiceError as error:
            return error
        self._on_decoded(time.perf_counter() - started)
        return pixels

    async def _send(self, batches: list[ImageBatch]) -> list[TopK]:
        """One model call for several requests, on some model replica. A replica that dies mid-call
        (its node lost, its process killed) is retried on another: classification has no side effects."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        nbytes = sum(batch.nbytes for batch in batches)
        handle = self._handle_by_reference if nbytes > INLINE_LIMIT_BYTES else self._handle
        for attempt in range(REPLICA_FAILURE_RETRIES):
            try:
                return await handle.classify.remote(batches)
            except BackPressureError:
                raise OverloadedError(
                    "the service is at capacity (model queue full): retry after the Retry-After delay",
                    headers={"Retry-After": str(self._ingress.retry_after_s)},
                ) from None
            except RayActorError:  # includes ActorDiedError and ActorUnavailableError
                await asyncio.sleep(0.1 * 2**attempt)
            except Exception as exc:  # the replica raised (a backend failure, out of memory): this call's requests fail
                cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the replica's own exception
                log.warning("a model call of %d request(s) failed: %s: %s", len(batches), type(cause).__name__,
                            cause, exc_info=exc)
                raise InferenceFailedError(
                    f"the model failed on the batch holding this request ({type(cause).__name__}); other "
                    "requests are unaffected: retry"
                ) from None
        raise ModelUnavailableError(
            "no model replica could answer (replicas are being replaced): retry after the Retry-After delay",
            headers={"Retry-After": str(self._ingress.retry_after_s)},
        )


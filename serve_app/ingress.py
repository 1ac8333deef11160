"""The HTTP side: Starlette routes, upload validation, decoding, and the error contract.

Request flow: middleware (request log + metrics, CORS, API key) -> read the body (bounded in
size and time) -> split into uploads -> decode + preprocess each in a worker thread (imaging.py)
-> send uint8 arrays to the Classifier, which batches them -> top-k and labels per request ->
JSON. Where the model replicas decode JPEGs themselves (model.decode_on_replica, for GPUs), a
plain JPEG's header is checked here and its bytes are sent instead. Every client error is a
ServiceError, rendered as {"error": {"code", "message"}} with the status from HTTP_STATUS.
This module never imports torch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, TypeVar

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serve_app.access import access_middleware
from serve_app.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    InvalidParameterError,
    MalformedRequestError,
    ModelUnavailableError,
    NoFileError,
    OverloadedError,
    ProcessingTimeoutError,
    RequestTimeoutError,
    ServiceError,
    TooManyImagesError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    UploadTooLargeError,
    error_from_json,
)
from serve_app.imaging import is_plain_jpeg, load_image, open_image
from serve_app.labels import imagenet_labels
from serve_app.predictions import top_k
from serve_app.settings import AuthSettings, IngressSettings
from serve_app.telemetry import IngressMetrics, RequestTelemetry

HTTP_STATUS: dict[type[ServiceError], int] = {
    NoFileError: 400,
    EmptyImageError: 400,
    CorruptImageError: 400,
    InvalidParameterError: 400,
    MalformedRequestError: 400,
    TooManyImagesError: 400,
    UnauthorizedError: 401,
    RequestTimeoutError: 408,
    UploadTooLargeError: 413,
    ImageTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    OverloadedError: 503,
    ModelUnavailableError: 503,
    ProcessingTimeoutError: 504,
}

STANDIN_NOTICE = "STAND-IN weights (seeded, not trained on ImageNet): the labels are meaningless."
HEALTH_TIMEOUT_S = 10.0
REPLICA_FAILURE_RETRIES = 4
_RAW_BODY_TYPES = ("application/octet-stream",)
STATIC_DIR = Path(__file__).with_name("static")
# The page loads only its own files and talks only to this service (it must work offline anyway).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error.as_json(), status_code=HTTP_STATUS.get(type(error), 400), headers=error.headers)


async def within(deadline: float, work: Awaitable[T], error: ServiceError) -> T:
    """`work`, or `error` once the monotonic clock passes `deadline` (the work is cancelled)."""
    try:
        return await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise error from None


def parse_top_k(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterError(f"top_k must be an integer from 1 to 1000, got {raw!r}") from None
    if not 1 <= value <= 1000:
        raise InvalidParameterError(f"top_k must be from 1 to 1000, got {value}")
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = UploadTooLargeError(f"the upload is larger than the limit of {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_multipart(request: Request, body: bytes) -> list[Upload]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=100_000, max_fields=1000)
    except Exception as exc:
        raise MalformedRequestError(f"the multipart body cannot be parsed: {exc}") from None
    parts = form.getlist("file")
    if not parts:
        raise NoFileError("the multipart request has no `file` field")
    uploads = []
    for part in parts:
        if not isinstance(part, UploadFile):
            raise NoFileError("the `file` field must be a file upload, not a text value")
        uploads.append(Upload(part.filename, await part.read()))
    return uploads


async def read_uploads(request: Request, settings: IngressSettings) -> list[Upload]:
    """The images of a request: multipart `file` parts, or one raw image/* body."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        uploads = await parse_multipart(request, await read_body(request, settings.max_upload_bytes))
    elif media_type.startswith("image/") or media_type in _RAW_BODY_TYPES:
        body = await read_body(request, settings.max_upload_bytes)
        if not body:
            raise NoFileError("the request body is empty: send an image")
        uploads = [Upload(None, body)]
    elif not media_type and not await read_body(request, settings.max_upload_bytes):
        raise NoFileError("no file: send multipart/form-data with a `file` field, or a raw image/* body")
    else:
        raise UnsupportedMediaTypeError(
            f"content type {media_type or '(none)'} is not accepted: send multipart/form-data "
            "with a `file` field, or a raw body with an image/* content type"
        )
    if len(uploads) > settings.max_images_per_request:
        raise TooManyImagesError(
            f"{len(uploads)} images in one request; the limit is {settings.max_images_per_request}"
        )
    return uploads


def public_model_info(info: dict[str, Any]) -> dict[str, Any]:
    weights = info["weights"]
    public = {
        "architecture": info["architecture"],
        "weights": weights["name"],
        "weights_sha256": weights["sha256"],
        "standin": weights["standin"],
        "backend": info["backend"],
        "device": info["device"],
    }
    if weights["standin"]:
        public["notice"] = STANDIN_NOTICE
    return public


async def render_http_error(_: Request, error: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": error.detail}}, status_code=error.status_code)


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, classifier: DeploymentHandle, settings: IngressSettings, auth: AuthSettings = AuthSettings()):
        self._classifier = classifier
        self._settings = settings
        self._auth = auth
        self._labels = imagenet_labels()
        self._model_info: dict[str, Any] | None = None
        self._decodes_jpeg: bool | None = None  # whether model replicas take JPEG bytes (decode_on_replica)
        self._metrics = IngressMetrics()

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            Route("/v1/classify", self.classify, methods=["POST"]),
            Route("/predict", self.predict, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/labels", self.labels, methods=["GET"]),
            Route("/", self.page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
        middleware = [
            Middleware(RequestTelemetry, metrics=self._metrics),
            *access_middleware(self._settings, self._auth),
        ]
        return Starlette(
            routes=routes,
            middleware=middleware,
            exception_handlers={ServiceError: self.render_service_error, HTTPException: render_http_error},
        )

    async def render_service_error(self, request: Request, error: ServiceError) -> Response:
        self._metrics.rejected(error.code)
        request.state.error_code = error.code  # for the request's log line
        return error_response(error)

    async def classify(self, request: Request) -> Response:
        k = parse_top_k(request.query_params.get("top_k"), self._settings.default_top_k)
        deadline = time.monotonic() + self._settings.request_timeout_s
        uploads = await self._read_uploads(request, deadline)
        if len(uploads) == 1:
            probabilities = await self._within_deadline(self._probabilities(uploads[0]), deadline)
            body = {"predictions": top_k(probabilities, k, self._labels)}
        else:
            outcomes = await self._within_deadline(
                asyncio.gather(*(self._probabilities(u) for u in uploads), return_exceptions=True), deadline
            )
            body = {"results": [self._result_entry(u, o, k) for u, o in zip(uploads, outcomes)]}
        body["model"] = await self._public_model_info()
        return JSONResponse(body)

    async def predict(self, request: Request) -> Response:
        """The original design's route: one `file`, top-3 as [{"label", "score"}]."""
        deadline = time.monotonic() + self._settings.request_timeout_s
        uploads = await self._read_uploads(request, deadline)
        if len(uploads) != 1:
            raise TooManyImagesError("/predict takes exactly one `file`; use /v1/classify for several")
        probabilities = await self._within_deadline(self._probabilities(uploads[0]), deadline)
        return JSONResponse(
            [{"label": p["label"], "score": p["score"]} for p in top_k(probabilities, 3, self._labels)]
        )

    async def healthz(self, request: Request) -> Response:
        try:
            info = await asyncio.wait_for(self._classifier.info.remote(), HEALTH_TIMEOUT_S)
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "reason": f"model deployment not answering: {type(exc).__name__}"},
                status_code=503,
            )
        self._remember_model(info)
        return JSONResponse({"status": "ok", "model": self._model_info, "replica": info})

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    async def labels(self, request: Request) -> Response:
        labels = [{"index": x.index, "label": x.label, "label_zh": x.label_zh} for x in self._labels]
        return JSONResponse({"count": len(labels), "labels": labels})

    async def _read_uploads(self, request: Request, deadline: float) -> list[Upload]:
        timeout = self._settings.request_timeout_s
        error = RequestTimeoutError(f"the upload did not arrive within the request timeout of {timeout:g} s")
        return await within(deadline, read_uploads(request, self._settings), error)

    async def _within_deadline(self, work: Awaitable[T], deadline: float) -> T:
        timeout = self._settings.request_timeout_s
        error = ProcessingTimeoutError(
            f"the model did not answer within the request timeout of {timeout:g} s: retry later",
            headers={"Retry-After": str(self._settings.retry_after_s)},
        )
        return await within(deadline, work, error)

    async def _probabilities(self, upload: Upload) -> np.ndarray:
        """Decode here and send pixels, or, where the model replicas decode JPEGs themselves (on their
        GPU), check the header here and send a plain JPEG's bytes."""
        started = time.perf_counter()
        if await self._replicas_decode_jpeg():
            header = await asyncio.to_thread(open_image, upload.data, max_pixels=self._settings.max_image_pixels)
            if is_plain_jpeg(header):
                return await self._on_model_replica("classify_jpeg", upload.data)
        image = await asyncio.to_thread(
            load_image, upload.data, max_pixels=self._settings.max_image_pixels, draft=self._settings.draft_decode
        )
        self._metrics.decode_seconds.observe(time.perf_counter() - started)
        return await self._on_model_replica("classify", image)

    async def _on_model_replica(self, method: str, payload: np.ndarray | bytes) -> np.ndarray:
        try:
            answer = await self._classify(method, payload)
        except BackPressureError:
            raise OverloadedError(
                "the service is at capacity (model queue full): retry after the Retry-After delay",
                headers={"Retry-After": str(self._settings.retry_after_s)},
            ) from None
        if isinstance(answer, dict):  # a JPEG the replica could not decode
            raise error_from_json(answer)
        return answer

    async def _classify(self, method: str, payload: np.ndarray | bytes) -> np.ndarray | dict:
        """Classify on some model replica. A replica that dies mid-request (its node lost, its
        process killed) is retried on another: classification has no side effects."""
        for attempt in range(REPLICA_FAILURE_RETRIES):
            try:
                return await getattr(self._classifier, method).remote(payload)
            except RayActorError:  # includes ActorDiedError and ActorUnavailableError
                await asyncio.sleep(0.1 * 2**attempt)
        raise ModelUnavailableError(
            "no model replica could answer (replicas are being replaced): retry after the Retry-After delay",
            headers={"Retry-After": str(self._settings.retry_after_s)},
        )

    def _result_entry(self, upload: Upload, outcome: np.ndarray | BaseException, k: int) -> dict:
        entry: dict[str, Any] = {"filename": upload.filename}
        if isinstance(outcome, (OverloadedError, ModelUnavailableError)):
            raise outcome  # the whole request is retried, not a part of it
        if isinstance(outcome, ServiceError):
            self._metrics.rejected(outcome.code)
            entry.update(outcome.as_json())
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            entry["predictions"] = top_k(outcome, k, self._labels)
        return entry

    async def _public_model_info(self) -> dict[str, Any]:
        if self._model_info is None:
            await self._load_model_info()
        return self._model_info

    async def _replicas_decode_jpeg(self) -> bool:
        if self._decodes_jpeg is None:
            await self._load_model_info()
        return self._decodes_jpeg

    async def _load_model_info(self) -> None:
        self._remember_model(await self._classifier.info.remote())

    def _remember_model(self, info: dict[str, Any]) -> None:
        self._model_info = public_model_info(info)
        self._decodes_jpeg = bool(info.get("decodes_jpeg"))

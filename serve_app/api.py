"""The HTTP app: a plain Starlette app built from the route table (routes.py), an uploads reader
(uploads.py) and a model client (model_client.py). It knows nothing of Ray, so the whole HTTP
contract can be exercised in process with Starlette's TestClient and a fake model client.

Request flow: middleware (request log + metrics, CORS, API key) -> read the uploads (bounded in
size and time) -> the model client decodes and classifies them as one call -> labels -> JSON.
Every client error is a ServiceError, rendered as {"error": {"code", "message"}} with its status.
This module never imports torch.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serve_app import inference_protocol as v2
from serve_app.access import access_middleware
from serve_app.errors import (
    ModelUnavailableError,
    ProcessingTimeoutError,
    RequestTimeoutError,
    ServiceError,
    TooManyImagesError,
)
from serve_app.labels import imagenet_labels
from serve_app.model_client import ModelClient
from serve_app.openapi import openapi_document
from serve_app.predictions import TopK, labelled
from serve_app.routes import ENDPOINTS, STATIC_PREFIX, error_response
from serve_app.scope import note_error
from serve_app.settings import AppSettings
from serve_app.telemetry import IngressMetrics, RequestTelemetry
from serve_app.uploads import Upload, parse_top_k, read_body, read_uploads

STANDIN_NOTICE = "STAND-IN weights (seeded, not trained on ImageNet): the labels are meaningless."
HEALTH_TIMEOUT_S = 10.0
STATIC_DIR = Path(__file__).with_name("static")
# The page loads only its own files and talks only to this service (it must work offline anyway).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}
API_VERSION = "1.0.0"
# The Open Inference Protocol's `platform`, by backend.
PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx-int8": "onnxruntime_onnx", "torchscript": "pytorch_torchscript",
             "torch": "pytorch_torch", "cuda-graphs": "pytorch_torch"}

T = TypeVar("T")


async def within(deadline: float, work: Awaitable[T], error: ServiceError) -> T:
    """`work`, or `error` once the monotonic clock passes `deadline` (the work is cancelled)."""
    try:
        return await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise error from None


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


async def render_service_error(request: Request, error: ServiceError) -> Response:
    note_error(request.scope, error.code)
    return error_response(request.scope, error.code, error.message, error.status, error.headers)


async def render_http_error(request: Request, error: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(request.scope, code, error.detail, error.status_code)


class Api:
    """The route handlers (named in routes.ENDPOINTS)."""

    def __init__(self, model: ModelClient, settings: AppSettings):
        self._model = model
        self._settings = settings.ingress
        self._openapi = openapi_document(API_VERSION, settings)  # fixed for the settings the app runs with
        self._labels = imagenet_labels()
        self._model_info: dict[str, Any] | None = None  # asked once, then sent with every answer

    async def classify(self, request: Request) -> Response:
        deadline = time.monotonic() + self._settings.request_timeout_s
        k = parse_top_k(request.query_params.get("top_k"), self._settings.default_top_k)
        uploads, answer = await self._classified(request, k, deadline)
        if len(uploads) == 1:
            body = {"predictions": self._predictions(answer, 0)}
        else:
            body = {"results": [self._result_entry(request, upload, answer, i) for i, upload in enumerate(uploads)]}
        body["model"] = await self._public_model_info(deadline)
        return JSONResponse(body)

    async def predict(self, request: Request) -> Response:
        """The original design's route: one `file`, top-3 as [{"label", "score"}]."""
        deadline = time.monotonic() + self._settings.request_timeout_s
        uploads, answer = await self._classified(request, 3, deadline, only_one=True)
        return JSONResponse([{"label": p["label"], "score": p["score"]} for p in self._predictions(answer, 0)])

    async def healthz(self, request: Request) -> Response:
        try:
            info = await asyncio.wait_for(self._model.info(), HEALTH_TIMEOUT_S)
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "reason": f"model deployment not answering: {type(exc).__name__}"},
                status_code=503,
            )
        self._model_info = public_model_info(info)
        return JSONResponse({"status": "ok", "model": self._model_info, "replica": info,
                             "ingress": self._model.call_stats()})

    async def labels(self, request: Request) -> Response:
        labels = [{"index": x.index, "label": x.label, "label_zh": x.label_zh} for x in self._labels]
        return JSONResponse({"count": len(labels), "labels": labels})

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self._openapi)

    # ---- the Open Inference Protocol (KServe v2) -----------------------------------------------

    async def v2_server(self, request: Request) -> Response:
        return JSONResponse(v2.server_metadata(API_VERSION))

    async def v2_live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def v2_ready(self, request: Request) -> Response:
        try:
            await asyncio.wait_for(self._model.info(), HEALTH_TIMEOUT_S)
        except Exception as exc:
            return JSONResponse({"error": f"model deployment not answering: {type(exc).__name__}"}, status_code=503)
        return Response(status_code=200)

    v2_model_ready = v2_ready

    async def v2_model(self, request: Request) -> Response:
        backend = (await self._public_model_info(time.monotonic() + self._settings.request_timeout_s))["backend"]
        return JSONResponse(v2.model_metadata(PLATFORMS.get(backend, backend)))

    async def v2_infer(self, request: Request) -> Response:
        deadline = time.monotonic() + self._settings.request_timeout_s
        body = await within(deadline, read_body(request, self._settings.max_upload_bytes), self._late_upload())
        parsed = v2.parse_infer_request(body, request.headers.get(v2.HEADER_LENGTH), self._settings.max_images_per_request)
        k = parsed.classification or v2.NUM_CLASSES
        work = (self._model.classify(parsed.images, k, deadline) if parsed.images is not None
                else self._model.classify_pixels(parsed.pixels, k))
        answer = await within(deadline, work, self._late_answer())
        if answer.errors:  # a tensor has no place for one row's error: the request fails, naming the image
            row, error = min(answer.errors.items())
            raise type(error)(f"image {row}: {error.message}")
        content, headers = v2.infer_response(parsed, answer, self._labels)
        return Response(content, headers=headers)

    # ---- shared ----------------------------------------------------------------------------------

    def _late_upload(self) -> ServiceError:
        timeout = self._settings.request_timeout_s
        return RequestTimeoutError(f"the upload did not arrive within the request timeout of {timeout:g} s")

    def _late_answer(self) -> ServiceError:
        return ProcessingTimeoutError(
            f"the model did not answer within the request timeout of {self._settings.request_timeout_s:g} s: "
            "retry later",
            headers={"Retry-After": str(self._settings.retry_after_s)},
        )

    async def _classified(self, request: Request, k: int, deadline: float,
                          only_one: bool = False) -> tuple[list[Upload], TopK]:
        """The request's uploads and their top k, within the request's deadline."""
        uploads = await within(deadline, read_uploads(request, self._settings), self._late_upload())
        if only_one and len(uploads) != 1:
            raise TooManyImagesError("/predict takes exactly one `file`; use /v1/classify for several")
        answer = await within(deadline, self._model.classify([u.data for u in uploads], k, deadline),
                              self._late_answer())
        return uploads, answer

    def _predictions(self, answer: TopK, row: int) -> list[dict]:
        if row in answer.errors:
            raise answer.errors[row]
        return labelled(answer.indices[row], answer.scores[row], self._labels)

    def _result_entry(self, request: Request, upload: Upload, answer: TopK, row: int) -> dict:
        entry: dict[str, Any] = {"filename": upload.filename}
        if row in answer.errors:
            error = answer.errors[row]
            note_error(request.scope, error.code)
            entry.update(error.as_json())
        else:
            entry["predictions"] = self._predictions(answer, row)
        return entry

    async def _public_model_info(self, deadline: float) -> dict[str, Any]:
        """What model answers, asked of a replica once, and no later than the request's deadline."""
        if self._model_info is None:
            unavailable = ModelUnavailableError(
                "the model deployment did not say what it runs within the request timeout: retry after the "
                "Retry-After delay", headers={"Retry-After": str(self._settings.retry_after_s)})
            self._model_info = public_model_info(await within(deadline, self._model.info(), unavailable))
        return self._model_info


def build_app(model: ModelClient, settings: AppSettings, metrics: IngressMetrics | None = None) -> Starlette:
    api = Api(model, settings)
    routes = [Route(e.path, getattr(api, e.handler), methods=[e.method]) for e in ENDPOINTS]
    routes.append(Mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static"))
    middleware = [
        Middleware(RequestTelemetry, metrics=metrics or IngressMetrics()),
        *access_middleware(settings.ingress, settings.auth),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ServiceError: render_service_error, HTTPException: render_http_error},
    )

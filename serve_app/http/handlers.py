"""The route handlers: what each HTTP route does, from the request to its JSON answer.

A classification reads top to bottom: read the uploads (uploads.py, bounded in size and time), have
the model client decode and classify them as one call (model_client.py; images it has answered
before come from the result cache in front of it, result_cache.py), then label the top k
(presentation.py). Every refusal is a ServiceError, raised here and rendered in one place (responses.py).
Knows nothing of Ray; never imports torch.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, TypeVar

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from serve_app.errors import (
    ModelUnavailableError,
    ProcessingTimeoutError,
    RequestTimeoutError,
    ServiceError,
    TooManyImagesError,
)
from serve_app.http import inference_protocol as v2
from serve_app.http.model_client import ModelClient
from serve_app.http.presentation import cache_headers, labelled, public_model_info
from serve_app.http.responses import error_body
from serve_app.http.scope import note_error
from serve_app.http.uploads import Upload, parse_top_k, read_body, read_uploads
from serve_app.labels import imagenet_labels
from serve_app.settings import AppSettings, IngressSettings
from serve_app.wire import TopK

API_VERSION = "1.0.0"
HEALTH_TIMEOUT_S = 10.0
STATIC_DIR = Path(__file__).with_name("static")
# The page loads only its own files and talks only to this service (it must work offline anyway).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}

T = TypeVar("T")


async def within(deadline: float, work: Awaitable[T], error: ServiceError) -> T:
    """`work`, or `error` once the monotonic clock passes `deadline` (the work is cancelled)."""
    try:
        return await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise error from None


def late_answer(settings: IngressSettings) -> ProcessingTimeoutError:
    """The error of a request the model did not answer within its deadline (504)."""
    return ProcessingTimeoutError(
        f"the model did not answer within the request timeout of {settings.request_timeout_s:g} s: retry later",
        headers={"Retry-After": str(settings.retry_after_s)},
    )


async def v2_answer(model: ModelClient, request: v2.InferRequest, deadline: float, settings: IngressSettings) -> TopK:
    """The model's answer to an Open Inference Protocol request, over HTTP or gRPC, within its deadline.
    A tensor has no place for one row's error, so a request with a refused image fails whole, naming it."""
    k = request.classification or v2.NUM_CLASSES
    work = (model.classify(request.images, k, deadline) if request.images is not None
            else model.classify_pixels(request.pixels, k))
    answer = await within(deadline, work, late_answer(settings))
    if answer.errors:
        row, error = min(answer.errors.items())
        raise type(error)(f"image {row}: {error.message}")
    return answer


class Api:
    """The route handlers (routes.ENDPOINTS references them). Each reads like its stage of the request:
    read the uploads, classify them (model_client.py), present the answer."""

    def __init__(self, model: ModelClient, settings: AppSettings, openapi: dict):
        self._model = model
        self._settings = settings.ingress
        self._openapi = openapi  # fixed for the settings the app runs with
        self._labels = imagenet_labels()
        self._model_info: dict[str, Any] | None = None  # asked once, then sent with every answer

    async def classify(self, request: Request) -> Response:
        deadline = time.monotonic() + self._settings.request_timeout_s
        k = parse_top_k(request.query_params.get("top_k"), self._settings.default_top_k)
        uploads = await self._uploads(request, deadline)
        answer = await self._answer(self._model.classify([upload.data for upload in uploads], k, deadline), deadline)
        if len(uploads) == 1:
            body = {"predictions": self._predictions(answer, 0)}
        else:
            body = {"results": [self._result_entry(request, upload, answer, i) for i, upload in enumerate(uploads)]}
        body["model"] = await self._public_model_info(deadline)
        return JSONResponse(body, headers=cache_headers(answer))

    async def predict(self, request: Request) -> Response:
        """The original design's route: one `file`, top-3 as [{"label", "score"}]."""
        deadline = time.monotonic() + self._settings.request_timeout_s
        uploads = await self._uploads(request, deadline)
        if len(uploads) != 1:
            raise TooManyImagesError("/predict takes exactly one `file`; use /v1/classify for several")
        answer = await self._answer(self._model.classify([uploads[0].data], 3, deadline), deadline)
        return JSONResponse([{"label": p["label"], "score": p["score"]} for p in self._predictions(answer, 0)],
                            headers=cache_headers(answer))

    async def healthz(self, request: Request) -> Response:
        try:
            info = await asyncio.wait_for(self._model.info(), HEALTH_TIMEOUT_S)
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "reason": f"model deployment not answering: {type(exc).__name__}"},
                status_code=503,
            )
        self._model_info = public_model_info(info)
        # A model client without the result cache (it is off) says nothing of one.
        ingress = {"cache": {"enabled": False}, **self._model.call_stats()}
        return JSONResponse({"status": "ok", "model": self._model_info, "replica": info, "ingress": ingress})

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

    async def v2_model_ready(self, request: Request) -> Response:
        return await self.v2_ready(request)

    async def v2_model(self, request: Request) -> Response:
        backend = (await self._public_model_info(time.monotonic() + self._settings.request_timeout_s))["backend"]
        return JSONResponse(v2.model_metadata(backend))

    async def v2_infer(self, request: Request) -> Response:
        deadline = time.monotonic() + self._settings.request_timeout_s
        body = await within(deadline, read_body(request, self._settings.max_upload_bytes), self._late_upload())
        parsed = v2.parse_infer_request(body, request.headers.get(v2.HEADER_LENGTH), self._settings.max_images_per_request)
        answer = await v2_answer(self._model, parsed, deadline, self._settings)
        content, headers = v2.infer_response(parsed, answer, self._labels)
        return Response(content, headers={**headers, **cache_headers(answer)})

    # ---- the stages every classification goes through ----------------------------------------------

    async def _uploads(self, request: Request, deadline: float) -> list[Upload]:
        """The request's images, read within its deadline (408 after it)."""
        return await within(deadline, read_uploads(request, self._settings), self._late_upload())

    async def _answer(self, classified: Awaitable[TopK], deadline: float) -> TopK:
        """The model client's answer, within the request's deadline (504 after it)."""
        return await within(deadline, classified, late_answer(self._settings))

    def _late_upload(self) -> ServiceError:
        timeout = self._settings.request_timeout_s
        return RequestTimeoutError(f"the upload did not arrive within the request timeout of {timeout:g} s")

    def _predictions(self, answer: TopK, row: int) -> list[dict]:
        if row in answer.errors:
            raise answer.errors[row]
        return labelled(answer.indices[row], answer.scores[row], self._labels)

    def _result_entry(self, request: Request, upload: Upload, answer: TopK, row: int) -> dict:
        entry: dict[str, Any] = {"filename": upload.filename}
        if row in answer.errors:
            error = answer.errors[row]
            note_error(request.scope, error.code)
            entry.update(error_body(error.code, error.message))
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

"""The service's HTTP routes, listed once. The app's routing, the metric labels and the paths
open without an API key all come from this table; so does the shape of an error on each route."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import Scope

from serve_app.inference_protocol import MODEL_NAME
from serve_app.scope import route_path


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    handler: str  # the name of the handler method on serve_app.api.Api
    summary: str
    open: bool = False  # answered without an API key: the page asks for the key, load balancers probe health


V2_MODEL = f"/v2/models/{MODEL_NAME}"
ENDPOINTS = (
    Endpoint("/v1/classify", "POST", "classify", "Classify one or several images: top k classes of each"),
    Endpoint("/predict", "POST", "predict", "The original design's form: one image, top 3 as label and score"),
    Endpoint("/healthz", "GET", "healthz", "Whether the model deployment answers, and what it runs", open=True),
    Endpoint("/v1/labels", "GET", "labels", "The 1000 classes, in English and Chinese"),
    Endpoint("/", "GET", "page", "The web page", open=True),
    Endpoint("/openapi.json", "GET", "openapi", "This API's OpenAPI 3.1 description", open=True),
    Endpoint("/v2", "GET", "v2_server", "Open Inference Protocol: server metadata"),
    Endpoint("/v2/health/live", "GET", "v2_live", "Open Inference Protocol: the server is live", open=True),
    Endpoint("/v2/health/ready", "GET", "v2_ready", "Open Inference Protocol: the model answers", open=True),
    Endpoint(V2_MODEL, "GET", "v2_model", "Open Inference Protocol: model metadata"),
    Endpoint(f"{V2_MODEL}/ready", "GET", "v2_model_ready", "Open Inference Protocol: the model answers", open=True),
    Endpoint(f"{V2_MODEL}/infer", "POST", "v2_infer", "Open Inference Protocol: classify encoded images or pixels"),
)
V2_PREFIX = "/v2"
STATIC_PREFIX = "/static"  # the page's own files, open like the page

ROUTE_PATHS = tuple(endpoint.path for endpoint in ENDPOINTS)
OPEN_PATHS = tuple(endpoint.path for endpoint in ENDPOINTS if endpoint.open)


def route_label(path: str) -> str:
    """A bounded set of route names, so scanners probing random paths can't grow the metrics."""
    if path in ROUTE_PATHS:
        return path
    return STATIC_PREFIX if path.startswith(STATIC_PREFIX + "/") else "other"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(STATIC_PREFIX + "/")


def speaks_inference_protocol(path: str) -> bool:
    """Whether errors on `path` take the Open Inference Protocol's shape, {"error": "<message>"}."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_response(scope: Scope, code: str, message: str, status: int, headers: dict | None = None) -> JSONResponse:
    """An error in the shape its route speaks: {"error": {"code", "message"}}, or on the Open
    Inference Protocol's routes {"error": "<message>"}. Every error answer is made here."""
    if speaks_inference_protocol(route_path(scope)):
        body: dict = {"error": message}
    else:
        body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)

"""The service's HTTP routes, listed once, each with the handler that answers it. The app's routing,
the metric labels, the paths open without an API key and the OpenAPI document all come from this table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from serve_app.http.handlers import Api
from serve_app.http.inference_protocol import MODEL_NAME, V2_PREFIX


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    handler: Callable[[Api, Request], Awaitable[Response]]
    summary: str
    open: bool = False  # answered without an API key: the page asks for the key, load balancers probe health

    @property
    def name(self) -> str:
        return self.handler.__name__


V2_MODEL = f"{V2_PREFIX}/models/{MODEL_NAME}"
ENDPOINTS = (
    Endpoint("/v1/classify", "POST", Api.classify, "Classify one or several images: top k classes of each"),
    Endpoint("/predict", "POST", Api.predict, "The original design's form: one image, top 3 as label and score"),
    Endpoint("/healthz", "GET", Api.healthz, "Whether the model deployment answers, and what it runs", open=True),
    Endpoint("/v1/labels", "GET", Api.labels, "The 1000 classes, in English and Chinese"),
    Endpoint("/", "GET", Api.page, "The web page", open=True),
    Endpoint("/openapi.json", "GET", Api.openapi, "This API's OpenAPI 3.1 description", open=True),
    Endpoint(V2_PREFIX, "GET", Api.v2_server, "Open Inference Protocol: server metadata"),
    Endpoint(f"{V2_PREFIX}/health/live", "GET", Api.v2_live, "Open Inference Protocol: the server is live", open=True),
    Endpoint(f"{V2_PREFIX}/health/ready", "GET", Api.v2_ready, "Open Inference Protocol: the model answers", open=True),
    Endpoint(V2_MODEL, "GET", Api.v2_model, "Open Inference Protocol: model metadata"),
    Endpoint(f"{V2_MODEL}/ready", "GET", Api.v2_model_ready, "Open Inference Protocol: the model answers", open=True),
    Endpoint(f"{V2_MODEL}/infer", "POST", Api.v2_infer, "Open Inference Protocol: classify encoded images or pixels"),
)
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

"""The HTTP app, assembled: a plain Starlette app from the route table (routes.py), its handlers
(handlers.py), the middleware and the error rendering (responses.py). It knows nothing of Ray, so
the whole HTTP contract can be exercised in process with Starlette's TestClient and a fake model
client; ingress.py serves it from a Ray Serve deployment.

Request flow: middleware (request log + metrics, CORS, API key) -> the route's handler -> JSON.
This module never imports torch.
"""

from __future__ import annotations

from types import MethodType

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serve_app.errors import ServiceError
from serve_app.http.access import access_middleware
from serve_app.http.handlers import API_VERSION, STATIC_DIR, Api
from serve_app.http.model_client import ModelClient
from serve_app.http.openapi import openapi_document
from serve_app.http.responses import render_http_error, render_service_error
from serve_app.http.routes import ENDPOINTS, STATIC_PREFIX
from serve_app.http.telemetry import IngressMetrics, RequestTelemetry
from serve_app.settings import AppSettings


def build_app(model: ModelClient, settings: AppSettings, metrics: IngressMetrics | None = None) -> Starlette:
    api = Api(model, settings, openapi_document(API_VERSION, settings))
    routes = [Route(e.path, MethodType(e.handler, api), methods=[e.method]) for e in ENDPOINTS]
    routes.append(Mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static"))
    middleware = [
        Middleware(RequestTelemetry, metrics=metrics or IngressMetrics(),
                   log_every_request=settings.ingress.request_log == "all"),
        *access_middleware(settings.ingress, settings.auth),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ServiceError: render_service_error, HTTPException: render_http_error},
    )

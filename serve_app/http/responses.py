"""Every error answer is made here, in the shape its route speaks: {"error": {"code", "message"}}, or
on the Open Inference Protocol's routes {"error": "<message>"}. The status comes from the error's
type (errors.py), the one status table."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from serve_app.errors import ServiceError
from serve_app.http.inference_protocol import speaks_inference_protocol
from serve_app.http.scope import note_error, route_path


def error_body(code: str, message: str) -> dict:
    """The API's error shape: a whole answer's, or one image's entry in a multi-image answer."""
    return {"error": {"code": code, "message": message}}


def error_response(scope: Scope, code: str, message: str, status: int, headers: dict | None = None) -> JSONResponse:
    body = {"error": message} if speaks_inference_protocol(route_path(scope)) else error_body(code, message)
    return JSONResponse(body, status_code=status, headers=headers)


async def render_service_error(request: Request, error: ServiceError) -> Response:
    note_error(request.scope, error.code)
    return error_response(request.scope, error.code, error.message, error.status, error.headers)


async def render_http_error(request: Request, error: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(request.scope, code, error.detail, error.status_code)

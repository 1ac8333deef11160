"""Who may call the API: optional bearer API keys and CORS origins, as ASGI middleware."""

from __future__ import annotations

import hmac
from typing import Sequence

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.errors import UnauthorizedError
from serve_app.http.responses import error_response
from serve_app.http.routes import is_open
from serve_app.http.scope import header, note_error, route_path
from serve_app.settings import AuthSettings, IngressSettings


def key_matches(given: str, keys: Sequence[bytes]) -> bool:
    """Constant time in the key's content: every configured key is compared, whatever matched."""
    candidate = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


def bearer_token(scope: Scope) -> str | None:
    return bearer(header(scope, b"authorization"))


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (an HTTP header or gRPC metadata), or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Sequence[bytes]):
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(route_path(scope)):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not key_matches(token, self.keys):
            missing = token is None
            error = UnauthorizedError(
                "this service needs an API key: send `Authorization: Bearer <key>`"
                if missing
                else "the API key is not valid"
            )
            challenge = 'Bearer realm="serve-app"' + ("" if missing else ', error="invalid_token"')
            note_error(scope, error.code)
            response = error_response(scope, error.code, error.message, error.status, {"WWW-Authenticate": challenge})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def access_middleware(ingress: IngressSettings, auth: AuthSettings) -> list[Middleware]:
    """Outermost first: CORS answers preflights and labels every answer, 401s included."""
    middleware = []
    if ingress.cors_allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=ingress.cors_allow_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
                max_age=600,
            )
        )
    if auth.api_keys:
        keys = [key.get_secret_value().encode() for key in auth.api_keys]
        middleware.append(Middleware(ApiKeyMiddleware, keys=keys))
    return middleware

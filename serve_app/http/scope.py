"""Reading an ASGI request's scope, and noting on it what the request-log middleware reports."""

from __future__ import annotations

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """The path below the application's route prefix."""
    path, prefix = scope["path"], scope.get("root_path", "")
    if prefix and path.startswith(prefix):
        return path[len(prefix):] or "/"
    return path


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's first value (`name` in lower case, as ASGI gives them)."""
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def note_error(scope: Scope, code: str) -> None:
    """Record a refusal (of the request, or of one image of it) for the request's metrics and log line."""
    scope.setdefault("state", {}).setdefault("error_codes", []).append(code)

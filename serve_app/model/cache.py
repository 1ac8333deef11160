"""The local disk cache for things a replica builds once per node: stand-in weights, artifacts."""

from __future__ import annotations

from pathlib import Path

from serve_app.settings import CACHE_ENV_VAR, environment


def cache_folder(configured: str | None = None) -> Path:
    """The configured folder, else $SERVE_APP_CACHE, else ~/.cache/serve_app."""
    default = Path.home() / ".cache" / "serve_app"
    return Path(configured or environment(CACHE_ENV_VAR) or default).expanduser()

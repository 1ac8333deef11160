"""The local disk cache for things a replica builds once per node: stand-in weights, artifacts."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "SERVE_APP_CACHE"


def cache_folder(configured: str | None = None) -> Path:
    """The configured folder, else $SERVE_APP_CACHE, else ~/.cache/serve_app."""
    default = Path.home() / ".cache" / "serve_app"
    return Path(configured or os.environ.get(CACHE_ENV_VAR) or default).expanduser()

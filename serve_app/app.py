"""The application builder named by the configs' `import_path: serve_app.app:build`."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.http.ingress import Ingress
from serve_app.model.classifier import Classifier
from serve_app.settings import AppSettings


def build(args: dict[str, Any] | None = None) -> Application:
    settings = AppSettings.from_args(args)
    return Ingress.bind(Classifier.bind(settings.model, settings.ingress.decode_limits), settings)

"""The ingress deployment: a thin Ray Serve shell around the HTTP app (api.py) and its model client.

Everything about HTTP lives in the app that api.py assembles, tested without Ray; this class only
wires that app to the model deployment's handle. This module never imports torch.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from serve_app.http.api import build_app
from serve_app.http.model_client import RayModelClient
from serve_app.http.telemetry import IngressMetrics
from serve_app.settings import AppSettings


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, classifier: DeploymentHandle, settings: AppSettings):
        metrics = IngressMetrics()
        model = RayModelClient(classifier, settings, on_decoded=metrics.decode_seconds.observe, on_call=metrics.model_call)
        self._app = build_app(model, settings, metrics)

    def __serve_build_asgi_app__(self) -> Starlette:
        return self._app

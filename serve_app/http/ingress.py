"""The ingress deployment: a thin Ray Serve shell around the HTTP app (api.py), the gRPC service
(inference_grpc.py) and the model client they share, behind the result cache (result_cache.py).

Everything about HTTP lives in the app that api.py assembles, and everything about gRPC in
GrpcInference, both tested without Ray; this class only wires them to the model deployment's
handle, so HTTP and gRPC requests travel to the model together (one Coalescer). This module never
imports torch.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from serve_app.http.api import build_app
from serve_app.http.handlers import API_VERSION
from serve_app.http.inference_grpc import GrpcInference
from serve_app.http.model_client import RayModelClient
from serve_app.http.result_cache import with_result_cache
from serve_app.http.telemetry import IngressMetrics
from serve_app.settings import AppSettings


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, classifier: DeploymentHandle, settings: AppSettings):
        metrics = IngressMetrics()
        model = RayModelClient(classifier, settings, on_decoded=metrics.decode_seconds.observe, on_call=metrics.model_call)
        model = with_result_cache(model, settings, on_lookup=metrics.cache_lookup, on_store_error=metrics.cache_store_error)
        self._app = build_app(model, settings, metrics)
        self._grpc = GrpcInference(model, settings, API_VERSION, on_answer=metrics.grpc_answer)

    def __serve_build_asgi_app__(self) -> Starlette:
        return self._app

    # inference.GRPCInferenceService on Serve's gRPC port: Serve calls each RPC's method by its name.

    async def ServerLive(self, request, grpc_context):
        return await self._grpc.ServerLive(request, grpc_context)

    async def ServerReady(self, request, grpc_context):
        return await self._grpc.ServerReady(request, grpc_context)

    async def ModelReady(self, request, grpc_context):
        return await self._grpc.ModelReady(request, grpc_context)

    async def ServerMetadata(self, request, grpc_context):
        return await self._grpc.ServerMetadata(request, grpc_context)

    async def ModelMetadata(self, request, grpc_context):
        return await self._grpc.ModelMetadata(request, grpc_context)

    async def ModelInfer(self, request, grpc_context):
        return await self._grpc.ModelInfer(request, grpc_context)

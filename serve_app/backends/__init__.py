"""Inference backends behind one small interface, chosen by name from a registry.

A backend takes the batch exactly as it travels between deployments (uint8, N x 224 x 224 x 3; a
tensor already on the device when the replica decoded it there) and returns float32 logits (N x 1000). Backend modules are imported only when chosen, so a
process that never runs torch never imports it.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from serve_app.settings import ModelSettings
from serve_app.weights import WeightsSource


class Backend(Protocol):
    name: str
    device: str

    def infer(self, images: np.ndarray) -> np.ndarray: ...


_REGISTRY = {
    "torch": "serve_app.backends.torch_eager:TorchEagerBackend",
    "torchscript": "serve_app.backends.torchscript:TorchScriptBackend",
    "onnx": "serve_app.backends.onnx_runtime:OnnxRuntimeBackend",
    "onnx-int8": "serve_app.backends.onnx_runtime:OnnxRuntimeInt8Backend",
    "cuda-graphs": "serve_app.backends.cuda_graphs:CudaGraphsBackend",
}
# Fastest on CPU in benchmarks/results/backends.md; on a GPU, half precision with CUDA Graphs.
AUTO_CPU_BACKEND = "onnx-int8"
AUTO_GPU_BACKEND = "cuda-graphs"


def has_gpu(device: str) -> bool:
    if device != "auto":
        return device in ("cuda", "mps")
    try:
        import ray

        return bool(ray.get_gpu_ids())
    except Exception:
        return False


def backend_name(settings: ModelSettings) -> str:
    """The configured backend, with `auto` resolved for this replica's device."""
    if settings.backend != "auto":
        return settings.backend
    return AUTO_GPU_BACKEND if has_gpu(settings.device) else AUTO_CPU_BACKEND


def backend_class(settings: ModelSettings) -> type:
    """The configured backend's class; importing it imports its runtime (torch or ONNX Runtime)."""
    module_name, class_name = _REGISTRY[backend_name(settings)].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_backend(settings: ModelSettings, source: WeightsSource, threads: int) -> Backend:
    return backend_class(settings)(settings, source, threads)

"""Inference backends behind one small interface, chosen by name from a registry.

A backend takes the batch exactly as it travels between deployments (uint8, N x 224 x 224 x 3; a
tensor already on the device when the replica decoded it there) and returns float32 logits (N x 1000). Backend modules are imported only when chosen, so a
process that never runs torch never imports it.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from serve_app.settings import BACKENDS, ModelSettings
from serve_app.weights import WeightsSource


class Backend(Protocol):
    name: str
    device: str

    def infer(self, images: np.ndarray) -> np.ndarray: ...


REGISTRY = {
    "torch": "serve_app.backends.torch_eager:TorchEagerBackend",
    "torchscript": "serve_app.backends.torchscript:TorchScriptBackend",
    "onnx": "serve_app.backends.onnx_runtime:OnnxRuntimeBackend",
    "onnx-int8": "serve_app.backends.onnx_runtime:OnnxRuntimeInt8Backend",
    "cuda-graphs": "serve_app.backends.cuda_graphs:CudaGraphsBackend",
}
assert REGISTRY.keys() == BACKENDS.keys(), "every backend named in settings.BACKENDS has a class, and only those"


def backend_class(settings: ModelSettings) -> type:
    """The configured backend's class; importing it imports its runtime (torch or ONNX Runtime)."""
    module_name, class_name = REGISTRY[settings.resolved_backend()].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_backend(settings: ModelSettings, source: WeightsSource, threads: int) -> Backend:
    return backend_class(settings)(settings, source, threads)

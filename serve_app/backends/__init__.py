"""Inference backends behind one small interface, chosen by name from a registry.

A backend takes the batch exactly as it travels between deployments (uint8, N x 224 x 224 x 3)
and returns float32 logits (N x 1000). Backend modules are imported only when chosen, so a
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
}


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def load_backend(settings: ModelSettings, source: WeightsSource, threads: int) -> Backend:
    module_name, class_name = _REGISTRY[settings.backend].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(settings, source, threads)

"""Inference backends behind one small interface, chosen by name from a registry.

A backend takes the batch exactly as it travels between deployments (uint8, N x 224 x 224 x 3; a
tensor already on the device when the replica decoded it there) and returns float32 logits (N x 1000). Backend modules are imported only when chosen, so a
process that never runs torch never imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serve_app.model.weights import WeightsSource
from serve_app.settings import (
    BACKENDS,
    FAIL_FIRST_BATCHES_ENV_VAR,
    ModelSettings,
    environment,
)


class Backend(Protocol):
    name: str
    device: str
    artifact_sha256: str | None  # the exported file it runs (part of what decides its answers), if any

    def infer(self, images: np.ndarray) -> np.ndarray: ...


REGISTRY = {
    "torch": "serve_app.model.backends.torch_eager:TorchEagerBackend",
    "torchscript": "serve_app.model.backends.torchscript:TorchScriptBackend",
    "onnx": "serve_app.model.backends.onnx_runtime:OnnxRuntimeBackend",
    "onnx-int8": "serve_app.model.backends.onnx_runtime:OnnxRuntimeInt8Backend",
    "cuda-graphs": "serve_app.model.backends.cuda_graphs:CudaGraphsBackend",
    "null": "serve_app.model.backends.null:NullBackend",
}
assert REGISTRY.keys() == BACKENDS.keys(), "every backend named in settings.BACKENDS has a class, and only those"


@dataclass(frozen=True)
class BackendChoice:
    name: str
    int8_check: dict | None = None  # INT8 against FP32 on held-out photos, where INT8 was in question
    warning: str | None = None  # to be said loudly at start-up


def choose_backend(settings: ModelSettings, source: WeightsSource, device: str | None = None) -> BackendChoice:
    """The backend to run. INT8 must prove itself on every build: where its top-1 agreement with FP32
    on held-out photos is under `int8_min_agreement`, `auto` runs ONNX FP32 instead, and an explicit
    `onnx-int8` runs as configured but with a warning."""
    name = settings.resolved_backend(device)
    if name != "onnx-int8":
        return BackendChoice(name)
    from serve_app.model.artifacts import int8_check

    check = int8_check(settings, source)
    if check["top1_agreement"] >= settings.int8_min_agreement:
        return BackendChoice(name, check)
    measured = (f"INT8 agrees with FP32 on only {check['top1_agreement']:.1%} of top-1 answers "
                f"({check['photos']}; int8_min_agreement is {settings.int8_min_agreement:.0%})")
    if settings.backend == "auto":
        return BackendChoice("onnx", check, f"{measured}: serving ONNX FP32 instead (backend: auto)")
    return BackendChoice(name, check, f"{measured}: serving INT8 anyway, as backend: onnx-int8 asks; "
                                      "set backend: auto or onnx to serve FP32")


def backend_class(name: str) -> type:
    """A backend's class; importing it imports its runtime (torch or ONNX Runtime)."""
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_backend(settings: ModelSettings, source: WeightsSource, threads: int, name: str | None = None) -> Backend:
    """The backend `name` (default: the settings' own, `auto` resolved for this process's device)."""
    backend = backend_class(name or settings.resolved_backend())(settings, source, threads)
    failures = environment(FAIL_FIRST_BATCHES_ENV_VAR)
    return FailingFirst(backend, int(failures)) if failures else backend


class FailingFirst:
    """Test-only (set by no shipped config): the wrapped backend raises on its first `failures` batches,
    as a backend that runs out of memory would, so tests can prove a failed forward pass costs only
    its own batch."""

    def __init__(self, backend: Backend, failures: int):
        self._backend, self._failures = backend, failures
        self.name, self.device, self.artifact_sha256 = backend.name, backend.device, backend.artifact_sha256
        self.max_batch_size = getattr(backend, "max_batch_size", None)

    def infer(self, images):
        if self._failures > 0:
            self._failures -= 1
            raise RuntimeError(f"failure injected by {FAIL_FIRST_BATCHES_ENV_VAR} (test only)")
        return self._backend.infer(images)

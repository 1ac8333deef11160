"""ONNX Runtime, FP32 and static INT8. Imports no torch: artifacts come prepared or are built by a
child process, so a replica on these backends stays small."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from serve_app.model.artifacts import INPUT_NAME, OUTPUT_NAME, artifact_path, recorded_sha256
from serve_app.model.weights import WeightsSource
from serve_app.settings import ModelSettings, resolve_device


def session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    """How a replica runs a model: `threads` intra-op threads, one inter-op, all graph optimizations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


class OnnxRuntimeBackend:
    name = "onnx"

    def __init__(self, settings: ModelSettings, source: WeightsSource, threads: int):
        options = session_options(threads, settings.onnx_spinning)
        wants_cuda = resolve_device(settings.device) == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if wants_cuda else ["CPUExecutionProvider"]
        path = artifact_path(settings, source, self.name)
        self.artifact_sha256 = recorded_sha256(path)
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(images)})[0]


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    name = "onnx-int8"

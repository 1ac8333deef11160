"""Measurement only: no inference. Every image gets the same fixed logits, so everything around the
model (HTTP, multipart, decoding and preprocessing, coalescing, the Ray call, @serve.batch, top-k,
JSON) runs as served and can be timed with the model taken out (benchmarks/compare.py, cpu_share.py).
Settings refuse it unless SERVE_APP_ALLOW_NULL_MODEL=1, and every answer says it ran (`null_model`)."""

from __future__ import annotations

import numpy as np

from serve_app.model.weights import WeightsSource
from serve_app.settings import ModelSettings, resolve_device
from serve_app.wire import NUM_CLASSES

# Falling by 0.01 a class: the top k are classes 0, 1, 2, ... (tench, goldfish, great white shark).
NULL_LOGITS = -np.arange(NUM_CLASSES, dtype=np.float32) / 100


class NullBackend:
    name = "null"
    artifact_sha256 = None  # runs no file (and no model)

    def __init__(self, settings: ModelSettings, source: WeightsSource, threads: int):
        self.device = resolve_device(settings.device)  # replicas that decode still decode there

    def infer(self, images) -> np.ndarray:
        return np.tile(NULL_LOGITS, (len(images), 1))

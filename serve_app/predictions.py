"""Logits -> probabilities -> the top-k answer a client sees. Pure NumPy."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from serve_app.labels import Label


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def top_k(probabilities: np.ndarray, k: int, labels: Sequence[Label]) -> list[dict]:
    """The k most probable classes, highest first (ties broken by the lower class index)."""
    k = min(k, probabilities.shape[-1])
    order = np.lexsort((np.arange(probabilities.shape[-1]), -probabilities))[:k]
    return [
        {
            "index": int(i),
            "label": labels[i].label,
            "label_zh": labels[i].label_zh,
            "score": float(probabilities[i]),
        }
        for i in order
    ]

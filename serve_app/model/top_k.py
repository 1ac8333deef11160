"""Probabilities and each request's k best classes, computed on the model replica after the batch."""

from __future__ import annotations

import numpy as np

from serve_app.errors import ServiceError
from serve_app.wire import NUM_CLASSES, TopK


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def best_k(probabilities: np.ndarray, k: int) -> TopK:
    """Each row's k most probable classes, highest first (ties broken by the lower class index)."""
    k = min(k, probabilities.shape[-1])
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return TopK(order.astype(np.int32), np.take_along_axis(probabilities, order, axis=-1))


def top_k_rows(rows: list[np.ndarray | ServiceError], k: int) -> TopK:
    """One request's answer: the top k of each row of probabilities, and the rows that are errors."""
    errors = {i: row for i, row in enumerate(rows) if isinstance(row, ServiceError)}
    if not errors:
        return best_k(np.stack(rows), k)
    filler = np.zeros(NUM_CLASSES, np.float32)
    ranked = best_k(np.stack([filler if i in errors else row for i, row in enumerate(rows)]), k)
    return TopK(ranked.indices, ranked.scores, errors)

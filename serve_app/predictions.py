"""What travels between the ingress and a model replica, and the top-k answer a client sees. Pure NumPy.

One request is one Ray call each way: its images go as one `ImageBatch` (uint8 pixels, plus plain
JPEGs' bytes where the replicas decode), and only the k best classes of each come back (`TopK`),
not 1,000 probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from serve_app.errors import ServiceError
from serve_app.labels import Label

CROP_SHAPE = (224, 224, 3)
NUM_CLASSES = 1000


@dataclass(frozen=True)
class ImageBatch:
    """One request's images: preprocessed pixels first, then JPEGs for the replica to decode."""

    pixels: np.ndarray  # uint8 (n, 224, 224, 3)
    jpegs: tuple[bytes, ...] = ()
    k: int = 3

    def __len__(self) -> int:
        return len(self.pixels) + len(self.jpegs)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + sum(len(jpeg) for jpeg in self.jpegs)


@dataclass(frozen=True)
class TopK:
    """The k best classes of each image, best first, in the order of the ImageBatch's images."""

    indices: np.ndarray  # int32 (n, k)
    scores: np.ndarray  # float32 (n, k) probabilities
    errors: dict[int, ServiceError] = field(default_factory=dict)  # image -> why it has no answer

    def __len__(self) -> int:
        return len(self.indices)


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


def labelled(indices: np.ndarray, scores: np.ndarray, labels: Sequence[Label]) -> list[dict]:
    """One image's top-k as the API shows it."""
    return [
        {"index": int(i), "label": labels[i].label, "label_zh": labels[i].label_zh, "score": float(s)}
        for i, s in zip(indices, scores)
    ]

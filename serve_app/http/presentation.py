"""How answers look to a client: each image's top k with its English and Chinese labels, and what model
answered (with a loud notice when it is the stand-in)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from serve_app.labels import Label

STANDIN_NOTICE = "STAND-IN weights (seeded, not trained on ImageNet): the labels are meaningless."


def labelled(indices: np.ndarray, scores: np.ndarray, labels: Sequence[Label]) -> list[dict]:
    """One image's top-k as the API shows it."""
    return [
        {"index": int(i), "label": labels[i].label, "label_zh": labels[i].label_zh, "score": float(s)}
        for i, s in zip(indices, scores)
    ]


def public_model_info(info: dict[str, Any]) -> dict[str, Any]:
    """What a replica says about itself (its `info()`), as every answer's `model` field shows it."""
    weights = info["weights"]
    public = {
        "architecture": info["architecture"],
        "weights": weights["name"],
        "weights_sha256": weights["sha256"],
        "standin": weights["standin"],
        "backend": info["backend"],
        "device": info["device"],
    }
    if weights["standin"]:
        public["notice"] = STANDIN_NOTICE
    return public

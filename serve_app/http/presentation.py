"""How answers look to a client: each image's top k with its English and Chinese labels, and what model
answered (with a loud notice when it is the stand-in)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from serve_app.labels import Label
from serve_app.settings import measures_only
from serve_app.wire import TopK

STANDIN_NOTICE = "STAND-IN weights (seeded, not trained on ImageNet): the labels are meaningless."
NULL_MODEL_NOTICE = ("NULL MODEL (measurement only): no inference ran; every image gets the same fixed classes. "
                     "This service is being measured, not classifying.")


def labelled(indices: np.ndarray, scores: np.ndarray, labels: Sequence[Label]) -> list[dict]:
    """One image's top-k as the API shows it."""
    return [
        {"index": int(i), "label": labels[i].label, "label_zh": labels[i].label_zh, "score": float(s)}
        for i, s in zip(indices, scores)
    ]


def cache_headers(answer: TopK) -> dict[str, str]:
    """X-Cache: `hit` when the result cache answered every image of the request (from the store, or from
    another request's computation in flight), `miss` when the model computed any; none with no cache."""
    if not answer.cached:
        return {}
    return {"X-Cache": "hit" if all(answer.cached) else "miss"}


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
    no_inference = measures_only(info["backend"])
    if no_inference:
        public["null_model"] = True
    notices = [notice for notice, applies in ((NULL_MODEL_NOTICE, no_inference), (STANDIN_NOTICE, weights["standin"]))
               if applies]
    if notices:
        public["notice"] = " ".join(notices)
    return public

"""What both baselines share: the eager torchvision model and its reference preprocessing, loaded
the way a user would (torchvision's weights API), with the same weights as the service."""

from __future__ import annotations

import io
import os

import torch
from PIL import Image
from torchvision.models import ResNet18_Weights, resnet18

WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
CATEGORIES = WEIGHTS.meta["categories"]
TRANSFORMS = WEIGHTS.transforms()


def load_eager_model() -> torch.nn.Module:
    """Official weights, or the stand-in when SERVE_APP_WEIGHTS=standin (offline benchmarks)."""
    if os.environ.get("SERVE_APP_WEIGHTS") == "standin":
        from serve_app.standin import standin_state_dict

        model = resnet18()
        model.load_state_dict(standin_state_dict())
    else:
        model = resnet18(weights=WEIGHTS)
    return model.eval()


def image_tensor(data: bytes) -> torch.Tensor:
    return TRANSFORMS(Image.open(io.BytesIO(data)).convert("RGB"))


def top3(logits: torch.Tensor) -> list[dict]:
    probabilities = torch.softmax(logits, dim=-1)
    scores, indices = probabilities.topk(3)
    return [{"label": CATEGORIES[i], "score": float(s)} for s, i in zip(scores.tolist(), indices.tolist())]

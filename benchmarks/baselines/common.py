"""What both baselines share: the model and its preprocessing, loaded the way a user would, with
the same weights as the service.

BASELINE_BACKEND picks the model: `torch` (default) is the eager torchvision model with its own
`weights.transforms()`, as tutorials write it; `onnx-int8` is the very INT8 model ours serves
(serve_app's ONNX Runtime backend and artifact), fed by the same torchvision resize and crop, so a
comparison with it measures the serving design alone; `null` decodes and preprocesses the same way,
then answers the fixed logits of serve_app's null backend without running a model, so a comparison
with it measures everything but the model. BASELINE_THREADS sets the threads per process (default:
the library's own).
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import ResNet18_Weights, resnet18

WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
CATEGORIES = WEIGHTS.meta["categories"]
TRANSFORMS = WEIGHTS.transforms()
GEOMETRY = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])  # TRANSFORMS' own


def threads() -> int | None:
    return int(os.environ["BASELINE_THREADS"]) if os.environ.get("BASELINE_THREADS") else None


def weights_spec() -> str:
    return "standin" if os.environ.get("SERVE_APP_WEIGHTS") == "standin" else "torchvision"


class EagerModel:
    def __init__(self):
        if threads():
            torch.set_num_threads(threads())
        if weights_spec() == "standin":
            from serve_app.model.standin import standin_state_dict

            self.network = resnet18()
            self.network.load_state_dict(standin_state_dict())
        else:
            self.network = resnet18(weights=WEIGHTS)
        self.network.eval()

    def preprocess(self, data: bytes) -> torch.Tensor:
        return TRANSFORMS(Image.open(io.BytesIO(data)).convert("RGB"))

    def logits(self, images: list) -> torch.Tensor:
        with torch.inference_mode():
            return self.network(torch.stack(images))


class Int8Model:
    def __init__(self):
        from serve_app.model.backends import load_backend
        from serve_app.model.weights import resolve_weights
        from serve_app.settings import ModelSettings

        settings = ModelSettings(weights=weights_spec(), backend="onnx-int8", device="cpu")
        self.backend = load_backend(settings, resolve_weights(settings.weights), threads() or os.cpu_count() or 1)

    def preprocess(self, data: bytes) -> np.ndarray:
        return np.asarray(GEOMETRY(Image.open(io.BytesIO(data)).convert("RGB")), dtype=np.uint8)

    def logits(self, images: list) -> torch.Tensor:
        return torch.from_numpy(self.backend.infer(np.stack(images)))


class NullModel(Int8Model):
    """Measurement only: decodes and preprocesses as Int8Model does, then answers serve_app's null
    backend's fixed logits (serve_app/model/backends/null.py) without running a model."""

    def __init__(self):
        from serve_app.model.backends.null import NULL_LOGITS

        self.null_logits = torch.from_numpy(NULL_LOGITS)

    def logits(self, images: list) -> torch.Tensor:
        return self.null_logits.expand(len(images), -1)


MODELS = {"torch": EagerModel, "onnx-int8": Int8Model, "null": NullModel}


def load_model() -> EagerModel | Int8Model | NullModel:
    return MODELS[os.environ.get("BASELINE_BACKEND") or "torch"]()


def top3(logits: torch.Tensor) -> list[dict]:
    probabilities = torch.softmax(logits, dim=-1)
    scores, indices = probabilities.topk(3)
    return [{"label": CATEGORIES[i], "score": float(s)} for s, i in zip(scores.tolist(), indices.tolist())]

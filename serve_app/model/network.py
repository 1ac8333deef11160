"""The ResNet-18 network as torch sees it: weights loaded from a checked source, input contract
uint8 NHWC -> logits. Normalisation lives inside the network so every backend (eager, TorchScript,
ONNX) takes the same uint8 batch that travels between deployments."""

from __future__ import annotations

import torch
from torchvision.models import resnet18

from serve_app.errors import WeightsError
from serve_app.imaging import MEAN, STD
from serve_app.model.standin import standin_state_dict
from serve_app.model.weights import WeightsSource
from serve_app.settings import DeviceName, ModelSettings, resolve_device


class ResNet18Classifier(torch.nn.Module):
    def __init__(self, resnet: torch.nn.Module):
        super().__init__()
        self.resnet = resnet
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        return self.resnet((x - self.mean) / self.std)


def load_state_dict(source: WeightsSource, settings: ModelSettings) -> dict:
    if source.is_standin:
        return standin_state_dict(settings.calibration_images, settings.cache_dir)
    try:
        return torch.load(source.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{source.path} is not a loadable state dict ({exc})") from None


def build_network(source: WeightsSource, settings: ModelSettings) -> ResNet18Classifier:
    resnet = resnet18(weights=None)
    try:
        resnet.load_state_dict(load_state_dict(source, settings))
    except RuntimeError as exc:
        raise WeightsError(f"{source.path} does not hold ResNet-18 weights: {exc}") from None
    return ResNet18Classifier(resnet).eval()


def torch_device(name: DeviceName) -> torch.device:
    return torch.device(resolve_device(name))

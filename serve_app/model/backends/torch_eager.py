"""Eager PyTorch: the reference backend, and the one that runs anywhere torch does."""

from __future__ import annotations

import numpy as np
import torch

from serve_app.model.network import build_network, torch_device
from serve_app.model.weights import WeightsSource
from serve_app.settings import ModelSettings


class TorchEagerBackend:
    name = "torch"
    artifact_sha256 = None  # runs from the weights themselves

    def __init__(self, settings: ModelSettings, source: WeightsSource, threads: int):
        torch.set_num_threads(threads)
        device = torch_device(settings.device)
        self.device = device.type
        self._device = device
        self._network = build_network(source, settings).to(device)

    def infer(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.as_tensor(images).to(self._device)
            return self._network(batch).float().cpu().numpy()

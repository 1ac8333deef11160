"""TorchScript: the traced, frozen network, loaded without Python model code."""

from __future__ import annotations

import numpy as np
import torch

from serve_app.model.artifacts import artifact_path, recorded_sha256
from serve_app.model.network import torch_device
from serve_app.model.weights import WeightsSource
from serve_app.settings import ModelSettings


class TorchScriptBackend:
    name = "torchscript"

    def __init__(self, settings: ModelSettings, source: WeightsSource, threads: int):
        torch.set_num_threads(threads)
        self._device = torch_device(settings.device)
        self.device = self._device.type
        path = artifact_path(settings, source, self.name)
        self.artifact_sha256 = recorded_sha256(path)
        self._module = torch.jit.load(str(path), map_location=self._device)

    def infer(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self._module(torch.as_tensor(images).to(self._device)).float().cpu().numpy()

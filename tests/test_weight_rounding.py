"""GPTQ rounding of int8 convolution weights (serve_app.model.weight_rounding), through its public functions
and through quantize_int8, as the service's export runs it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from serve_app.imaging import image_files
from serve_app.model.artifacts import RECIPES, export_onnx, quantize_int8
from serve_app.model.weight_rounding import INT8_MAX, INT8_MIN, gptq_round
from serve_app.settings import SHARED_IMAGES

pytestmark = pytest.mark.timeout(300)


def correlated_inputs(rng, inputs: int, samples: int, mixing: np.ndarray) -> np.ndarray:
    """Inputs that co-vary, as neighbouring pixels and channels of a real layer do."""
    return mixing @ rng.standard_normal((inputs, samples))


def test_gptq_rounding_cuts_the_layer_output_error_on_inputs_it_never_saw():
    rng = np.random.default_rng(0)
    outputs, inputs = 32, 144
    weight = rng.standard_normal((outputs, inputs)) * 0.05
    scale = np.abs(weight).max(axis=1) / 127.5
    mixing = rng.standard_normal((inputs, inputs)) + 3 * np.eye(inputs)
    seen, unseen = (correlated_inputs(rng, inputs, 4000, mixing) for _ in range(2))

    values = gptq_round(weight, seen @ seen.T, scale)

    nearest = np.clip(np.round(weight / scale[:, None]), INT8_MIN, INT8_MAX)
    assert values.dtype == np.int8 and values.shape == weight.shape
    assert np.abs(values.astype(int) - nearest).max() <= 2, "GPTQ moves a value by a step or two, never far"

    def output_error(ints) -> float:
        return float(np.mean(((weight - ints * scale[:, None]) @ unseen) ** 2))

    assert output_error(values) < 0.7 * output_error(nearest)


def small_classifier():
    """A small network with the service's contract (uint8 NHWC in, logits out) and the kinds of
    convolution ResNet-18 has: 3x3 padded, 3x3 strided, 1x1 strided."""
    import torch

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(32, 32, 1, stride=2), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            )
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, images):
            return self.fc(self.features(images.permute(0, 3, 1, 2).float() / 255))

    torch.manual_seed(0)
    return Small().eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict:
    """The small network quantized with and without GPTQ rounding, calibrated on 16 photos.
    What GPTQ does to ResNet-18's answers is measured by tests/test_int8_fidelity.py."""
    from PIL import Image

    photos = np.stack([np.asarray(Image.open(path).convert("RGB").resize((64, 64)))
                       for path in image_files(SHARED_IMAGES)[:16]])
    folder = tmp_path_factory.mktemp("rounding")
    fp32 = folder / "fp32.onnx"
    export_onnx(small_classifier(), fp32, example_size=64)
    paths = {}
    for name in ("classifier-fp32-percentile", "classifier-fp32-percentile-gptq"):
        paths[name] = folder / f"{name}.onnx"
        quantize_int8(fp32, paths[name], photos, RECIPES[name])
    return paths


def test_gptq_changes_only_the_int8_conv_weights(quantized):
    nearest, gptq = (onnx.load(str(path)) for path in quantized.values())
    assert [(n.op_type, list(n.input)) for n in nearest.graph.node] == [(n.op_type, list(n.input)) for n in gptq.graph.node]
    nearest_values = {i.name: numpy_helper.to_array(i) for i in nearest.graph.initializer}
    changed = [i.name for i in gptq.graph.initializer
               if not np.array_equal(numpy_helper.to_array(i), nearest_values[i.name])]
    conv_weights = {n.input[0] for n in gptq.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in nearest_values and nearest_values[n.input[0]].ndim == 4}
    assert len(conv_weights) == 3
    assert set(changed) == conv_weights, "scales, zero points, biases and the FP32 classifier stay as they were"

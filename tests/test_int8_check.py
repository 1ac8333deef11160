"""INT8 proves itself on every build: its agreement with FP32 on photos it never calibrated on is
measured, recorded in the manifest, and decides what `backend: auto` serves."""

from __future__ import annotations

import json

import pytest
import torch

from serve_app.model import artifacts
from serve_app.model.artifacts import (
    ARTIFACT_FILES,
    INT8_CHECK,
    MANIFEST,
    RECIPES,
    export_onnx,
    int8_agreement,
    quantize_int8,
)
from serve_app.model.backends import choose_backend
from serve_app.model.calibration import (
    calibration_batch,
    held_out_batch,
    held_out_files,
)
from serve_app.model.network import build_network
from serve_app.model.standin import standin_state_dict
from serve_app.model.weights import resolve_weights
from serve_app.settings import ModelSettings


def test_the_standin_build_records_int8_agreement_on_held_out_photos(standin_artifacts):
    check = json.loads((standin_artifacts / MANIFEST).read_text())[INT8_CHECK]
    held_out = len(held_out_files())
    assert check["images"] == held_out and check["photos"] == f"{held_out} held-out photos", \
        "the calibration photos are not used"
    assert check["top1_agreement"] >= ModelSettings().int8_min_agreement


def test_int8_of_a_network_made_to_quantize_badly_fails_the_check(tmp_path):
    """The last block's batch norm blows half of its channels up a thousandfold, and the classifier
    reads only the other half: one uint8 range per tensor must span the huge channels, so the ones
    that decide the class round to a step or two, though FP32 keeps them exactly."""
    state = standin_state_dict()
    state["layer4.1.bn2.weight"][:256] *= 1000
    state["layer4.1.bn2.bias"][:256] *= 1000
    state["fc.weight"][:, :256] = 0
    weights = tmp_path / "resnet18-fragile.pth"
    torch.save(state, weights)
    settings = ModelSettings(weights=str(weights))
    export_onnx(build_network(resolve_weights(str(weights)), settings), tmp_path / ARTIFACT_FILES["onnx"])
    quantize_int8(tmp_path / ARTIFACT_FILES["onnx"], tmp_path / ARTIFACT_FILES["onnx-int8"], calibration_batch(),
                  RECIPES["classifier-fp32"])  # the quick recipe: what matters here is the check
    photos, _ = held_out_batch()
    agreement = int8_agreement(tmp_path / ARTIFACT_FILES["onnx"], tmp_path / ARTIFACT_FILES["onnx-int8"], photos)
    assert agreement < 0.9, f"the fragile network's INT8 agreed on {agreement:.1%}"


@pytest.fixture
def int8_agrees(monkeypatch):
    def agreeing(share: float) -> None:
        check = {"top1_agreement": share, "images": 68, "photos": "68 held-out photos"}
        monkeypatch.setattr(artifacts, "int8_check", lambda settings, source: check)
    return agreeing


def test_auto_serves_fp32_when_int8_fails_its_check_and_says_so(int8_agrees):
    int8_agrees(0.91)
    choice = choose_backend(ModelSettings(weights="standin", backend="auto", device="cpu"), resolve_weights("standin"))
    assert choice.name == "onnx"
    assert "91.0%" in choice.warning and "serving ONNX FP32 instead" in choice.warning


def test_an_explicit_onnx_int8_still_serves_int8_with_a_warning(int8_agrees):
    int8_agrees(0.91)
    choice = choose_backend(ModelSettings(weights="standin", backend="onnx-int8"), resolve_weights("standin"))
    assert choice.name == "onnx-int8" and "serving INT8 anyway" in choice.warning


def test_int8_that_passes_is_served_quietly_and_the_threshold_is_a_setting(int8_agrees):
    int8_agrees(0.98)
    settings = ModelSettings(weights="standin", backend="auto", device="cpu")
    assert choose_backend(settings, resolve_weights("standin")) == artifacts_choice("onnx-int8", 0.98)
    stricter = settings.model_copy(update={"int8_min_agreement": 0.99})
    assert choose_backend(stricter, resolve_weights("standin")).name == "onnx"


def artifacts_choice(name: str, share: float):
    from serve_app.model.backends import BackendChoice

    return BackendChoice(name, {"top1_agreement": share, "images": 68, "photos": "68 held-out photos"})


def test_a_cpu_whose_int8_kernels_saturate_is_served_7_bit_weights(tmp_path, monkeypatch):
    """x86-64 without VNNI sums uint8 x int8 pairs into int16, which full 8-bit weights can saturate."""
    from serve_app.model import artifacts

    monkeypatch.setattr(artifacts.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    for flags, saturates in (("fpu sse2 avx2 fma", True), ("fpu avx2 avx512f avx512_vnni", False),
                             ("fpu avx2 avx_vnni", False)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert artifacts.int8_saturates_here(cpuinfo) is saturates, flags
    assert artifacts.int8_saturates_here(tmp_path / "missing") is False
    monkeypatch.setattr(artifacts.platform, "machine", lambda: "aarch64")
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert artifacts.int8_saturates_here(cpuinfo) is False

    monkeypatch.setattr(artifacts, "int8_saturates_here", lambda: True)
    seven_bit = artifacts.served_recipe()
    assert seven_bit.reduce_range and seven_bit.name == artifacts.SERVED_RECIPE.name + "-7bit"
    monkeypatch.setattr(artifacts, "int8_saturates_here", lambda: False)
    assert artifacts.served_recipe() == artifacts.SERVED_RECIPE

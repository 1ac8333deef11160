"""Backend artifacts built from checked weights: TorchScript, ONNX FP32, ONNX INT8, and a manifest.

`export_artifacts` (torch, run by `python -m serve_app export`) writes them; `artifact_path` (no
torch) finds verified ones for a replica: the configured `artifacts_dir`, else a local cache keyed
by the weights' and calibration photos' sha256, built once by a child process so the replica
itself never imports torch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from serve_app.errors import WeightsError
from serve_app.imaging import CROP_SHAPE
from serve_app.model.weights import WeightsSource, file_sha256
from serve_app.settings import BACKENDS, ModelSettings

MANIFEST = "manifest.json"
ARTIFACT_FILES = {name: spec.artifact for name, spec in BACKENDS.items() if spec.artifact}
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ArtifactError(WeightsError):
    """Artifacts missing, stale (built from other weights) or tampered with."""


Progress = Callable[[str], None]
EXPORT_STEPS = 5
INT8_CHECK = "int8_check"  # the manifest's record of INT8 against FP32 on photos it never calibrated on


@dataclass(frozen=True)
class Int8Recipe:
    """How the FP32 ONNX graph becomes INT8: static QDQ, per-channel int8 weights, uint8 activations
    with ranges from the calibration photos, and these choices on top.
    benchmarks/int8_fidelity.py measures each recipe against FP32."""

    name: str
    fp32_op_types: tuple[str, ...] = ()  # every node of these types stays in FP32
    fp32_first_conv: bool = False
    # 7-bit weights: x86 CPUs without VNNI multiply uint8 x int8 in pairs summed into int16, which
    # can saturate with full 8-bit weights; ONNX Runtime suggests reduce_range there.
    reduce_range: bool = False
    unsigned_weights: bool = False  # uint8 weights (U8U8): no saturation, but slower kernels
    # Activation ranges: None takes each tensor's min and max over the calibration photos; a
    # percentile takes the range that holds that share of its absolute values, so a few outliers
    # no longer coarsen the steps for all the others.
    range_percentile: float | None = None
    gptq_weights: bool = False  # conv weights rounded by serve_app.model.weight_rounding, not to nearest


RECIPES = {recipe.name: recipe for recipe in (
    Int8Recipe("all-int8"),
    Int8Recipe("classifier-fp32", fp32_op_types=("Gemm",)),
    Int8Recipe("classifier-fp32-7bit", fp32_op_types=("Gemm",), reduce_range=True),
    Int8Recipe("classifier-and-stem-fp32", fp32_op_types=("Gemm",), fp32_first_conv=True),
    Int8Recipe("classifier-fp32-u8u8", fp32_op_types=("Gemm",), unsigned_weights=True),
    Int8Recipe("classifier-fp32-percentile", fp32_op_types=("Gemm",), range_percentile=99.999),
    Int8Recipe("classifier-fp32-gptq", fp32_op_types=("Gemm",), gptq_weights=True),
    Int8Recipe("classifier-fp32-percentile-gptq", fp32_op_types=("Gemm",), range_percentile=99.999, gptq_weights=True),
)}
# The most faithful recipe that keeps 2x FP32's speed (benchmarks/results/int8_fidelity.md). Its
# name is part of the artifact cache key, so changing it rebuilds cached artifacts.
SERVED_RECIPE = RECIPES["classifier-fp32-percentile-gptq"]
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # /proc/cpuinfo: int8 products summed into int32


def int8_saturates_here(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU runs ONNX Runtime's uint8 x int8 kernels with the int16 pair sums that full
    8-bit weights can saturate: x86-64 without VNNI (AVX2 alone, or AVX-512 without VNNI)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                 for flag in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags) and not flags & VNNI_FLAGS


def served_recipe() -> Int8Recipe:
    """SERVED_RECIPE, with 7-bit weights on a CPU whose INT8 kernels would saturate (ONNX Runtime's
    advice): on a Zen 3 without VNNI the stand-in's top-1 agreement with FP32 was 89.7% with 8-bit
    weights, under int8_min_agreement, and 98.5% with 7-bit, at the same speed (the same kernels)."""
    if int8_saturates_here():
        return replace(SERVED_RECIPE, name=f"{SERVED_RECIPE.name}-7bit", reduce_range=True)
    return SERVED_RECIPE


def export_artifacts(settings: ModelSettings, out_dir: Path, progress: Progress = lambda step: None) -> dict:
    import torch

    from serve_app.model.calibration import calibration_batch, calibration_identity
    from serve_app.model.network import build_network
    from serve_app.model.weights import weights_for

    source = weights_for(settings)
    progress(f"[1/{EXPORT_STEPS}] network from the {source.kind} weights")
    network = build_network(source, settings)
    example = torch.zeros(2, *CROP_SHAPE, dtype=torch.uint8)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        progress(f"[2/{EXPORT_STEPS}] TorchScript")
        torch.jit.freeze(torch.jit.trace(network, example)).save(str(out_dir / ARTIFACT_FILES["torchscript"]))
    progress(f"[3/{EXPORT_STEPS}] ONNX FP32")
    export_onnx(network, out_dir / ARTIFACT_FILES["onnx"])
    progress(f"[4/{EXPORT_STEPS}] ONNX INT8: ranges from photos, weights rounded by GPTQ")
    quantize_int8(out_dir / ARTIFACT_FILES["onnx"], out_dir / ARTIFACT_FILES["onnx-int8"],
                  calibration_batch(settings.calibration_images))
    check = measure_int8(out_dir / ARTIFACT_FILES["onnx"], out_dir / ARTIFACT_FILES["onnx-int8"],
                         settings.calibration_images)
    progress(f"[5/{EXPORT_STEPS}] INT8 checked against FP32 on {check['photos']}")
    manifest = {
        "weights": source.describe(),
        "calibration_sha256": calibration_identity(settings.calibration_images),
        "int8_recipe": served_recipe().name,
        INT8_CHECK: check,
        "artifacts": {
            backend: {"file": name, "sha256": file_sha256(out_dir / name)} for backend, name in ARTIFACT_FILES.items()
        },
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def export_onnx(network, path: Path, example_size: int = CROP_SHAPE[0]) -> None:
    """The network (uint8 NHWC in, logits out) as FP32 ONNX with a dynamic batch size. (Smaller
    examples serve the INT8 benchmark's small networks.)"""
    import torch

    example = torch.zeros(2, example_size, example_size, CROP_SHAPE[2], dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            network, (example,), str(path), dynamo=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def quantize_int8(fp32_path: Path, int8_path: Path, photos, recipe: Int8Recipe | None = None) -> None:
    """Static QDQ quantization, calibrated on `photos` (uint8 NHWC), the way `recipe` (default: this
    CPU's served recipe) says."""
    recipe = recipe or served_recipe()
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from serve_app.model.weight_rounding import round_conv_weights

    class Photos(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{INPUT_NAME: photos[i : i + 8]} for i in range(0, len(photos), 8)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        fp32 = onnx.load(str(prepared))
        nodes = fp32.graph.node
        kept = [node.name for node in nodes if node.op_type in recipe.fp32_op_types]
        if recipe.fp32_first_conv:
            kept.append(next(node.name for node in nodes if node.op_type == "Conv"))
        ranges = {"calibrate_method": CalibrationMethod.MinMax}
        if recipe.range_percentile is not None:
            ranges = {"calibrate_method": CalibrationMethod.Percentile,
                      "extra_options": {"CalibPercentile": recipe.range_percentile}}
        with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
            quantize_static(
                str(prepared), str(int8_path), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QUInt8 if recipe.unsigned_weights else QuantType.QInt8, nodes_to_exclude=kept,
                reduce_range=recipe.reduce_range, **ranges,
            )
        if recipe.gptq_weights:
            model = onnx.load(str(int8_path))
            round_conv_weights(fp32, model, photos, INPUT_NAME)
            onnx.save(model, str(int8_path))


def int8_agreement(fp32_path: Path, int8_path: Path, photos) -> float:
    """The share of `photos` (uint8 NHWC) on which the INT8 model's top-1 class is FP32's."""
    import numpy as np
    import onnxruntime as ort

    def top1(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batches = [session.run([OUTPUT_NAME], {INPUT_NAME: photos[i : i + 16]})[0] for i in range(0, len(photos), 16)]
        return np.concatenate(batches).argmax(1)

    return float((top1(fp32_path) == top1(int8_path)).mean())


def measure_int8(fp32_path: Path, int8_path: Path, calibration_images: str | None) -> dict:
    """INT8's record against FP32 on photos it never calibrated on, as the manifest keeps it."""
    from serve_app.model.calibration import held_out_batch

    photos, which = held_out_batch(calibration_images)
    agreement = int8_agreement(fp32_path, int8_path, photos)
    return {"top1_agreement": round(agreement, 4), "images": len(photos), "photos": which}


def int8_check(settings: ModelSettings, source: WeightsSource) -> dict:
    """What the manifest of the artifacts the replicas load says of INT8 against FP32. Artifacts
    exported before the check existed are checked now (nothing is written into their folder)."""
    int8_path = artifact_path(settings, source, "onnx-int8")
    check = json.loads((int8_path.parent / MANIFEST).read_text()).get(INT8_CHECK)
    if check is None:
        check = measure_int8(artifact_path(settings, source, "onnx"), int8_path, settings.calibration_images)
    return check


def verified_artifact(folder: Path, source: WeightsSource, backend: str) -> Path:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {folder}: run `python -m serve_app export --out {folder}`")
    manifest = json.loads(manifest_path.read_text())
    if manifest["weights"]["sha256"] != source.sha256:
        raise ArtifactError(
            f"artifacts in {folder} were built from weights {manifest['weights']['sha256'][:12]}, "
            f"not the configured {source.sha256[:12]}: export them again"
        )
    entry = manifest["artifacts"][backend]
    path = folder / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise ArtifactError(f"{path} is missing or does not match its sha256 in {MANIFEST}")
    return path


def recorded_sha256(path: Path) -> str:
    """The sha256 the manifest beside a verified artifact (artifact_path's answer) records for it."""
    manifest = json.loads((path.parent / MANIFEST).read_text())
    return next(entry["sha256"] for entry in manifest["artifacts"].values() if entry["file"] == path.name)


def artifact_path(settings: ModelSettings, source: WeightsSource, backend: str, progress: Progress | None = None) -> Path:
    """A verified artifact for `backend`; built into the cache first when missing, reporting each
    step to `progress` when given."""
    if settings.artifacts_dir:
        return verified_artifact(Path(settings.artifacts_dir).expanduser(), source, backend)
    from serve_app.model.cache import cache_folder
    from serve_app.model.calibration import calibration_identity

    # INT8 ranges depend on the calibration photos and the recipe as well as the weights; "checked":
    # the manifest records INT8's agreement with FP32 (caches from before it are rebuilt).
    key = f"{source.sha256[:16]}-{calibration_identity(settings.calibration_images)[:8]}-{served_recipe().name}-checked"
    folder = cache_folder(settings.cache_dir) / "artifacts" / key
    if not (folder / MANIFEST).is_file():
        build_in_child_process(settings, folder, progress)
    return verified_artifact(folder, source, backend)


def build_in_child_process(settings: ModelSettings, folder: Path, progress: Progress | None = None) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    command = [sys.executable, "-m", "serve_app", "export", "--out", str(staging), "--settings-json",
               settings.model_copy(update={"artifacts_dir": None}).model_dump_json()]
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        for line in child.stdout:
            if progress and line.startswith("["):
                progress(line.rstrip())
        child.wait()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    if child.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArtifactError(f"building artifacts failed:\n{stderr[-3000:]}")
    try:
        os.rename(staging, folder)  # atomic; a replica that lost the race keeps the winner's copy
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)

"""`python -m serve_app evaluate`: agreement with eager torch, and accuracy from synset names."""

from pathlib import Path

import numpy as np
import pytest

from serve_app.__main__ import main
from serve_app.imaging import load_image
from serve_app.labels import imagenet_labels
from serve_app.launch.evaluate import evaluate, probabilities, true_class
from serve_app.model.calibration import CALIBRATION_IMAGES, held_out_files
from serve_app.settings import ModelSettings


def test_synsets_are_read_from_file_or_folder_names():
    assert true_class(Path("n01440764_tench.JPEG")) == 0
    assert true_class(Path("val/n01443537/ILSVRC2012_val_00000001.JPEG")) == 1
    assert true_class(Path("holiday/cat.jpg")) is None
    assert true_class(Path("n99999999_unknown.jpg")) is None


@pytest.fixture(scope="module")
def settings(standin_artifacts):
    return ModelSettings(weights="standin", artifacts_dir=str(standin_artifacts))


def test_accuracy_counts_files_named_after_the_predicted_class(settings, shared_images, tmp_path):
    """Name 5 photos after the stand-in's own top-1 class and 5 after another class: 50% top-1."""
    photos = shared_images[40:50]
    batch = np.stack([load_image(p.read_bytes(), max_pixels=10**9) for p in photos])
    top1 = probabilities(settings, "torch", batch, threads=2).argmax(1)
    named_class = np.where(np.arange(10) < 5, top1, (top1 + 500) % 1000)
    folder = _linked(tmp_path, photos, lambda i, path: f"{imagenet_labels()[named_class[i]].wnid}_{i}.JPEG")
    (report,) = evaluate(settings, folder, ["torch"]).reports
    assert report.top1_accuracy == 0.5
    assert 0.5 <= report.top5_accuracy <= 1.0


def test_cli_prints_agreement_for_every_backend(settings, shared_images, capsys, tmp_path):
    folder = _linked(tmp_path, shared_images, lambda i, path: path.name)
    code = main(["evaluate", "--images", str(folder), "--weights", "standin", "--backends", "onnx,onnx-int8",
                 "--artifacts", settings.artifacts_dir, "--threads", "2"])
    out = capsys.readouterr().out
    assert code == 0
    held_out = len(shared_images) - CALIBRATION_IMAGES
    assert out.startswith(f"{held_out} images (calibration photos left out: {CALIBRATION_IMAGES})"), \
        "INT8 is judged on photos it was not tuned on"
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:5]}
    assert set(rows) == {"torch", "onnx", "onnx-int8"}
    check = out.splitlines()[5]
    assert check.startswith("onnx-int8 build check (manifest): ") and f"{len(held_out_files())} held-out photos" in check, check
    assert check.endswith("passes int8_min_agreement 97.0%"), check
    assert rows["onnx"][1:3] == ["100.0%", "100.0%"], "FP32 ONNX: same top-1 and the same top 5"
    assert float(rows["onnx-int8"][1].rstrip("%")) >= 90.0
    assert float(rows["onnx-int8"][2].rstrip("%")) >= 95.0


def test_cli_rejects_an_unknown_backend(settings, shared_images, tmp_path, capsys):
    folder = _linked(tmp_path, shared_images[40:42], lambda i, path: path.name)
    assert main(["evaluate", "--images", str(folder), "--weights", "standin", "--backends", "tensorrt",
                 "--artifacts", settings.artifacts_dir]) == 2
    assert "tensorrt" in capsys.readouterr().err


def _linked(folder: Path, photos: list[Path], name) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(photos):
        (folder / name(i, path)).symlink_to(path)
    return folder

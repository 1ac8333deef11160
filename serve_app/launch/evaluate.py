"""`python -m serve_app evaluate`: how far each backend strays from eager torch on a folder of photos.

Every backend sees the same decoded batch as in the service. Agreement (top-1, and the overlap of
the top 5) and probability error are measured against eager torch on the same weights, on photos
other than the INT8 calibration photos (those are skipped: INT8 was tuned on them, so they would
flatter it); where a photo's file or folder name starts with
its ImageNet synset (`n01440764_tench.JPEG`, `val/n01440764/x.JPEG`), top-1/top-5 accuracy is
reported too, which only means something with the official weights.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.errors import WeightsError
from serve_app.imaging import image_files, load_image
from serve_app.labels import class_index_by_wnid
from serve_app.model.backends import load_backend
from serve_app.model.calibration import calibration_files
from serve_app.model.top_k import softmax
from serve_app.model.weights import WeightsSource, weights_for
from serve_app.settings import ModelSettings

REFERENCE_BACKEND = "torch"
BATCH = 16
_SYNSET = re.compile(r"^(n\d{8})")


@dataclass(frozen=True)
class Fidelity:
    """How closely one model's probabilities follow a reference's, image by image."""

    top1_agreement: float
    top5_overlap: float  # mean share of the reference's top 5 classes also in the model's top 5
    mean_abs_prob_error: float
    max_abs_prob_error: float

    @classmethod
    def of(cls, probabilities: np.ndarray, reference: np.ndarray) -> "Fidelity":
        error = np.abs(probabilities - reference)
        top5, reference_top5 = np.argsort(-probabilities, axis=1)[:, :5], np.argsort(-reference, axis=1)[:, :5]
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5, reference_top5)])
        return cls(float((probabilities.argmax(1) == reference.argmax(1)).mean()), float(overlap),
                   float(error.mean()), float(error.max()))


@dataclass(frozen=True)
class BackendReport:
    backend: str
    fidelity: Fidelity  # against eager torch
    top1_accuracy: float | None  # None when no file name carries a synset
    top5_accuracy: float | None


@dataclass(frozen=True)
class Evaluation:
    reports: list[BackendReport]
    images: int  # compared
    skipped: int  # calibration photos left out
    int8_check: dict | None = None  # what the INT8 artifact's manifest recorded when it was built
    int8_min_agreement: float | None = None


def without_calibration_photos(files: list[Path], calibration_images: str | None) -> list[Path]:
    """`files` less any whose content is one of the INT8 calibration photos."""
    try:
        calibration = {hashlib.sha256(p.read_bytes()).digest() for p in calibration_files(calibration_images)}
    except WeightsError:  # no calibration photos here: nothing to leave out
        return files
    return [p for p in files if hashlib.sha256(p.read_bytes()).digest() not in calibration]


def true_class(path: Path) -> int | None:
    for name in (path.name, path.parent.name):
        match = _SYNSET.match(name)
        if match and match.group(1) in class_index_by_wnid():
            return class_index_by_wnid()[match.group(1)]
    return None


def probabilities(
    settings: ModelSettings, backend: str, photos: np.ndarray, threads: int, source: WeightsSource | None = None
) -> np.ndarray:
    source = source or weights_for(settings)
    chosen = ModelSettings.model_validate({**settings.model_dump(), "backend": backend})  # rejects unknown names
    runner = load_backend(chosen, source, threads)
    return softmax(np.concatenate([runner.infer(photos[i : i + BATCH]) for i in range(0, len(photos), BATCH)]))


def evaluate(settings: ModelSettings, folder: Path, backends: list[str], threads: int = 2) -> Evaluation:
    every_file = image_files(folder, recursive=True)
    files = without_calibration_photos(every_file, settings.calibration_images)
    if not files:
        raise ValueError(f"no images under {folder} other than the calibration photos")
    photos = np.stack([load_image(path.read_bytes(), max_pixels=10**9) for path in files])
    truth = [true_class(path) for path in files]
    labelled = np.array([t is not None for t in truth])
    truth_array = np.array([t if t is not None else -1 for t in truth])
    accuracy = labelled.any()

    source = weights_for(settings)  # hashed once
    reference = probabilities(settings, REFERENCE_BACKEND, photos, threads, source)
    reports = []
    for backend in [REFERENCE_BACKEND, *[b for b in backends if b != REFERENCE_BACKEND]]:
        probs = reference if backend == REFERENCE_BACKEND else probabilities(settings, backend, photos, threads, source)
        top5 = np.argsort(-probs, axis=1)[:, :5]
        reports.append(BackendReport(
            backend=backend,
            fidelity=Fidelity.of(probs, reference),
            top1_accuracy=float((top5[labelled, 0] == truth_array[labelled]).mean()) if accuracy else None,
            top5_accuracy=float((top5[labelled] == truth_array[labelled, None]).any(1).mean()) if accuracy else None,
        ))
    check = None
    if "onnx-int8" in backends:
        from serve_app.model.artifacts import int8_check

        check = int8_check(settings, source)
    return Evaluation(reports, len(files), len(every_file) - len(files), check, settings.int8_min_agreement)


def format_reports(evaluation: Evaluation, weights: str) -> str:
    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"{evaluation.images} images (calibration photos left out: {evaluation.skipped}), weights: {weights}",
        f"{'backend':12s} {'top-1 agreement':>16s} {'top-5 overlap':>14s} {'mean |dp|':>10s} {'max |dp|':>9s} "
        f"{'top-1 acc':>10s} {'top-5 acc':>10s}",
    ]
    for r in evaluation.reports:
        f = r.fidelity
        lines.append(
            f"{r.backend:12s} {percent(f.top1_agreement):>16s} {percent(f.top5_overlap):>14s} "
            f"{f.mean_abs_prob_error:>10.2e} {f.max_abs_prob_error:>9.2e} {percent(r.top1_accuracy):>10s} "
            f"{percent(r.top5_accuracy):>10s}"
        )
    check = evaluation.int8_check
    if check:
        verdict = "passes" if check["top1_agreement"] >= evaluation.int8_min_agreement else "FAILS"
        lines.append(
            f"onnx-int8 build check (manifest): {percent(check['top1_agreement'])} top-1 agreement with FP32 on "
            f"{check['photos']}; {verdict} int8_min_agreement {percent(evaluation.int8_min_agreement)}"
            + ("" if verdict == "passes" else " (backend: auto serves ONNX FP32)")
        )
    return "\n".join(lines)

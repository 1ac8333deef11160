"""The photos that calibrate the stand-in's batch norm and the INT8 quantization ranges."""

from __future__ import annotations

import hashlib
from pathlib import Path

from serve_app.settings import CALIBRATION_ENV_VAR, environment
from serve_app.weights import WeightsError

CALIBRATION_IMAGES = 32
_REPO_SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def calibration_files(configured: str | None = None) -> list[Path]:
    """The first 32 photos (by name) of the configured folder, $SERVE_APP_CALIBRATION_IMAGES,
    or the shared/images folder beside the repository."""
    folder = Path(configured or environment(CALIBRATION_ENV_VAR) or _REPO_SHARED_IMAGES).expanduser()
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise WeightsError(
            f"calibration needs real photos, but {folder} holds none. "
            f"Set `calibration_images` or {CALIBRATION_ENV_VAR} to a folder of JPEGs."
        )
    return files[:CALIBRATION_IMAGES]


def calibration_identity(configured: str | None = None) -> str:
    """sha256 over the calibration photos' names and contents: what INT8 ranges and the stand-in depend on."""
    digest = hashlib.sha256()
    for path in calibration_files(configured):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def calibration_batch(configured: str | None = None):
    """The calibration photos as one uint8 batch (N, 224, 224, 3), preprocessed like requests."""
    return photo_batch(calibration_files(configured))


def photo_batch(paths: list[Path]):
    """Photos as one uint8 batch (N, 224, 224, 3), preprocessed like requests, fully decoded (no draft)."""
    import numpy as np

    from serve_app.imaging import load_image

    return np.stack([load_image(p.read_bytes(), max_pixels=10**9, draft=False) for p in paths])

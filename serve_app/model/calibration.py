"""The photos that calibrate the stand-in's batch norm and the INT8 quantization ranges, and the
photos that check INT8 afterwards (never the same pixels)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from serve_app.errors import WeightsError
from serve_app.imaging import image_files
from serve_app.settings import CALIBRATION_ENV_VAR, SHARED_IMAGES, environment

CALIBRATION_IMAGES = 32
HELD_OUT_IMAGES = 200  # at most, for the INT8 check
MIN_HELD_OUT_IMAGES = 16  # fewer left over: the check uses the calibration photos mirrored


def photo_files(configured: str | None = None) -> list[Path]:
    """Every photo (by name) of the configured folder, $SERVE_APP_CALIBRATION_IMAGES, or the
    shared/images folder beside the repository."""
    folder = Path(configured or environment(CALIBRATION_ENV_VAR) or SHARED_IMAGES).expanduser()
    files = image_files(folder) if folder.is_dir() else []
    if not files:
        raise WeightsError(
            f"calibration needs real photos, but {folder} holds none. "
            f"Set `calibration_images` or {CALIBRATION_ENV_VAR} to a folder of JPEGs."
        )
    return files


def calibration_files(configured: str | None = None) -> list[Path]:
    """The first 32 photos of the calibration folder."""
    return photo_files(configured)[:CALIBRATION_IMAGES]


def held_out_files(configured: str | None = None) -> list[Path]:
    """The photos after the first 32 of the calibration folder, up to 200: never calibrated on."""
    return photo_files(configured)[CALIBRATION_IMAGES : CALIBRATION_IMAGES + HELD_OUT_IMAGES]


def held_out_batch(configured: str | None = None):
    """Photos INT8 never calibrated on, as one uint8 batch, and what they are: the folder's photos after
    the first 32 (up to 200) or, where fewer than 16 are left, the calibration photos mirrored."""
    import numpy as np

    held_out = held_out_files(configured)
    if len(held_out) >= MIN_HELD_OUT_IMAGES:
        return photo_batch(held_out), f"{len(held_out)} held-out photos"
    mirrored = np.ascontiguousarray(calibration_batch(configured)[:, :, ::-1])
    return mirrored, f"{len(mirrored)} calibration photos mirrored (too few held-out photos)"


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

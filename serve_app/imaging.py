"""Upload bytes -> RGB uint8 224x224x3, the model's input. Pure Pillow and NumPy: no torch, no Ray.

The geometry is torchvision's reference for ResNet18_Weights.IMAGENET1K_V1 (`weights.transforms()`):
resize the shorter side to 256 (bilinear, antialiased), then center-crop 224. Normalisation with
MEAN/STD happens inside the model's batch, so images travel between deployments as uint8.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from serve_app.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedMediaTypeError,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}  # what is read as a photo from a folder
RESIZE_SIZE = 256
CROP_SIZE = 224
CROP_SHAPE = (CROP_SIZE, CROP_SIZE, 3)  # one image as the model takes it: uint8 height x width x RGB
# JPEG reduced-size decoding keeps both sides at least this long: see decode_image.
DRAFT_MIN_SIDE = 3 * RESIZE_SIZE
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Part of what decides an answer (the result cache's keys): raise it whenever decoding or
# preprocessing changes the pixels or inputs an upload becomes.
PREPROCESSING_VERSION = 1

# Past this, resizing the whole image would allocate far more than the crop needs: resize only
# the crop's source region instead (within one grey level of the reference, and bounded in memory).
_MAX_RESIZED_LONG_SIDE = 4096

# Magic numbers of formats Pillow reads: bytes that start like these but fail to decode are a
# broken image (400), anything else is not an image at all (415).
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"\x00\x00\x01\x00",  # ICO
)


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The photos in a folder (and its subfolders where `recursive`), by suffix, sorted by path."""
    found = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(path for path in found if path.suffix.lower() in IMAGE_SUFFIXES)


def _looks_like_image(data: bytes) -> bool:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(_IMAGE_SIGNATURES)


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Read only the header: the format is one we read and width x height is within the limit.
    Nothing is decoded yet, so this is cheap enough for an ingress that only validates."""
    if not data:
        raise EmptyImageError("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image dimensions are too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        if _looks_like_image(data):
            raise CorruptImageError("the image is corrupt and cannot be decoded") from exc
        raise UnsupportedMediaTypeError(
            "the file is not an image format this service reads (JPEG, PNG, GIF, WebP, BMP, TIFF)"
        ) from exc
    except Exception as exc:  # Pillow raises many types for broken headers
        raise CorruptImageError(f"the image header is corrupt: {exc}") from exc

    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImageError("the image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return image


def is_plain_jpeg(image: Image.Image) -> bool:
    """A JPEG that needs nothing but decoding, resizing and cropping: RGB or grey, stored upright.
    Only these go to a model replica undecoded (nvJPEG does not read CMYK, and applies no EXIF)."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1) == 1
    except Exception:  # unreadable EXIF: let the CPU path decide what it is
        return False


def decode_image(data: bytes, *, max_pixels: int, draft: bool = True) -> Image.Image:
    """Decode an upload into an upright RGB image, enforcing the pixel limit before decoding."""
    image = open_image(data, max_pixels=max_pixels)
    if draft and image.format == "JPEG":
        # DCT-domain downscale by 2, 4 or 8 while both sides stay >= 3x the resize target, so
        # photos of 1536 px and up decode 2-4x faster and the reference's antialiased resize still
        # does the final filtering. Measured on the shared photos upscaled to 1024-2100 px (stand-in
        # weights): keeping 2x moved pixels by ~1 grey level and changed 2-3% of top-1 answers;
        # keeping 3x moves them by < 0.6 and agrees on 99-100%.
        image.draft(image.mode, (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE))
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy of an upright image
        return to_rgb(image)
    except ImageTooLargeError:
        raise
    except Exception as exc:
        raise CorruptImageError(f"the image is truncated or corrupt: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: 16-bit greys are scaled (not clipped), transparency goes on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.float64)
        scale = 257.0 if grey.max(initial=0) <= 65535 else grey.max() / 255.0
        image = Image.fromarray(np.clip(grey / scale, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """RGB image -> uint8 array (224, 224, 3): torchvision's resize-256 and center-crop-224."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized_long = int(RESIZE_SIZE * long / short)  # torchvision's rounding
    resized = (RESIZE_SIZE, resized_long) if width <= height else (resized_long, RESIZE_SIZE)
    top = int(round((resized[1] - CROP_SIZE) / 2.0))
    left = int(round((resized[0] - CROP_SIZE) / 2.0))
    if resized_long <= _MAX_RESIZED_LONG_SIDE:
        # The reference's resize, its two passes taken apart: Pillow resizes along rows first, then
        # along columns, each output column from its own column only, so dropping the columns outside
        # the crop between the passes gives the reference's pixels bit for bit (tests/test_imaging.py)
        # in 0.9x its time.
        rows = image.resize((resized[0], height), Image.Resampling.BILINEAR)
        columns = rows.crop((left, 0, left + CROP_SIZE, height))
        crop = columns.resize((CROP_SIZE, resized[1]), Image.Resampling.BILINEAR).crop((0, top, CROP_SIZE, top + CROP_SIZE))
    else:
        sx, sy = width / resized[0], height / resized[1]
        box = (left * sx, top * sy, (left + CROP_SIZE) * sx, (top + CROP_SIZE) * sy)
        crop = image.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR, box=box)
    return np.asarray(crop, dtype=np.uint8)


def load_image(data: bytes, *, max_pixels: int, draft: bool = True) -> np.ndarray:
    """Upload bytes -> model input: decode, then preprocess."""
    return preprocess(decode_image(data, max_pixels=max_pixels, draft=draft))

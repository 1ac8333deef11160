"""JPEG reduced-size decoding (Pillow's draft) answers like a full decode."""

import io

import numpy as np
import pytest
from PIL import Image

from serve_app.imaging import DRAFT_MIN_SIDE, decode_image, load_image
from serve_app.model.backends import load_backend
from serve_app.model.weights import resolve_weights
from serve_app.settings import ModelSettings

LIMIT = 10**9


@pytest.fixture(scope="module")
def model():
    backend = load_backend(ModelSettings(weights="standin", backend="torch"), resolve_weights("standin"), threads=2)
    return lambda photos: np.concatenate([backend.infer(photos[i : i + 25]) for i in range(0, len(photos), 25)])


def upscaled_jpeg(path, short_side: int) -> bytes:
    image = Image.open(path).convert("RGB")
    scale = short_side / min(image.size)
    out = io.BytesIO()
    image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC).save(
        out, "JPEG", quality=90
    )
    return out.getvalue()


def top1_agreement(model, uploads: list[bytes]) -> float:
    full = np.stack([load_image(data, max_pixels=LIMIT, draft=False) for data in uploads])
    drafted = np.stack([load_image(data, max_pixels=LIMIT, draft=True) for data in uploads])
    return float((model(drafted).argmax(1) == model(full).argmax(1)).mean())


def test_shared_photos_agree_with_full_decoding(model, shared_images):
    assert top1_agreement(model, [p.read_bytes() for p in shared_images]) == 1.0


@pytest.mark.parametrize("short_side", [1600, 2100])
def test_large_photos_are_decoded_smaller_and_agree(model, shared_images, short_side):
    uploads = [upscaled_jpeg(p, short_side) for p in shared_images]
    decoded = decode_image(uploads[0], max_pixels=LIMIT, draft=True)
    assert DRAFT_MIN_SIDE <= min(decoded.size) < short_side, "draft must actually reduce these photos"
    assert top1_agreement(model, uploads) >= 0.99


def test_photos_under_twice_the_draft_floor_are_decoded_whole(shared_images):
    upload = upscaled_jpeg(shared_images[0], 2 * DRAFT_MIN_SIDE - 2)
    assert min(decode_image(upload, max_pixels=LIMIT, draft=True).size) == 2 * DRAFT_MIN_SIDE - 2

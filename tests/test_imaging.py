import io

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms
from torchvision.models import ResNet18_Weights

from serve_app import imaging
from serve_app.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedMediaTypeError,
)
from serve_app.imaging import decode_image, load_image, preprocess
from tests.images import encode, exif_rotated_jpeg, png_header_only, truncated

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`

LIMIT = 40_000_000


def normalised(array: np.ndarray) -> np.ndarray:
    mean, std = np.array(imaging.MEAN), np.array(imaging.STD)
    return ((array / 255.0 - mean) / std).transpose(2, 0, 1)


def test_constants_are_torchvision_resnet18_weights_metadata():
    reference = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert reference.resize_size == [imaging.RESIZE_SIZE]
    assert reference.crop_size == [imaging.CROP_SIZE]
    assert tuple(reference.mean) == imaging.MEAN and tuple(reference.std) == imaging.STD


def test_preprocessing_equals_torchvision_reference_on_every_shared_image(shared_images):
    reference = ResNet18_Weights.IMAGENET1K_V1.transforms()
    for path in shared_images:
        ours = load_image(path.read_bytes(), max_pixels=LIMIT, draft=False)
        assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
        expected = reference(Image.open(path).convert("RGB")).numpy()
        np.testing.assert_allclose(normalised(ours), expected, atol=1e-5, err_msg=path.name)


def test_exif_rotated_photo_comes_out_upright(shared_images):
    upright = Image.open(shared_images[0]).convert("RGB")
    rotated = decode_image(exif_rotated_jpeg(upright), max_pixels=LIMIT, draft=False)
    assert rotated.size == upright.size
    plain = decode_image(encode(upright, "JPEG", quality=95), max_pixels=LIMIT, draft=False)
    assert np.abs(np.asarray(rotated, float) - np.asarray(plain, float)).mean() < 3


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_every_common_mode_becomes_rgb_close_to_the_original(shared_images, mode):
    original = Image.open(shared_images[1]).convert("RGB")
    converted = original.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    array = load_image(encode(converted, fmt), max_pixels=LIMIT)
    expected = preprocess(converted.convert("RGB"))
    assert array.shape == (224, 224, 3)
    assert np.abs(array.astype(float) - expected.astype(float)).mean() < 3


def test_cmyk_jpeg_decodes_like_its_rgb_version(shared_images):
    rgb = Image.open(shared_images[2]).convert("RGB")
    cmyk = load_image(encode(rgb.convert("CMYK"), "JPEG", quality=95), max_pixels=LIMIT)
    plain = load_image(encode(rgb, "JPEG", quality=95), max_pixels=LIMIT)
    assert np.abs(cmyk.astype(float) - plain.astype(float)).mean() < 4


def test_sixteen_bit_grey_png_is_scaled_not_clipped(shared_images):
    grey = np.asarray(Image.open(shared_images[3]).convert("L"), dtype=np.uint16)
    sixteen = Image.fromarray(grey * 257)
    array = load_image(encode(sixteen, "PNG"), max_pixels=LIMIT)
    expected = preprocess(Image.fromarray(grey.astype(np.uint8)).convert("RGB"))
    assert np.array_equal(array, expected)


def test_transparent_pixels_become_white():
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    assert (load_image(encode(clear, "PNG"), max_pixels=LIMIT) == 255).all()


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (256, 256), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = io.BytesIO()
    frames[0].save(data, format="GIF", save_all=True, append_images=frames[1:])
    array = load_image(data.getvalue(), max_pixels=LIMIT)
    assert array[..., 0].mean() > 200 and array[..., 2].mean() < 50


def test_extreme_aspect_ratio_is_cropped_without_a_giant_resize():
    strip = Image.new("RGB", (20_000, 3), (10, 200, 30))
    array = load_image(encode(strip, "PNG"), max_pixels=LIMIT)
    assert array.shape == (224, 224, 3) and np.abs(array.astype(int) - (10, 200, 30)).max() <= 1


def test_empty_upload_is_rejected():
    with pytest.raises(EmptyImageError):
        load_image(b"", max_pixels=LIMIT)


def test_truncated_jpeg_is_corrupt_not_a_crash(shared_images):
    with pytest.raises(CorruptImageError):
        load_image(truncated(shared_images[0]), max_pixels=LIMIT)


def test_image_signature_with_garbage_after_is_corrupt():
    with pytest.raises(CorruptImageError):
        load_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, max_pixels=LIMIT)


def test_text_file_is_not_an_image():
    with pytest.raises(UnsupportedMediaTypeError):
        load_image(b"name,score\nalp,0.4\n", max_pixels=LIMIT)


def test_declared_dimensions_over_the_pixel_limit_are_refused_before_decoding():
    with pytest.raises(ImageTooLargeError):
        load_image(png_header_only(30_000, 30_000), max_pixels=LIMIT)
    with pytest.raises(ImageTooLargeError):
        load_image(png_header_only(100_000, 100_000), max_pixels=10**12)  # Pillow's own bomb guard


def test_pixel_limit_is_configurable(shared_images):
    with pytest.raises(ImageTooLargeError):
        load_image(shared_images[0].read_bytes(), max_pixels=1000)


@pytest.mark.parametrize("size", [(256, 256), (256, 400), (300, 256), (100, 60), (225, 999), (1000, 240), (511, 383)])
def test_crop_equals_torchvision_geometry_bit_for_bit_at_any_size(shared_images, size):
    """Up- and downscaling, either side already 256, odd sizes: the same uint8 pixels as torchvision's
    Resize(256) and CenterCrop(224) on the same PIL image."""
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    photo = Image.open(shared_images[7]).convert("RGB").resize(size)
    np.testing.assert_array_equal(preprocess(photo), np.asarray(reference(photo)))

"""Decoding on the model replica: a batch of JPEG bytes -> uint8 N x 224 x 224 x 3 on the replica's device.

With `decode_on_replica`, the ingress checks headers only and sends plain JPEGs as bytes. Here they
are decoded in groups (torchvision's decode_jpeg: nvJPEG on a CUDA device, libjpeg on the CPU),
and each image is resized and center-cropped with torchvision's reference geometry (imaging.py) on
the same device as soon as its group is decoded. A group holds at most `max_image_pixels` decoded
pixels (one maximal image, or many small ones), so a chunk of large JPEGs that are small on the
wire never sits in device memory at full size all at once. A JPEG the device decoder refuses takes
the ingress's CPU path (same pixel limit, same reduced-size decoding); one that fails there too
gets its error back, in its place, without failing the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from serve_app.errors import CorruptImageError, ServiceError
from serve_app.imaging import CROP_SIZE, RESIZE_SIZE, load_image, open_image
from serve_app.settings import DecodeLimits


@dataclass
class DecodedBatch:
    images: torch.Tensor | None  # uint8 (M, 224, 224, 3) on the device, for the M that decoded
    order: list[int]  # batch index of each row of `images`
    errors: dict[int, ServiceError]  # batch index -> why, for the ones that did not


def preprocess_tensor(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (224, 224, 3): shorter side to 256 (bilinear, antialiased), center crop 224."""
    resized = F.resize(image, [RESIZE_SIZE], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(resized, [CROP_SIZE, CROP_SIZE]).permute(1, 2, 0)


def decode_on_device(encoded: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG as uint8 (3, H, W) on `device`, or None where the device decoder refused it."""
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass  # one bad image fails the batched call: find which, one at a time
    decoded: list[torch.Tensor | None] = []
    for tensor in tensors:
        try:
            decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded.append(None)
    return decoded


def pixel_bounded_groups(encoded: list[bytes], limits: DecodeLimits,
                         errors: dict[int, ServiceError]) -> list[list[int]]:
    """Batch indices in groups whose decoded pixels add up to at most max_image_pixels (read from the
    headers; an image over the limit on its own, or with no readable header, gets its error instead)."""
    groups: list[list[int]] = []
    group: list[int] = []
    pixels = 0
    for index, data in enumerate(encoded):
        try:
            width, height = open_image(data, max_pixels=limits.max_image_pixels).size
        except ServiceError as error:
            errors[index] = error
            continue
        if group and pixels + width * height > limits.max_image_pixels:
            groups.append(group)
            group, pixels = [], 0
        group.append(index)
        pixels += width * height
    return groups + ([group] if group else [])


def split_for_threads(encoded: list[bytes], threads: int) -> list[list[bytes]]:
    """`encoded` in up to `threads` consecutive parts of near-equal length, for decoding side by side on
    a CPU (libjpeg and torch's resize each run on one thread; nvJPEG takes a whole batch at once)."""
    parts = max(1, min(threads, len(encoded)))
    size, extra = divmod(len(encoded), parts)
    bounds = [index * size + min(index, extra) for index in range(parts + 1)]
    return [encoded[bounds[index] : bounds[index + 1]] for index in range(parts)]


def joined(parts: list[DecodedBatch]) -> DecodedBatch:
    """The parts of split_for_threads decoded, as one batch indexed like the whole."""
    if len(parts) == 1:  # a GPU's whole chunk, or one thread's: nothing to copy together
        return parts[0]
    images, order, errors, offset = [], [], {}, 0
    for part in parts:
        if part.images is not None:
            images.append(part.images)
        order += [offset + index for index in part.order]
        errors.update({offset + index: error for index, error in part.errors.items()})
        offset += len(part.order) + len(part.errors)
    return DecodedBatch(torch.cat(images) if images else None, order, errors)


def decode_batch(encoded: list[bytes], device: torch.device, limits: DecodeLimits) -> DecodedBatch:
    rows, order, errors = [], [], {}
    for group in pixel_bounded_groups(encoded, limits, errors):
        decoded = decode_on_device([encoded[index] for index in group], device)
        for at, index in enumerate(group):
            image, decoded[at] = decoded[at], None  # the full-size image is let go once it is resized
            try:
                if image is None:  # the CPU path, as the ingress would have done it
                    row = torch.from_numpy(load_image(encoded[index], max_pixels=limits.max_image_pixels,
                                                      draft=limits.draft)).to(device)
                else:
                    row = preprocess_tensor(image)
            except ServiceError as error:
                errors[index] = error
                continue
            except Exception as exc:  # anything else about this one image must not fail its batch
                errors[index] = CorruptImageError(f"the image could not be decoded: {exc}")
                continue
            finally:
                del image
            rows.append(row)
            order.append(index)
    return DecodedBatch(torch.stack(rows) if rows else None, order, errors)


"""Image bytes built from the shared photos, for tests that need a particular kind of upload."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """Pixels stored sideways with EXIF Orientation=6 ('rotate 90 CW to view'), as phones do."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header that declares huge dimensions: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def truncated(path: Path, fraction: float = 0.5) -> bytes:
    data = path.read_bytes()
    return data[: int(len(data) * fraction)]

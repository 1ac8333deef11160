"""Hostile and odd uploads: a fixed corpus of named cases, and Hypothesis strategies that mutate real photos.

A case is an `Upload` request description; `send` turns it into a real HTTP request. Some cases
are valid images in unusual forms (CMYK, 16-bit, animated, WebP...) and must be classified; the
rest must be refused with a 4xx JSON error. Either way, never a 5xx.
"""

from __future__ import annotations

import io
import random
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.images import encode, exif_rotated_jpeg, png_header_only

CONTENT_TYPES = [
    "image/jpeg", "image/png", "image/gif", "image/webp", "application/octet-stream", "text/plain",
    "application/json", "multipart/form-data", "image/svg+xml", "", None,
]


@dataclass(frozen=True)
class Upload:
    """How to send bytes: as multipart `file` parts (several for a multi-image request) or as a raw body."""

    parts: tuple[bytes, ...]
    multipart: bool = True
    filename: str = "photo.jpg"
    content_type: str | None = "image/jpeg"  # the part's type, or the raw body's Content-Type header
    field_name: str = "file"


def send(client: httpx.Client, url: str, upload: Upload, headers: dict | None = None) -> httpx.Response:
    headers = dict(headers or {})
    if upload.multipart:
        files = [
            (upload.field_name, (f"{i}-{upload.filename}", data, upload.content_type or "application/octet-stream"))
            for i, data in enumerate(upload.parts)
        ]
        return client.post(url, files=files, headers=headers, timeout=60)
    if upload.content_type is not None:
        headers["content-type"] = upload.content_type
    return client.post(url, content=upload.parts[0], headers=headers, timeout=60)


def flip_bits(data: bytes, positions: list[int]) -> bytes:
    mutable = bytearray(data)
    for position in positions:
        mutable[position % len(mutable)] ^= 1 << (position % 8)
    return bytes(mutable)


def jpeg_with_dimensions(photo: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF header now claims width x height: a bomb if the server believes it."""
    data = bytearray(photo)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise ValueError("no SOF marker")


def gif_with_screen(width: int, height: int) -> bytes:
    small = encode(Image.new("P", (4, 4)), "GIF")
    return small[:6] + struct.pack("<HH", width, height) + small[10:]


def animated_gif(photo: Image.Image) -> bytes:
    frames = [photo.resize((120, 90)).rotate(angle).convert("P") for angle in (0, 90, 180)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def valid_odd_images(photos: list[Path]) -> dict[str, bytes]:
    """Real images in forms the service must accept (each is answered 200)."""
    rgb = Image.open(photos[0]).convert("RGB")
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 0
    return {
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "grey.jpg": encode(rgb.convert("L"), "JPEG"),
        "exif_rotated.jpg": exif_rotated_jpeg(rgb),
        "progressive.jpg": encode(rgb, "JPEG", progressive=True),
        "grey16.png": encode(grey16, "PNG"),
        "palette.png": encode(palette, "PNG"),
        "palette_transparent.png": encode(palette_transparent, "PNG", transparency=0),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "animated.gif": animated_gif(rgb),
        "photo.webp": encode(rgb, "WEBP"),
        "photo.tiff": encode(rgb, "TIFF"),
        "photo.bmp": encode(rgb, "BMP"),
        "tiny_1x1.png": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "long_strip.png": encode(Image.new("RGB", (3000, 2), (0, 90, 200)), "PNG"),
    }


def corpus(photos: list[Path]) -> list[tuple[str, Upload]]:
    """Named hostile and odd cases, several hundred of them, deterministic."""
    rng = random.Random(1234)
    jpegs = [p.read_bytes() for p in photos[:20]]
    pngs = [encode(Image.open(p).convert("RGB").resize((160, 120)), "PNG") for p in photos[20:30]]
    cases: list[tuple[str, Upload]] = []

    for name, data in valid_odd_images(photos).items():
        cases.append((f"valid {name}", Upload((data,), filename=name)))
        cases.append((f"valid raw {name}", Upload((data,), multipart=False, content_type="application/octet-stream")))
    for i, data in enumerate(jpegs + pngs):
        for fraction in (0.0005, 0.01, 0.3, 0.7, 0.98):
            cases.append((f"truncated {i} at {fraction}", Upload((data[: max(1, int(len(data) * fraction))],))))
        for flips in (1, 8, 64):
            positions = [rng.randrange(len(data) * 8) // 8 for _ in range(flips)]
            cases.append((f"{flips} bits flipped {i}", Upload((flip_bits(data, positions),))))
        cases.append((f"header spliced onto noise {i}", Upload((data[:600] + rng.randbytes(4000),))))
    for size in (1, 2, 3, 16, 100, 4096, 100_000):
        cases.append((f"random {size} bytes", Upload((rng.randbytes(size),))))
        cases.append((f"random {size} bytes raw", Upload((rng.randbytes(size),), multipart=False)))
    cases += [
        ("zero-length raw body", Upload((b"",), multipart=False)),
        ("zero-length raw body, no type", Upload((b"",), multipart=False, content_type=None)),
        ("zero-length file part", Upload((b"",))),
        ("multipart with a field named image", Upload((jpegs[0],), field_name="image")),
        ("image bytes as text/plain", Upload((jpegs[0],), multipart=False, content_type="text/plain")),
        ("image bytes as application/json", Upload((jpegs[0],), multipart=False, content_type="application/json")),
        ("image bytes with no content type", Upload((jpegs[0],), multipart=False, content_type=None)),
        ("multipart type with a raw body", Upload((jpegs[0],), multipart=False, content_type="multipart/form-data")),
        ("multipart type, bad boundary", Upload((b"--x\r\nnonsense",), multipart=False, content_type="multipart/form-data; boundary=x")),
        ("png bomb 100000x100000", Upload((png_header_only(100_000, 100_000),), filename="bomb.png")),
        ("png bomb 65535x65535", Upload((png_header_only(65_535, 65_535),), filename="bomb.png")),
        ("png claiming 0x0", Upload((png_header_only(0, 0),), filename="zero.png")),
        ("jpeg bomb 65000x65000", Upload((jpeg_with_dimensions(jpegs[1], 65_000, 65_000),))),
        ("jpeg claiming 0 wide", Upload((jpeg_with_dimensions(jpegs[2], 0, 100),))),
        ("gif bomb 65535x65535", Upload((gif_with_screen(65_535, 65_535),), filename="bomb.gif")),
        ("html named like a jpeg", Upload((b"<!doctype html><html><body>hi</body></html>",), filename="cat.jpg")),
        ("pdf named like a png", Upload((b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n",), filename="cat.png")),
        ("zip named like a jpeg", Upload((b"PK\x03\x04" + rng.randbytes(200),), filename="cat.jpeg")),
        ("svg", Upload((b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',), filename="x.svg", content_type="image/svg+xml")),
        ("ELF binary named like a gif", Upload((b"\x7fELF" + rng.randbytes(300),), filename="cat.gif")),
        ("utf-8 text named like a webp", Upload(("这不是图片".encode(),), filename="猫.webp")),
        ("jpeg magic then nothing", Upload((b"\xff\xd8\xff",),)),
        ("png magic then nothing", Upload((b"\x89PNG\r\n\x1a\n",),)),
        ("webp header then noise", Upload((b"RIFF\x00\x01\x00\x00WEBPVP8 " + rng.randbytes(500),),)),
        ("tiff header then noise", Upload((b"II*\x00" + rng.randbytes(500),),)),
        ("mixed multi-image request", Upload((jpegs[3], b"not an image", pngs[0], jpegs[4][:300], b""),)),
        ("33 images, over the per-request limit", Upload(tuple(jpegs[:1]) * 33)),
    ]
    return cases


@st.composite
def mutated_uploads(draw, originals: list[bytes]) -> Upload:
    """A real image, mangled one of several ways, sent one of several ways."""
    data = draw(st.sampled_from(originals))
    how = draw(st.sampled_from(["flip", "truncate", "splice", "overwrite", "random", "duplicate", "as_is"]))
    if how == "flip":
        data = flip_bits(data, draw(st.lists(st.integers(0, len(data) * 8), min_size=1, max_size=40)))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=512)) + data[at:]
    elif how == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data = data[:at] + chunk + data[at + len(chunk):]
    elif how == "random":
        data = draw(st.binary(max_size=2048))
    elif how == "duplicate":
        data = data + data[: draw(st.integers(0, len(data)))]
    multipart = draw(st.booleans())
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    filename = draw(st.sampled_from(["photo.jpg", "x.png", "", "../../etc/passwd", "a" * 300, "图片.gif"]))
    return Upload((data,), multipart=multipart, filename=filename, content_type=content_type)


MIXED_REQUEST_CODES = ["ok", "unsupported_media_type", "ok", "corrupt_image", "empty_image"]


def assert_json_answer(response: httpx.Response, case: str) -> None:
    """A 2xx with predictions for every image (or each image's own error), or a 4xx in the error shape."""
    assert response.status_code < 500, f"{case}: {response.status_code} {response.text[:300]}"
    body = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, f"{case}: {body}"
        assert body["error"]["message"], case
    elif "results" in body:
        for entry in body["results"]:
            assert "predictions" in entry or set(entry["error"]) == {"code", "message"}, f"{case}: {entry}"
    else:
        assert len(body["predictions"]) == 3, case


def send_cases(client: httpx.Client, url: str, cases: list[tuple[str, Upload]]) -> Counter:
    """Each named case answered cleanly: valid odd images classified, the mixed request answered
    image by image. The statuses, counted."""
    sent = Counter()
    for name, upload in cases:
        response = send(client, url, upload)
        assert_json_answer(response, name)
        sent[response.status_code] += 1
        if name.startswith("valid"):
            assert response.status_code == 200, f"{name}: {response.text}"
        if name == "mixed multi-image request":
            codes = [e.get("error", {}).get("code", "ok") for e in response.json()["results"]]
            assert codes == MIXED_REQUEST_CODES
    return sent


def send_mutations(client: httpx.Client, url: str, originals: list[bytes], count: int) -> Counter:
    """`count` of Hypothesis' mutations of the originals (the same ones on every run), each answered
    cleanly. The statuses, counted."""
    sent = Counter()

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutated_uploads(originals))
    def mangled_upload_is_answered_cleanly(upload):
        response = send(client, url, upload)
        assert_json_answer(response, repr(upload)[:300])
        sent[response.status_code] += 1

    mangled_upload_is_answered_cleanly()
    return sent

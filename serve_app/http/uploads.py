"""What a request uploads: the body (bounded in size), its images (multipart `file` parts or one
raw image/* body), and the `top_k` parameter. Every refusal is a ServiceError."""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request

from serve_app.errors import (
    InvalidParameterError,
    MalformedRequestError,
    NoFileError,
    TooManyImagesError,
    UnsupportedMediaTypeError,
    UploadTooLargeError,
)
from serve_app.settings import IngressSettings
from serve_app.wire import NUM_CLASSES

RAW_BODY_TYPES = ("application/octet-stream",)
MAX_TOP_K = NUM_CLASSES
MAX_FIELDS = 1000  # parts of a multipart body that are not files
# What plain_multipart_files reads; anything else is Starlette's parser's (quoted or odd boundaries,
# other parameters, filename* or escapes, parts without a filename).
_MULTIPART_TYPE = re.compile(r"multipart/form-data;\s*boundary=([0-9A-Za-z'()+_,\-./:=?]{1,70})", re.IGNORECASE)
_FILE_DISPOSITION = re.compile(r'form-data;\s*name="([\x20-\x21\x23-\x5b\x5d-\x7e]*)";\s*'
                               r'filename="([\x20-\x21\x23-\x5b\x5d-\x7e]+)"', re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


def parse_top_k(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw!r}") from None
    if not 1 <= value <= MAX_TOP_K:
        raise InvalidParameterError(f"top_k must be from 1 to {MAX_TOP_K}, got {value}")
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = UploadTooLargeError(f"the upload is larger than the limit of {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_multipart(request: Request, body: bytes) -> list[Upload]:
    """The `file` parts of a multipart body: the plain shape every client sends is split here at once
    (plain_multipart_files); anything else goes through Starlette's full parser."""
    plain = plain_multipart_files(request.headers.get("content-type", ""), body)
    if plain is not None:
        if not plain:
            raise NoFileError("the multipart request has no `file` field")
        return plain

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=100_000, max_fields=MAX_FIELDS)
    except Exception as exc:
        raise MalformedRequestError(f"the multipart body cannot be parsed: {exc}") from None
    try:  # each part is a spooled temporary file: closed here, not whenever the collector runs
        parts = form.getlist("file")
        if not parts:
            raise NoFileError("the multipart request has no `file` field")
        uploads = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise NoFileError("the `file` field must be a file upload, not a text value")
            uploads.append(Upload(part.filename, await part.read()))
        return uploads
    finally:
        await form.close()


def plain_multipart_files(content_type: str, body: bytes) -> list[Upload] | None:
    """The `file` parts of a multipart body in the plain shape browsers, curl and HTTP libraries send
    (no preamble or epilogue, CRLF line ends, each part a Content-Disposition with an ASCII name and
    filename and at most a Content-Type), found by searching for the delimiters: Starlette's parser
    writes every part into a temporary file first. None for any other shape: what this does not read
    exactly as Starlette's parser does is left to it (tests/test_multipart.py)."""
    match = _MULTIPART_TYPE.fullmatch(content_type)
    if match is None:
        return None
    opening = b"--" + match.group(1).encode() + b"\r\n"
    delimiter = b"\r\n--" + match.group(1).encode()
    closing = body.rfind(delimiter + b"--")
    if not body.startswith(opening) or closing < 0 or body[closing + len(delimiter) + 2:] not in (b"", b"\r\n"):
        return None
    uploads, start = [], len(opening)
    for _ in range(MAX_FIELDS):
        end = body.find(delimiter, start)  # the part's end: every delimiter is one, so none hides in data
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end < 0:
            return None
        disposition = _file_disposition(body[start:head_end])
        if disposition is None:
            return None
        if disposition[0] == "file":
            uploads.append(Upload(disposition[1], body[head_end + 4 : end]))
        if end == closing:
            return uploads
        start = end + len(delimiter)
        if body[start : start + 2] != b"\r\n":  # padding after a delimiter, or one that goes on
            return None
        start += 2
    return None


def _file_disposition(head: bytes) -> tuple[str, str] | None:
    """A plain part's (name, filename), from headers that are a Content-Disposition with both and at
    most a Content-Type; None for any other headers."""
    headers = [line.partition(b":") for line in head.split(b"\r\n")]
    names = sorted(name.lower() for name, _, _ in headers)
    if names not in ([b"content-disposition"], [b"content-disposition", b"content-type"]):
        return None
    if not all(colon and value.isascii() for _, colon, value in headers):
        return None
    value = next(value for name, _, value in headers if name.lower() == b"content-disposition")
    match = _FILE_DISPOSITION.fullmatch(value.decode("ascii").strip())
    return (match.group(1), match.group(2)) if match else None


async def read_uploads(request: Request, settings: IngressSettings) -> list[Upload]:
    """The images of a request: multipart `file` parts, or one raw image/* body."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        uploads = await parse_multipart(request, await read_body(request, settings.max_upload_bytes))
    elif media_type.startswith("image/") or media_type in RAW_BODY_TYPES:
        body = await read_body(request, settings.max_upload_bytes)
        if not body:
            raise NoFileError("the request body is empty: send an image")
        uploads = [Upload(None, body)]
    elif not media_type and not await read_body(request, settings.max_upload_bytes):
        raise NoFileError("no file: send multipart/form-data with a `file` field, or a raw image/* body")
    else:
        raise UnsupportedMediaTypeError(
            f"content type {media_type or '(none)'} is not accepted: send multipart/form-data "
            "with a `file` field, or a raw body with an image/* content type"
        )
    if len(uploads) > settings.max_images_per_request:
        raise TooManyImagesError(
            f"{len(uploads)} images in one request; the limit is {settings.max_images_per_request}"
        )
    return uploads

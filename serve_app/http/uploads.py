"""What a request uploads: the body (bounded in size), its images (multipart `file` parts or one
raw image/* body), and the `top_k` parameter. Every refusal is a ServiceError."""

from __future__ import annotations

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
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=100_000, max_fields=1000)
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

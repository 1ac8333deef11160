"""The multipart fast path reads every body it takes exactly as Starlette's full parser does, and
leaves every other shape to it. Hypothesis builds bodies with data full of CRLFs, dashes and pieces of
the boundary, and with the shapes the fast path must decline."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from serve_app.http.uploads import Upload, plain_multipart_files

pytestmark = pytest.mark.fast

BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
FILENAME_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')


def starlettes_files(content_type: str, body: bytes) -> list[Upload] | Exception:
    """What Starlette's own parser makes of the body's `file` parts (or the error it raises)."""
    async def stream():
        yield body

    async def parse():
        form = await MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=100_000).parse()
        try:
            return [Upload(part.filename, await part.read()) for part in form.getlist("file") if isinstance(part, UploadFile)]
        finally:
            await form.close()

    try:
        return asyncio.run(parse())
    except Exception as error:
        return error


@st.composite
def multipart_bodies(draw):
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=40))
    pieces = [b"\r\n", b"--", boundary.encode(), b"--" + boundary.encode(), b"\r\n--" + boundary.encode() + b"x"]
    data = st.lists(st.one_of(st.binary(max_size=20), st.sampled_from(pieces)), max_size=8).map(b"".join)
    parts = draw(st.lists(st.tuples(st.sampled_from(["file", "File", "other"]), st.text(FILENAME_CHARS, min_size=1, max_size=12),
                                    st.sampled_from([None, "image/jpeg", "application/octet-stream"]), data,
                                    st.sampled_from(["Content-Disposition", "content-disposition"])),
                          min_size=1, max_size=4))
    body = b""
    for name, filename, part_type, payload, header in parts:
        body += f'--{boundary}\r\n{header}: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        if part_type:
            body += f"Content-Type: {part_type}\r\n".encode()
        body += b"\r\n" + payload + b"\r\n"
    body += f"--{boundary}--".encode() + draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue"]))
    return f"multipart/form-data; boundary={boundary}", draw(st.sampled_from([b"", b"preamble\r\n"])) + body


@settings(max_examples=400, deadline=None)
@given(multipart_bodies())
def test_whatever_the_fast_path_reads_it_reads_as_starlette_does(case):
    content_type, body = case
    plain = plain_multipart_files(content_type, body)
    if plain is not None:
        assert plain == starlettes_files(content_type, body)


def test_the_shapes_clients_send_take_the_fast_path(shared_images):
    photos = [path.read_bytes() for path in shared_images[:3]]
    body = b"".join(f'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="p{i}.jpg"\r\n'
                    f"Content-Type: image/jpeg\r\n\r\n".encode() + photo + b"\r\n" for i, photo in enumerate(photos))
    body += b"--b0undary--\r\n"
    plain = plain_multipart_files("multipart/form-data; boundary=b0undary", body)
    assert plain == [Upload(f"p{i}.jpg", photo) for i, photo in enumerate(photos)]
    assert plain == starlettes_files("multipart/form-data; boundary=b0undary", body)


@pytest.mark.parametrize("content_type, body", [
    ('multipart/form-data; boundary="quoted"', b'--quoted\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx\r\n--quoted--'),
    ("multipart/form-data; boundary=b; charset=utf-8", b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx\r\n--b--'),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\ntext\r\n--b--'),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="file"; filename*=UTF-8\'\'a\r\n\r\nx\r\n--b--'),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n'
                                        b"Content-Transfer-Encoding: base64\r\n\r\neA==\r\n--b--"),
    ("multipart/form-data; boundary=b", b'--b  \r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx\r\n--b--'),
    ("multipart/form-data; boundary=b", b'--b\nContent-Disposition: form-data; name="file"; filename="a"\n\nx\n--b--'),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx'),
], ids=["quoted boundary", "another parameter", "a text field", "filename*", "a transfer encoding",
        "padding after the delimiter", "bare LF line ends", "no closing delimiter"])
def test_other_shapes_are_left_to_starlettes_parser(content_type, body):
    assert plain_multipart_files(content_type, body) is None

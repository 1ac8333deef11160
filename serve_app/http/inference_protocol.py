"""The Open Inference Protocol (KServe v2, as Triton speaks it) over HTTP: requests in, answers out.

Pure parsing and encoding, no Starlette and no Ray: handlers.py answers the /v2 routes with it. Supported:
JSON bodies and Triton's binary tensor extension (a JSON header of `Inference-Header-Content-Length`
bytes followed by the tensors' raw bytes, what `tritonclient` sends by default), and the
classification extension (an output's `classification: k` parameter answers the top k as
"score:index:label" strings).

The model `resnet18` takes one of two inputs: `images`, BYTES [N] of encoded images (JPEG, PNG, ...;
in a JSON body each is a base64 string), or `pixels`, UINT8 [N, 224, 224, 3] for callers that
already resized and cropped (torchvision's geometry, RGB). It answers `probabilities`, FP32
[N, 1000], or with the classification extension BYTES [N, k].
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np

from serve_app.errors import (
    InvalidParameterError,
    MalformedRequestError,
    TooManyImagesError,
)
from serve_app.imaging import CROP_SHAPE
from serve_app.labels import Label
from serve_app.settings import BACKENDS
from serve_app.wire import NUM_CLASSES, TopK

PIXELS_SHAPE = "[N, " + ", ".join(map(str, CROP_SHAPE)) + "]"  # as messages and the OpenAPI document say it

V2_PREFIX = "/v2"  # every route of the protocol starts here
MODEL_NAME = "resnet18"
MODEL_VERSION = "1"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
PROBABILITIES_OUTPUT = "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["classification", "binary_tensor_data"]


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes] | None  # from the BYTES input
    pixels: np.ndarray | None  # from the UINT8 input
    classification: int | None  # k, when the output asks for the classification extension
    binary_output: bool

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.pixels)



def speaks_inference_protocol(path: str) -> bool:
    """Whether errors on `path` take the Open Inference Protocol's shape, {"error": "<message>"}."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")

def server_metadata(version: str) -> dict:
    return {"name": "serve-app", "version": version, "extensions": EXTENSIONS}


def model_metadata(backend: str) -> dict:
    """The model's metadata, with the protocol's name for what runs it (the backend registry's)."""
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": BACKENDS[backend].platform if backend in BACKENDS else backend,
        "inputs": [
            {"name": IMAGES_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, *CROP_SHAPE]},
        ],
        "outputs": [{"name": PROBABILITIES_OUTPUT, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
    }


def parse_infer_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    header, binary = _split(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidParameterError(f"send exactly one input: `{IMAGES_INPUT}` (BYTES) or `{PIXELS_INPUT}` (UINT8)")
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list):
        raise InvalidParameterError("the input's `shape` must be a list of non-negative integers")
    raw = _tensor_bytes(tensor, binary)
    return checked_request(tensor.get("name"), tensor.get("datatype"), shape,
                           lambda: _bytes_elements(tensor, raw), lambda: _uint8_tensor(tensor, raw, shape),
                           _request_id(header), *_requested_output(header), max_images=max_images)


def checked_request(name, datatype, shape: list, images_of: Callable[[], list[bytes]],
                    pixels_of: Callable[[], np.ndarray], request_id: str | None, classification: int | None,
                    binary_output: bool, *, max_images: int) -> InferRequest:
    """The one input, checked the same way whatever carried it (a JSON body, binary data, a gRPC
    message): its name, type and shape, then its contents (`images_of` or `pixels_of`)."""
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidParameterError("the input's `shape` must be a list of non-negative integers")
    if name == IMAGES_INPUT and datatype == "BYTES":
        images, pixels = images_of(), None
        if len(shape) != 1 or shape[0] != len(images):
            raise InvalidParameterError(f"`{IMAGES_INPUT}` has shape [N] with one encoded image per row; "
                                        f"got shape {shape} for {len(images)} elements")
    elif name == PIXELS_INPUT and datatype == "UINT8":
        if len(shape) != 4 or tuple(shape[1:]) != CROP_SHAPE:
            raise InvalidParameterError(f"`{PIXELS_INPUT}` has shape {PIXELS_SHAPE}; got {shape}")
        pixels, images = pixels_of(), None
    else:
        raise InvalidParameterError(f"unknown input {name!r} of type {datatype!r}: send `{IMAGES_INPUT}` "
                                    f"(BYTES) or `{PIXELS_INPUT}` (UINT8)")
    request = InferRequest(request_id, images, pixels, classification, binary_output)
    if len(request) == 0:
        raise InvalidParameterError("the input holds no images")
    if len(request) > max_images:
        raise TooManyImagesError(f"{len(request)} images in one request; the limit is {max_images}")
    return request


def checked_classification(k) -> int | None:
    """The classification extension's k (None: not asked for), an integer from 1 to NUM_CLASSES."""
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= NUM_CLASSES):
        raise InvalidParameterError(f"classification must be an integer from 1 to {NUM_CLASSES}, got {k!r}")
    return k


def output_tensor(request: InferRequest, answer: TopK, labels: list[Label]) -> tuple[dict, list, bytes]:
    """The `probabilities` output: its name, datatype and shape, its values, and their raw bytes
    (FP32 little-endian, or BYTES elements each behind its 4-byte little-endian length)."""
    if request.classification:
        rows = [[f"{score:f}:{index}:{labels[index].label}" for index, score in zip(indices, scores)]
                for indices, scores in zip(answer.indices, answer.scores)]
        values = [item for row in rows for item in row]
        raw = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
        return {"name": PROBABILITIES_OUTPUT, "datatype": "BYTES", "shape": [len(rows), len(rows[0])]}, values, raw
    probabilities = np.zeros((len(answer), NUM_CLASSES), np.float32)
    np.put_along_axis(probabilities, answer.indices.astype(np.int64), answer.scores, axis=1)
    output = {"name": PROBABILITIES_OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
    return output, probabilities.ravel().tolist(), probabilities.tobytes()


def infer_response(request: InferRequest, answer: TopK, labels: list[Label]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers, binary when the request asked for binary outputs."""
    output, values, raw = output_tensor(request, answer, labels)
    header = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION, "outputs": [output]}
    if request.id is not None:
        header["id"] = request.id
    if not request.binary_output:
        output["data"] = values
        return json.dumps(header).encode(), {"content-type": "application/json"}
    output["parameters"] = {"binary_data_size": len(raw)}
    encoded = json.dumps(header).encode()
    return encoded + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(encoded))}


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header and the binary tensor data after it (Triton's binary extension)."""
    if header_length is None:
        length = len(body)
    elif header_length.isdigit() and int(header_length) <= len(body):
        length = int(header_length)
    else:
        raise MalformedRequestError(f"{HEADER_LENGTH} must be the JSON header's length in bytes, got {header_length!r}")
    try:
        header = json.loads(body[:length])
    except ValueError as exc:
        raise MalformedRequestError(f"the request's JSON cannot be parsed: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedRequestError("the request's JSON must be an object")
    return header, body[length:]


def _tensor_bytes(tensor: dict, binary: bytes) -> bytes | None:
    """The input's raw bytes when it came as binary data (it is the only input), else None."""
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or size != len(binary):
        raise MalformedRequestError(f"binary_data_size is {size!r} but {len(binary)} bytes follow the JSON header")
    return binary


def _bytes_elements(tensor: dict, raw: bytes | None) -> list[bytes]:
    if raw is not None:
        return bytes_elements(raw)
    data = tensor.get("data")
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise InvalidParameterError(f"`{IMAGES_INPUT}` data must be a list of base64 strings (or binary data)")
    try:
        return [base64.b64decode(item, validate=True) for item in data]
    except binascii.Error as exc:
        raise InvalidParameterError(f"`{IMAGES_INPUT}` holds a string that is not base64: {exc}") from None


def bytes_elements(raw: bytes) -> list[bytes]:
    """A BYTES tensor's elements from its raw form: each behind its 4-byte little-endian length."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise MalformedRequestError("a BYTES element's 4-byte length is cut off")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise MalformedRequestError("a BYTES element is shorter than its length says")
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def uint8_elements(raw: bytes, shape: list[int]) -> np.ndarray:
    """A UINT8 tensor of `shape` from its raw bytes."""
    expected = int(np.prod(shape))
    if len(raw) != expected:
        raise InvalidParameterError(f"shape {shape} needs {expected} bytes of UINT8, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _uint8_tensor(tensor: dict, raw: bytes | None, shape: list[int]) -> np.ndarray:
    if raw is not None:
        return uint8_elements(raw, shape)
    expected = int(np.prod(shape))
    data = np.asarray(tensor.get("data"), dtype=object).ravel() if isinstance(tensor.get("data"), list) else None
    if data is None or data.size != expected:
        raise InvalidParameterError(f"shape {shape} needs {expected} UINT8 values in `data`")
    try:
        values = data.astype(np.int64)
    except (TypeError, ValueError):
        raise InvalidParameterError("UINT8 `data` must hold integers from 0 to 255") from None
    if values.min() < 0 or values.max() > 255:
        raise InvalidParameterError("UINT8 `data` must hold integers from 0 to 255")
    return values.astype(np.uint8).reshape(shape)


def _request_id(header: dict) -> str | None:
    identifier = header.get("id")
    return identifier if isinstance(identifier, str) else None


def _requested_output(header: dict) -> tuple[int | None, bool]:
    """(classification k or None, binary output) from the request's `outputs`."""
    outputs = header.get("outputs")
    binary_default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    if outputs is None:
        return None, binary_default
    only_ours = isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], dict)
    if not only_ours or outputs[0].get("name") != PROBABILITIES_OUTPUT:
        raise InvalidParameterError(f"the only output is `{PROBABILITIES_OUTPUT}`")
    parameters = outputs[0].get("parameters") or {}
    return checked_classification(parameters.get("classification")), bool(parameters.get("binary_data", binary_default))

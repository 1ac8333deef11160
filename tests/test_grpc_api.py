"""The gRPC contract in process: GrpcInference (what the ingress answers inference.GRPCInferenceService
with) over the real model client and the fake model handle, with tritonclient's own messages. Each
refusal's status code matches its HTTP status (errors.py), and one bad request fails alone while
the service goes on serving. tests/test_service.py calls the running service with tritonclient.grpc
itself."""

from __future__ import annotations

import asyncio
import struct

import grpc
import numpy as np
import pytest
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from tritonclient.grpc import service_pb2 as pb

from serve_app.errors import ServiceError
from serve_app.http.handlers import API_VERSION
from serve_app.http.inference_grpc import HTTP_TWINS, GrpcInference
from serve_app.http.model_client import RayModelClient
from serve_app.http.result_cache import with_result_cache
from serve_app.http.routes import is_open
from serve_app.imaging import load_image
from serve_app.labels import imagenet_labels
from serve_app.launch.harness import load_config
from serve_app.settings import AppSettings
from tests.fakes import FakeModelHandle, expected_class
from tests.images import truncated
from tests.test_api import backend_failure

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`

KEY = "grpc-key-5e1f"


class Context:
    """What Serve hands a gRPC method (RayServegRPCContext): the caller's metadata, and the status
    code and details the method sets."""

    def __init__(self, metadata: dict[str, str] | None = None):
        self._metadata = list((metadata or {}).items())
        self.status, self.details = None, None
        self.trailing_metadata: list[tuple[str, str]] = []

    def invocation_metadata(self):
        return self._metadata

    def set_code(self, code):
        self.status = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, metadata):
        self.trailing_metadata = list(metadata)


def service(handle=None, result_cache: bool = False, **args) -> tuple[GrpcInference, FakeModelHandle]:
    settings = AppSettings.model_validate(args)
    handle = handle or FakeModelHandle()
    model = RayModelClient(handle, settings)
    if result_cache:
        model = with_result_cache(model, settings)
    return GrpcInference(model, settings, API_VERSION), handle


def call(grpc_service: GrpcInference, rpc: str, request, metadata=None):
    context = Context(metadata)
    return asyncio.run(getattr(grpc_service, rpc)(request, context)), context


def bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def infer_request(photos: list[bytes], classification: int | None = None, model: str = "resnet18"):
    request = pb.ModelInferRequest(model_name=model, id="r7")
    request.inputs.add(name="images", datatype="BYTES", shape=[len(photos)])
    request.raw_input_contents.append(bytes_tensor(photos))
    if classification is not None:
        output = request.outputs.add(name="probabilities")
        output.parameters["classification"].int64_param = classification
    return request


def test_model_infer_answers_probabilities_for_encoded_images_in_one_model_call(shared_images):
    grpc_service, handle = service()
    photos = [p.read_bytes() for p in shared_images[:3]]
    answer, context = call(grpc_service, "ModelInfer", infer_request(photos))
    assert context.status is None, context.details
    [output] = answer.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [3, 1000])
    probabilities = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(3, 1000)
    assert list(probabilities.argmax(1)) == [expected_class(load_image(p, max_pixels=10**9)) for p in photos]
    assert answer.id == "r7" and answer.model_name == "resnet18" and len(handle.calls) == 1


def test_a_repeated_image_is_a_hit_said_in_trailing_metadata_with_the_same_probabilities(shared_images):
    grpc_service, handle = service(result_cache=True)
    photos = [p.read_bytes() for p in shared_images[:2]]
    first, context = call(grpc_service, "ModelInfer", infer_request(photos))
    assert context.trailing_metadata == [("x-cache", "miss")]
    again, context = call(grpc_service, "ModelInfer", infer_request(photos))
    assert context.status is None and context.trailing_metadata == [("x-cache", "hit")]
    assert again.raw_output_contents == first.raw_output_contents and len(handle.calls) == 1
    ranked, context = call(grpc_service, "ModelInfer", infer_request(photos[:1], classification=3))
    assert context.trailing_metadata == [("x-cache", "hit")] and len(handle.calls) == 1


def test_the_classification_extension_answers_score_index_label_strings(shared_images):
    grpc_service, _ = service()
    photo = shared_images[0].read_bytes()
    answer, context = call(grpc_service, "ModelInfer", infer_request([photo], classification=2))
    assert context.status is None, context.details
    assert answer.outputs[0].datatype == "BYTES" and list(answer.outputs[0].shape) == [1, 2]
    raw, rows, offset = answer.raw_output_contents[0], [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        rows.append(raw[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    top = expected_class(load_image(photo, max_pixels=10**9))
    assert rows[0].split(":")[1:] == [str(top), imagenet_labels()[top].label]


def test_uint8_pixels_travel_without_decoding_as_raw_or_typed_contents(shared_images):
    pixels = np.stack([load_image(p.read_bytes(), max_pixels=10**9) for p in shared_images[:2]])
    for typed in (False, True):
        grpc_service, handle = service()
        request = pb.ModelInferRequest(model_name="resnet18")
        tensor = request.inputs.add(name="pixels", datatype="UINT8", shape=list(pixels.shape))
        if typed:
            tensor.contents.uint_contents.extend(pixels.ravel().tolist())
        else:
            request.raw_input_contents.append(pixels.tobytes())
        answer, context = call(grpc_service, "ModelInfer", request)
        assert context.status is None, context.details
        probabilities = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(2, 1000)
        assert list(probabilities.argmax(1)) == [expected_class(p) for p in pixels]
        assert np.array_equal(np.stack(handle.requests[0].images), pixels)


def test_health_and_metadata(shared_images):
    grpc_service, _ = service()
    assert call(grpc_service, "ServerLive", pb.ServerLiveRequest())[0].live
    assert call(grpc_service, "ServerReady", pb.ServerReadyRequest())[0].ready
    assert call(grpc_service, "ModelReady", pb.ModelReadyRequest(name="resnet18"))[0].ready
    metadata = call(grpc_service, "ServerMetadata", pb.ServerMetadataRequest())[0]
    assert metadata.version == API_VERSION and "classification" in metadata.extensions
    model = call(grpc_service, "ModelMetadata", pb.ModelMetadataRequest(name="resnet18"))[0]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("images", "BYTES", [-1]), ("pixels", "UINT8", [-1, 224, 224, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("probabilities", "FP32", [-1, 1000])]


def bad_requests(shared_images) -> dict:
    photo = shared_images[0].read_bytes()
    two_inputs = infer_request([photo])
    two_inputs.inputs.add(name="images", datatype="BYTES", shape=[1])
    wrong_pixels = pb.ModelInferRequest(model_name="resnet18")
    wrong_pixels.inputs.add(name="pixels", datatype="UINT8", shape=[1, 2, 2, 3])
    wrong_pixels.raw_input_contents.append(b"\0" * 12)
    cut = infer_request([photo])
    cut.raw_input_contents[0] = cut.raw_input_contents[0][:2]
    return {
        "a corrupt image": (infer_request([truncated(shared_images[0])]), grpc.StatusCode.INVALID_ARGUMENT, "image 0"),
        "not an image": (infer_request([b"hello"]), grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
        "two inputs": (two_inputs, grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
        "pixels of the wrong shape": (wrong_pixels, grpc.StatusCode.INVALID_ARGUMENT, "224, 224, 3"),
        "a BYTES length cut off": (cut, grpc.StatusCode.INVALID_ARGUMENT, "4-byte length"),
        "classification out of range": (infer_request([photo], classification=0), grpc.StatusCode.INVALID_ARGUMENT,
                                         "classification"),
        "33 images": (infer_request([photo] * 33), grpc.StatusCode.INVALID_ARGUMENT, "limit is 32"),
        "another model": (infer_request([photo], model="resnet50"), grpc.StatusCode.NOT_FOUND, "resnet50"),
        "a message over max_upload_bytes": (infer_request([photo] * 2), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger"),
    }


@pytest.mark.parametrize("case", ["a corrupt image", "not an image", "two inputs", "pixels of the wrong shape",
                                  "a BYTES length cut off", "classification out of range", "33 images",
                                  "another model", "a message over max_upload_bytes"])
def test_a_bad_request_gets_its_status_code_and_says_what_was_wrong(shared_images, case):
    request, status, says = bad_requests(shared_images)[case]
    limit = len(shared_images[0].read_bytes()) + 1000 if case == "a message over max_upload_bytes" else 10 * 2**20
    grpc_service, _ = service(ingress={"max_upload_bytes": limit})
    answer, context = call(grpc_service, "ModelInfer", request)
    assert context.status == status and says in context.details, context.details
    assert list(answer.outputs) == [], "a refusal answers the empty message"
    after, context = call(grpc_service, "ModelInfer", infer_request([shared_images[0].read_bytes()]))
    assert context.status is None, "the service goes on serving"


@pytest.mark.parametrize("failure, status", [
    (BackPressureError(num_queued_requests=9, max_queued_requests=8), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (backend_failure(), grpc.StatusCode.INTERNAL),
])
def test_a_full_model_queue_and_a_failed_forward_pass_have_their_codes(shared_images, failure, status):
    grpc_service, _ = service(FakeModelHandle([failure]))
    _, context = call(grpc_service, "ModelInfer", infer_request([shared_images[0].read_bytes()]))
    assert context.status == status and context.details
    _, context = call(grpc_service, "ModelInfer", infer_request([shared_images[0].read_bytes()]))
    assert context.status is None


def test_no_model_replica_is_unavailable_and_a_slow_model_is_deadline_exceeded(shared_images):
    grpc_service, _ = service(FakeModelHandle([RayActorError()] * 4))
    _, context = call(grpc_service, "ModelInfer", infer_request([shared_images[0].read_bytes()]))
    assert context.status == grpc.StatusCode.UNAVAILABLE and "retry" in context.details
    grpc_service, _ = service(FakeModelHandle(delay_s=5), ingress={"request_timeout_s": 0.3})
    _, context = call(grpc_service, "ModelInfer", infer_request([shared_images[0].read_bytes()]))
    assert context.status == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_bug_is_internal_and_logged(shared_images, caplog):
    class Broken(FakeModelHandle):
        async def _info(self):
            raise KeyError("a bug")

    grpc_service, _ = service(Broken())
    _, context = call(grpc_service, "ModelMetadata", pb.ModelMetadataRequest(name="resnet18"))
    assert context.status == grpc.StatusCode.INTERNAL
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


def test_api_keys_travel_as_metadata_and_guard_what_http_guards(shared_images):
    grpc_service, _ = service(auth={"api_keys": [KEY]})
    requests = {"ServerLive": pb.ServerLiveRequest(), "ServerReady": pb.ServerReadyRequest(),
                "ModelReady": pb.ModelReadyRequest(name="resnet18"), "ServerMetadata": pb.ServerMetadataRequest(),
                "ModelMetadata": pb.ModelMetadataRequest(name="resnet18"),
                "ModelInfer": infer_request([shared_images[0].read_bytes()])}
    assert requests.keys() == HTTP_TWINS.keys()
    for rpc, request in requests.items():
        _, anonymous = call(grpc_service, rpc, request)
        _, wrong = call(grpc_service, rpc, request, {"authorization": "Bearer nope"})
        _, keyed = call(grpc_service, rpc, request, {"authorization": f"Bearer {KEY}"})
        expected = None if is_open(HTTP_TWINS[rpc]) else grpc.StatusCode.UNAUTHENTICATED
        assert (anonymous.status, wrong.status, keyed.status) == (expected, expected, None), rpc
    assert not is_open(HTTP_TWINS["ModelInfer"]) and is_open(HTTP_TWINS["ServerLive"])


def test_every_error_has_a_grpc_status_code():
    from serve_app.http.openapi import error_types

    for kind in [*error_types(), ServiceError]:
        assert hasattr(grpc.StatusCode, kind.grpc_status), kind


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_both_configs_serve_the_grpc_service_through_the_ingress(name):
    from serve_app.http.inference_grpc import SERVICER_FUNCTION

    assert load_config(name)["grpc_options"] == {"port": 9000, "grpc_servicer_functions": [SERVICER_FUNCTION]}

"""The HTTP contract, in process: the real Starlette app and model client over a fake model handle.

Every status of the README's error table but 408 (TestClient hands the app the body all at once;
test_hardening sends a slow upload over a socket), CORS, API keys, the request log and metrics,
and what travels to the model (one call per request, uint8 pixels or plain JPEGs, only the top k
back). The same contract over real Ray Serve is covered, more briefly, by test_service and
test_hardening.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.testclient import TestClient

from serve_app.http.inference_protocol import speaks_inference_protocol
from serve_app.http.model_client import RayModelClient
from serve_app.http.openapi import error_types
from serve_app.http.routes import ENDPOINTS, OPEN_PATHS, ROUTE_PATHS
from serve_app.imaging import CROP_SHAPE, load_image
from serve_app.labels import imagenet_labels
from serve_app.settings import AppSettings
from tests.fakes import FakeModelHandle, client_for, expected_class
from tests.images import encode, exif_rotated_jpeg, png_header_only, truncated

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`

README = Path(__file__).resolve().parents[1] / "README.md"
KEYS = ["first-key-4f9d", "second-key-a71c"]
ORIGIN = "http://dashboard.example"


def upload(path: Path, name: str | None = None):
    return ("file", (name or path.name, path.read_bytes(), "image/jpeg"))


@pytest.fixture
def api():
    client, handle, metrics = client_for()
    with client:
        yield client, handle, metrics


def test_one_image_is_one_call_with_uint8_pixels_and_only_the_top_k_comes_back(api, shared_images):
    client, handle, metrics = api
    answer = client.post("/v1/classify", files=[upload(shared_images[0])], params={"top_k": 5})
    assert answer.status_code == 200, answer.text
    [call] = handle.requests
    [pixels] = call.images
    assert pixels.dtype == np.uint8 and pixels.shape == CROP_SHAPE and call.k == 5
    expected = expected_class(load_image(shared_images[0].read_bytes(), max_pixels=10**9))
    predictions = answer.json()["predictions"]
    assert len(predictions) == 5 and predictions[0]["index"] == expected and predictions[0]["score"] == pytest.approx(0.9)
    assert answer.json()["model"]["standin"] is True and "STAND-IN" in answer.json()["model"]["notice"]
    assert len(metrics.decode_seconds) == 1 and metrics.requests == {("/v1/classify", "200"): 1}


def test_several_images_travel_as_one_call_and_a_bad_one_fails_alone(api, shared_images):
    client, handle, metrics = api
    files = [upload(shared_images[1]), ("file", ("bad.jpg", truncated(shared_images[2], 0.2), "image/jpeg")),
             upload(shared_images[3])]
    answer = client.post("/v1/classify", files=files, params={"top_k": 2})
    assert answer.status_code == 200, answer.text
    [call] = handle.requests
    kinds = [type(image).__name__ for image in call.images]
    assert kinds == ["ndarray", "CorruptImageError", "ndarray"], "the corrupt image travels as its error only"
    results = answer.json()["results"]
    assert [r["filename"] for r in results] == [shared_images[1].name, "bad.jpg", shared_images[3].name]
    assert results[1]["error"]["code"] == "corrupt_image" and "predictions" not in results[1]
    for result, photo in ((results[0], shared_images[1]), (results[2], shared_images[3])):
        assert len(result["predictions"]) == 2
        assert result["predictions"][0]["index"] == expected_class(load_image(photo.read_bytes(), max_pixels=10**9))
    assert metrics.rejections == {"corrupt_image": 1}


def test_with_decode_on_replica_plain_jpegs_travel_as_bytes_and_others_as_pixels(shared_images):
    client, handle, _ = client_for(model={"decode_on_replica": True})
    rgb = Image.open(shared_images[0]).convert("RGB")
    files = [("file", ("a.png", encode(rgb, "PNG"), "image/png")), upload(shared_images[4]),
             ("file", ("r.jpg", exif_rotated_jpeg(rgb), "image/jpeg")), ("file", ("g.jpg", encode(rgb.convert("L"), "JPEG"), "image/jpeg"))]
    with client:
        answer = client.post("/v1/classify", files=files)
    assert answer.status_code == 200, answer.text
    [call] = handle.requests
    kinds = [type(image).__name__ for image in call.images]
    assert kinds == ["ndarray", "bytes", "ndarray", "bytes"], "PNG and EXIF-rotated decoded here; plain JPEGs sent"
    indices = [r["predictions"][0]["index"] for r in answer.json()["results"]]
    assert indices[1] == expected_class(load_image(shared_images[4].read_bytes(), max_pixels=10**9, draft=False))


def test_predict_keeps_the_original_shape(api, shared_images):
    client, _, _ = api
    answer = client.post("/predict", files=[upload(shared_images[5])])
    assert answer.status_code == 200
    assert len(answer.json()) == 3 and set(answer.json()[0]) == {"label", "score"}
    two = client.post("/predict", files=[upload(shared_images[5]), upload(shared_images[6])])
    assert two.status_code == 400 and two.json()["error"]["code"] == "too_many_images"


def test_labels_and_health(api):
    client, _, _ = api
    labels = client.get("/v1/labels").json()
    assert labels["count"] == 1000 and labels["labels"][1]["label"] == "goldfish" and labels["labels"][1]["label_zh"]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"]["backend"] == "fake"


BAD_REQUESTS = {
    "no file field": (dict(files={"other": ("a.jpg", b"x", "image/jpeg")}), 400, "no_file"),
    "text field named file": (dict(data={"file": "hello"}, files={"x": ("y", b"", "text/plain")}), 400, "no_file"),
    "no body at all": (dict(), 400, "no_file"),
    "empty raw body": (dict(content=b"", headers={"content-type": "image/png"}), 400, "no_file"),
    "empty file": (dict(files={"file": ("a.jpg", b"", "image/jpeg")}), 400, "empty_image"),
    "corrupt image": (dict(files={"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x01" * 64, "image/png")}), 400, "corrupt_image"),
    "top_k not a number": (dict(params={"top_k": "many"}, files={"file": ("a", b"x", "image/jpeg")}), 400, "invalid_parameter"),
    "top_k out of range": (dict(params={"top_k": 1001}, files={"file": ("a", b"x", "image/jpeg")}), 400, "invalid_parameter"),
    "multipart without a boundary": (dict(content=b"--xyz\r\nbroken", headers={"content-type": "multipart/form-data"}), 400, "malformed_request"),
    "33 images": (dict(files=[("file", ("a.jpg", b"x", "image/jpeg"))] * 33), 400, "too_many_images"),
    "over the upload limit": (dict(content=b"\xff\xd8\xff" + b"\0" * (10 * 1024 * 1024), headers={"content-type": "image/jpeg"}), 413, "upload_too_large"),
    "decompression bomb": (dict(files={"file": ("bomb.png", png_header_only(50_000, 50_000), "image/png")}), 413, "image_too_large"),
    "not an image": (dict(files={"file": ("a.jpg", b"%PDF-1.7 not a photo", "image/jpeg")}), 415, "unsupported_media_type"),
    "json body": (dict(json={"image": "base64?"}), 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_their_status_and_code_and_are_counted_and_logged(api, case, caplog):
    client, handle, metrics = api
    kwargs, status, code = BAD_REQUESTS[case]
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        answer = client.post("/v1/classify", **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.json() == {"error": {"code": code, "message": answer.json()["error"]["message"]}}
    assert answer.json()["error"]["message"]
    assert not handle.calls, "nothing reaches the model"
    assert metrics.rejections == {code: 1}
    assert metrics.requests == {("/v1/classify", str(status)): 1}
    [line] = [r.serve_app for r in caplog.records if hasattr(r, "serve_app")]
    assert line["status"] == status and line["error"] == code and line["route"] == "/v1/classify"


def test_a_full_model_queue_is_a_503_with_retry_after(shared_images):
    client, _, _ = client_for(FakeModelHandle([BackPressureError(num_queued_requests=9, max_queued_requests=8)]),
                              ingress={"retry_after_s": 7})
    with client:
        answer = client.post("/v1/classify", files=[upload(shared_images[0])])
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "overloaded"
    assert answer.headers["retry-after"] == "7"


def test_a_dying_replica_is_retried_and_only_persistent_death_is_a_503(shared_images):
    client, handle, _ = client_for(FakeModelHandle([RayActorError(), RayActorError()]))
    with client:
        assert client.post("/v1/classify", files=[upload(shared_images[0])]).status_code == 200
        assert len(handle.calls) == 3
        handle.failures = [RayActorError()] * 4
        several = client.post("/v1/classify", files=[upload(shared_images[0]), upload(shared_images[1])])
    assert several.status_code == 503 and several.json()["error"]["code"] == "model_unavailable"
    assert several.headers["retry-after"] == "1"


def test_a_model_slower_than_the_request_timeout_is_a_504(shared_images):
    client, _, _ = client_for(FakeModelHandle(delay_s=5), ingress={"request_timeout_s": 0.5})
    with client:
        answer = client.post("/v1/classify", files=[upload(shared_images[0])])
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout" and "retry-after" in answer.headers


def backend_failure() -> Exception:
    """What a replica whose forward pass raised sends back: Ray's task error carrying the cause."""
    from ray.exceptions import RayTaskError

    return RayTaskError("Classifier.classify", "Traceback ...", RuntimeError("CUDA out of memory"))


@pytest.mark.parametrize("request_log, logged_statuses", [("errors", [415]), ("all", [200, 415])])
def test_the_request_log_has_failed_requests_or_every_one(shared_images, caplog, request_log, logged_statuses):
    client, _, metrics = client_for(ingress={"request_log": request_log})
    with client, caplog.at_level(logging.INFO, logger="ray.serve"):
        assert client.post("/v1/classify", files=[upload(shared_images[0])]).status_code == 200
        assert client.post("/v1/classify", files={"file": ("x.jpg", b"not an image")}).status_code == 415
    assert [r.serve_app["status"] for r in caplog.records if hasattr(r, "serve_app")] == logged_statuses
    assert metrics.requests == {("/v1/classify", "200"): 1, ("/v1/classify", "415"): 1}, "each counted either way"


def test_a_failed_forward_pass_is_a_500_in_each_routes_shape_and_the_next_requests_succeed(shared_images, caplog):
    client, handle, metrics = client_for(FakeModelHandle([backend_failure(), backend_failure()]))
    photo = shared_images[0].read_bytes()
    infer = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                         "data": [base64.b64encode(photo).decode()]}]}
    with client, caplog.at_level(logging.INFO, logger="ray.serve"):
        failed = client.post("/v1/classify", files=[upload(shared_images[0])])
        failed_v2 = client.post("/v2/models/resnet18/infer", json=infer)
        after = [client.post("/v1/classify", files=[upload(p)]) for p in shared_images[1:4]]
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "inference_failed" and "RuntimeError" in failed.json()["error"]["message"]
    assert failed_v2.status_code == 500 and set(failed_v2.json()) == {"error"}, "the protocol's own shape"
    assert isinstance(failed_v2.json()["error"], str) and "RuntimeError" in failed_v2.json()["error"]
    assert [a.status_code for a in after] == [200] * 3, "only the failed batch's requests fail"
    assert metrics.rejections == {"inference_failed": 2}
    assert metrics.requests[("/v1/classify", "500")] == 1 and metrics.requests[("/v1/classify", "200")] == 3
    logged = [r.serve_app for r in caplog.records if hasattr(r, "serve_app")]
    assert [line["error"] for line in logged[:2]] == ["inference_failed", "inference_failed"]


def test_a_bug_anywhere_in_a_handler_is_a_json_500_counted_and_logged_with_the_request_id(shared_images, caplog):
    class Broken(FakeModelHandle):
        async def _info(self):
            raise KeyError("a bug, not a model failure")

    client, _, metrics = client_for(Broken())
    with client, caplog.at_level(logging.INFO, logger="ray.serve"):
        v1 = client.post("/v1/classify", files=[upload(shared_images[0])], headers={"X-Request-ID": "req-42"})
        v2 = client.get("/v2/models/resnet18")
    assert v1.status_code == 500 and v1.json()["error"]["code"] == "internal_error"
    assert v2.status_code == 500 and isinstance(v2.json()["error"], str)
    assert metrics.rejections == {"internal_error": 2}
    [traceback] = [r for r in caplog.records if r.exc_info and r.serve_app.get("request_id") == "req-42"]
    assert "KeyError" in traceback.exc_text or traceback.exc_info[0] is KeyError


def test_model_info_is_bounded_by_the_request_deadline(shared_images):
    client, _, _ = client_for(FakeModelHandle(info_delay_s=5), ingress={"request_timeout_s": 0.5, "retry_after_s": 2})
    with client:
        started = time.monotonic()
        classified = client.post("/v1/classify", files=[upload(shared_images[0])])
        metadata = client.get("/v2/models/resnet18")
        took = time.monotonic() - started
    assert classified.status_code == 503 and classified.json()["error"]["code"] == "model_unavailable"
    assert classified.headers["retry-after"] == "2"
    assert metadata.status_code == 503 and isinstance(metadata.json()["error"], str)
    assert took < 3, "neither waited for the model's info past the deadline"


def test_no_image_starts_decoding_after_the_deadline(shared_images):
    decoded = []
    model = RayModelClient(FakeModelHandle(), AppSettings(), on_decoded=decoded.append)
    photos = [p.read_bytes() for p in shared_images[:6]]
    answer = asyncio.run(model.classify(photos, 3, deadline=time.monotonic() - 1))
    assert decoded == [], "a request past its deadline decodes nothing more"
    assert all(answer.errors[row].code == "timeout" for row in range(6))


def test_multipart_forms_are_closed_after_reading(api, shared_images, monkeypatch):
    from starlette.datastructures import FormData

    closed = []
    original = FormData.close

    async def counting_close(self):
        closed.append(len(self.getlist("file")))
        await original(self)

    monkeypatch.setattr(FormData, "close", counting_close)
    client, _, _ = api
    # Non-ASCII filenames: Starlette's parser reads these (the plain shape never makes a form to close).
    files = [("file", (f"фото{i}.jpg", path.read_bytes(), "image/jpeg")) for i, path in enumerate(shared_images[:2])]
    assert client.post("/v1/classify", files=files).status_code == 200
    assert client.post("/v1/classify", files={"other": ("ф.jpg", b"x", "image/jpeg")}).status_code == 400
    assert closed == [2, 0], "every parsed form is closed, refused ones too"


def test_unknown_routes_and_methods_are_json_errors(api):
    client, _, metrics = api
    missing, wrong = client.get("/v1/nothing"), client.get("/v1/classify")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert metrics.requests == {("other", "404"): 1, ("/v1/classify", "405"): 1}, "scanned paths share one label"


def test_api_keys_guard_every_route_but_the_open_ones_and_401s_are_counted_and_logged(shared_images, caplog):
    client, _, metrics = client_for(auth={"api_keys": KEYS})
    with client, caplog.at_level(logging.INFO, logger="ray.serve"):
        for endpoint in ENDPOINTS:
            answer = client.request(endpoint.method, endpoint.path, files=[upload(shared_images[0])] if endpoint.method == "POST" else None)
            if endpoint.open:
                assert answer.status_code == 200, endpoint
            else:
                assert answer.status_code == 401, endpoint
                error = answer.json()["error"]
                if speaks_inference_protocol(endpoint.path):  # the shape /openapi.json promises there
                    assert isinstance(error, str) and "API key" in error, endpoint
                else:
                    assert error["code"] == "unauthorized", endpoint
                assert answer.headers["www-authenticate"] == 'Bearer realm="serve-app"'
        assert client.get("/static/page.js").status_code == 200
        wrong = client.get("/v1/labels", headers={"Authorization": "Bearer first-key-4f9e"})
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
        for key in KEYS:
            assert client.get("/v1/labels", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    refused = sum(1 for e in ENDPOINTS if not e.open) + 1
    assert metrics.rejections == {"unauthorized": refused}
    logged = [r.serve_app for r in caplog.records if hasattr(r, "serve_app") and r.serve_app["status"] == 401]
    assert len(logged) == refused and {line["error"] for line in logged} == {"unauthorized"}


def preflight(client: TestClient, origin: str):
    return client.options("/v1/classify", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


def test_cors_answers_only_the_configured_origin():
    client, _, _ = client_for(ingress={"cors_allow_origins": [ORIGIN]}, auth={"api_keys": KEYS})
    with client:
        allowed = preflight(client, ORIGIN)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
        denied = preflight(client, "http://evil.example")
        assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers
        unauthorized = client.get("/v1/labels", headers={"Origin": ORIGIN})
        assert unauthorized.status_code == 401 and unauthorized.headers["access-control-allow-origin"] == ORIGIN
        answer = client.get("/v1/labels", headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEYS[0]}"})
        assert "X-Request-ID" in answer.headers["access-control-expose-headers"]
    plain, _, _ = client_for()
    with plain:
        assert "access-control-allow-origin" not in preflight(plain, ORIGIN).headers, "no origin by default"


def test_the_page_is_served_with_its_security_headers(api):
    client, _, _ = api
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_the_readme_error_table_lists_every_error_with_its_status():
    listed = {code: int(status) for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", README.read_text(), flags=re.M)}
    assert listed == {kind.code: kind.status for kind in error_types()}


def test_a_request_too_big_for_an_inline_call_goes_by_reference(api, shared_images):
    client, handle, _ = api
    few = client.post("/v1/classify", files=[upload(p) for p in shared_images[:4]])
    many = client.post("/v1/classify", files=[upload(p) for p in shared_images[:32]])
    assert few.status_code == many.status_code == 200
    assert [len(c) for c in handle.requests] == [4, 32] and len(handle.calls) == 2, "one call per request"
    assert handle.by_reference == [False, True], "32 images (4.8 MB of pixels) pass gRPC's 4 MiB cap"


# ---- the Open Inference Protocol (KServe v2), in process -----------------------------------------


def binary_infer_body(header: dict, raw: bytes) -> tuple[bytes, dict]:
    """Triton's binary tensor extension: the JSON header, then the tensor bytes."""
    encoded = json.dumps(header).encode()
    return encoded + raw, {"Inference-Header-Content-Length": str(len(encoded)), "content-type": "application/octet-stream"}


def bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_v2_metadata_and_health(api):
    client, _, _ = api
    assert client.get("/v2").json()["extensions"] == ["classification", "binary_tensor_data"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/resnet18/ready").status_code == 200
    model = client.get("/v2/models/resnet18").json()
    assert model["name"] == "resnet18" and {i["name"]: i["datatype"] for i in model["inputs"]} == {
        "images": "BYTES", "pixels": "UINT8"}
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]


def test_v2_infer_takes_encoded_images_as_binary_or_base64_and_answers_like_v1(api, shared_images):
    client, handle, _ = api
    photos = [p.read_bytes() for p in shared_images[:3]]
    expected = [expected_class(load_image(p, max_pixels=10**9)) for p in photos]
    header = {"id": "r1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [3],
                                      "parameters": {"binary_data_size": len(bytes_tensor(photos))}}],
              "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    body, headers = binary_infer_body(header, bytes_tensor(photos))
    answer = client.post("/v2/models/resnet18/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["inference-header-content-length"])
    meta = json.loads(answer.content[:length])
    assert meta["id"] == "r1" and meta["outputs"][0]["shape"] == [3, 1000]
    probabilities = np.frombuffer(answer.content[length:], dtype=np.float32).reshape(3, 1000)
    assert list(probabilities.argmax(1)) == expected and len(handle.calls) == 1
    as_json = client.post("/v2/models/resnet18/infer", json={
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [3], "data": [base64.b64encode(p).decode() for p in photos]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]})
    assert as_json.status_code == 200, as_json.text
    output = as_json.json()["outputs"][0]
    assert output["datatype"] == "BYTES" and output["shape"] == [3, 2]
    assert [int(row.split(":")[1]) for row in output["data"][::2]] == expected
    assert output["data"][0].split(":")[2] == imagenet_labels()[expected[0]].label


def test_v2_infer_takes_uint8_pixels_without_decoding(api, shared_images):
    client, handle, metrics = api
    pixels = np.stack([load_image(p.read_bytes(), max_pixels=10**9) for p in shared_images[:2]])
    header = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [2, 224, 224, 3],
                          "parameters": {"binary_data_size": pixels.nbytes}}]}
    body, headers = binary_infer_body(header, pixels.tobytes())
    answer = client.post("/v2/models/resnet18/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    data = np.array(answer.json()["outputs"][0]["data"]).reshape(2, 1000)
    assert list(data.argmax(1)) == [expected_class(p) for p in pixels]
    assert np.array_equal(np.stack(handle.requests[0].images), pixels) and metrics.decode_seconds == []


V2_BAD_REQUESTS = {
    "not json": (dict(content=b"{nope"), 400),
    "no inputs": (dict(json={"inputs": []}), 400),
    "unknown input": (dict(json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}), 400),
    "pixels of the wrong shape": (dict(json={"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [0] * 12}]}), 400),
    "not base64": (dict(json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}), 400),
    "a corrupt image": (dict(json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                             "data": [base64.b64encode(b"\xff\xd8\xff" + b"\0" * 50).decode()]}]}), 400),
    "not an image": (dict(json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]}), 415),
    "classification out of range": (dict(json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}],
                                               "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}]}), 400),
    "33 images": (dict(json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [33], "data": ["aGVsbG8="] * 33}]}), 400),
    "header length past the body": (dict(content=b"{}", headers={"Inference-Header-Content-Length": "99"}), 400),
}


@pytest.mark.parametrize("case", list(V2_BAD_REQUESTS))
def test_v2_errors_take_the_protocols_shape(api, case):
    client, handle, _ = api
    kwargs, status = V2_BAD_REQUESTS[case]
    answer = client.post("/v2/models/resnet18/infer", **kwargs)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and isinstance(answer.json()["error"], str) and answer.json()["error"]
    assert not handle.calls
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


def test_openapi_describes_every_route_and_every_error():
    client, _, _ = client_for(auth={"api_keys": KEYS})
    with client:
        spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEYS[0]}"}).json()
    assert spec["openapi"] == "3.1.0"
    described = {(path, method.upper()) for path, operations in spec["paths"].items() for method in operations}
    assert described == {(e.path, e.method) for e in ENDPOINTS}
    classify = spec["paths"]["/v1/classify"]["post"]
    documented = {(int(status), code) for status, answer in classify["responses"].items() if status != "200"
                  for code in answer["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["code"]["enum"]}
    assert documented == {(kind.status, kind.code) for kind in error_types()}


def test_the_readme_route_table_matches_the_spec(api):
    client, _, _ = api
    spec = client.get("/openapi.json").json()
    listed = set(re.findall(r"^\| `(GET|POST) (/[^`? ]*)[^`]*` \|", README.read_text(), flags=re.M))
    described = {(method.upper(), path) for path, operations in spec["paths"].items() for method in operations}
    assert listed == described


def test_the_readme_says_which_routes_are_open_as_the_route_table_does():
    rows = re.findall(r"^\| `(?:GET|POST) (/[^`? ]*)[^`]*` \|.*\| (open|needed) \|$", README.read_text(), flags=re.M)
    assert {path for path, key in rows if key == "open"} == set(OPEN_PATHS)
    assert {path for path, key in rows if key == "needed"} == set(ROUTE_PATHS) - set(OPEN_PATHS)


def test_openapi_says_which_routes_need_a_key_only_when_keys_are_configured():
    client, _, _ = client_for(auth={"api_keys": KEYS})
    with client:
        spec = client.get("/openapi.json").json()
    for endpoint in ENDPOINTS:
        described = spec["paths"][endpoint.path][endpoint.method.lower()]
        assert ("401" in described["responses"]) == (not endpoint.open), endpoint
        assert ("security" in described) == (not endpoint.open), endpoint


def test_an_answer_from_the_null_model_says_so_loudly():
    from serve_app.http.presentation import NULL_MODEL_NOTICE, STANDIN_NOTICE, public_model_info
    from tests.fakes import MODEL_INFO

    null = public_model_info({**MODEL_INFO, "backend": "null"})
    assert null["null_model"] is True and null["notice"] == f"{NULL_MODEL_NOTICE} {STANDIN_NOTICE}"
    served = public_model_info({**MODEL_INFO, "backend": "onnx-int8"})
    assert "null_model" not in served and served["notice"] == STANDIN_NOTICE

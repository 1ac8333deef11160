"""End to end: the real `serve run configs/cpu.yaml` (sized for 2 cores), real HTTP on 127.0.0.1."""

import asyncio

import httpx
import numpy as np
import pytest

from tests.harness import deployment, free_port, serve_run, sized_config
from tests.images import png_header_only, truncated

pytestmark = pytest.mark.serve


# Long enough that a request held for it would show in its latency, short enough for the tests.
BATCH_WAIT_S = 0.25


def long_batch_wait(config: dict) -> None:
    deployment(config, "Classifier")["user_config"]["batch_wait_timeout_s"] = BATCH_WAIT_S


@pytest.fixture(scope="module")
def service():
    # ONNX Runtime FP32 rather than the config's INT8, so answers can be compared with torchvision's
    # reference to 1e-4; INT8's agreement is tested in test_backends.py on the same inputs.
    with serve_run(sized_config(free_port(), backend="onnx", edit=long_batch_wait)) as base_url:
        yield base_url


def classify(base_url, path, top_k=3, client=httpx):
    with open(path, "rb") as f:
        return client.post(
            f"{base_url}/v1/classify", params={"top_k": top_k},
            files={"file": (path.name, f.read(), "image/jpeg")}, timeout=60,
        )


def test_health_reports_the_standin_weights_and_backend(service):
    health = httpx.get(f"{service}/healthz").json()
    assert health["status"] == "ok"
    assert health["model"]["standin"] is True and "STAND-IN" in health["model"]["notice"]
    assert health["model"]["backend"] == "onnx" and health["model"]["device"] == "cpu"


def test_every_shared_image_matches_torchvisions_reference(service, shared_images, standin_reference):
    with httpx.Client() as client:
        for path in shared_images:
            response = classify(service, path, top_k=1000, client=client)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]["standin"] is True
            served = np.zeros(1000)
            for p in body["predictions"]:
                served[p["index"]] = p["score"]
            np.testing.assert_allclose(served, standin_reference(path), atol=1e-4, err_msg=path.name)
            scores = [p["score"] for p in body["predictions"]]
            assert scores == sorted(scores, reverse=True)


def test_64_concurrent_requests_answer_like_one_at_a_time(service, shared_images):
    paths = shared_images[:64]
    with httpx.Client() as client:
        sequential = [classify(service, p, client=client).json()["predictions"] for p in paths]

    async def all_at_once():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
            async def one(path):
                return await client.post(
                    f"{service}/v1/classify", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, timeout=120
                )
            return await asyncio.gather(*(one(p) for p in paths))

    concurrent = asyncio.run(all_at_once())
    assert [r.status_code for r in concurrent] == [200] * 64
    for alone, together in zip(sequential, (r.json()["predictions"] for r in concurrent)):
        assert [p["index"] for p in alone] == [p["index"] for p in together]
        np.testing.assert_allclose([p["score"] for p in alone], [p["score"] for p in together], atol=1e-5)


def batch_sizes(service) -> dict[int, int]:
    sizes = httpx.get(f"{service}/healthz").json()["replica"]["batching"]["batch_sizes"]
    return {int(size): count for size, count in sizes.items()}


def test_images_arriving_together_fill_batches(service, shared_images):
    """128 images arriving at once: while some are in the model replica, the next batch waits up to
    batch_wait_timeout_s to fill, so batches run full (16) instead of as small as they arrive."""
    before = batch_sizes(service)
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in shared_images[:32]]

    async def four_at_once():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{service}/v1/classify", files=files) for _ in range(4)))

    responses = asyncio.run(four_at_once())
    assert [r.status_code for r in responses] == [200] * 4
    new_batches = {size: n - before.get(size, 0) for size, n in batch_sizes(service).items()}
    new_batches = {size: n for size, n in new_batches.items() if n > 0}
    assert sum(size * n for size, n in new_batches.items()) == 128
    assert max(new_batches) == 16, f"no batch filled up: {new_batches}"
    assert 128 / sum(new_batches.values()) >= 4, f"batches mostly small: {new_batches}"


def test_a_lone_request_is_not_held_back_for_a_batch(service, shared_images):
    """One request at a time finds the replica empty: its batch starts at once, not after the wait."""
    before = batch_sizes(service)
    with httpx.Client() as client:
        responses = [classify(service, path, client=client) for path in shared_images[:5]]
    assert [r.status_code for r in responses] == [200] * 5
    after = batch_sizes(service)
    assert after.get(1, 0) - before.get(1, 0) == 5, "one request at a time must run as batches of one"
    seconds = sorted(r.elapsed.total_seconds() for r in responses)
    assert seconds[2] < BATCH_WAIT_S / 2, f"lone requests took {seconds} s with a {BATCH_WAIT_S} s batch wait"


def test_raw_image_body_and_predict_route(service, shared_images):
    data = shared_images[5].read_bytes()
    raw = httpx.post(f"{service}/v1/classify", content=data, headers={"content-type": "image/jpeg"}).json()
    predict = httpx.post(f"{service}/predict", files={"file": ("x.jpg", data, "image/jpeg")})
    assert predict.status_code == 200
    assert predict.json() == [{"label": p["label"], "score": p["score"]} for p in raw["predictions"]]


def test_several_images_get_one_entry_each_and_a_bad_one_fails_alone(service, shared_images):
    files = [
        ("file", ("a.jpg", shared_images[0].read_bytes(), "image/jpeg")),
        ("file", ("broken.jpg", truncated(shared_images[1]), "image/jpeg")),
        ("file", ("c.jpg", shared_images[2].read_bytes(), "image/jpeg")),
    ]
    response = httpx.post(f"{service}/v1/classify", files=files, params={"top_k": 2}, timeout=60)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.jpg", "broken.jpg", "c.jpg"]
    assert results[1]["error"]["code"] == "corrupt_image" and "predictions" not in results[1]
    for index in (0, 2):
        alone = classify(service, shared_images[index], top_k=2).json()["predictions"]
        together = results[index]["predictions"]
        assert [p["index"] for p in together] == [p["index"] for p in alone]
        np.testing.assert_allclose([p["score"] for p in together], [p["score"] for p in alone], atol=1e-5)


def test_labels_route_lists_1000_classes_in_both_languages(service):
    body = httpx.get(f"{service}/v1/labels").json()
    assert body["count"] == 1000
    assert body["labels"][970] == {"index": 970, "label": "alp", "label_zh": "高山"}


BAD_INPUTS = {
    "no file field": (dict(files={"other": ("a.jpg", b"x", "image/jpeg")}), 400, "no_file"),
    "text field named file": (dict(data={"file": "hello"}, files={"x": ("y", b"", "text/plain")}), 400, "no_file"),
    "no body at all": (dict(), 400, "no_file"),
    "empty raw body": (dict(content=b"", headers={"content-type": "image/png"}), 400, "no_file"),
    "empty file": (dict(files={"file": ("a.jpg", b"", "image/jpeg")}), 400, "empty_image"),
    "corrupt image": (dict(files={"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x01" * 64, "image/png")}), 400, "corrupt_image"),
    "not an image": (dict(files={"file": ("a.jpg", b"%PDF-1.7 not a photo", "image/jpeg")}), 415, "unsupported_media_type"),
    "json body": (dict(json={"image": "base64?"}), 415, "unsupported_media_type"),
    "decompression bomb": (dict(files={"file": ("bomb.png", png_header_only(50_000, 50_000), "image/png")}), 413, "image_too_large"),
    "over the upload limit": (dict(content=b"\xff\xd8\xff" + b"\0" * (10 * 1024 * 1024), headers={"content-type": "image/jpeg"}), 413, "upload_too_large"),
    "top_k not a number": (dict(params={"top_k": "many"}, files={"file": ("a", b"x", "image/jpeg")}), 400, "invalid_parameter"),
    "top_k out of range": (dict(params={"top_k": 1001}, files={"file": ("a", b"x", "image/jpeg")}), 400, "invalid_parameter"),
    "malformed multipart": (dict(content=b"--xyz\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xyz"}), 400, None),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_json_4xx_and_the_service_keeps_serving(service, shared_images, case):
    kwargs, status, code = BAD_INPUTS[case]
    response = httpx.post(f"{service}/v1/classify", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    assert classify(service, shared_images[0]).status_code == 200


def test_truncated_jpeg_is_a_400(service, shared_images):
    response = httpx.post(
        f"{service}/v1/classify", files={"file": ("t.jpg", truncated(shared_images[3], 0.3), "image/jpeg")}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "corrupt_image"


def test_unknown_route_and_wrong_method_are_json_errors(service):
    missing = httpx.get(f"{service}/v2/nothing")
    wrong = httpx.get(f"{service}/v1/classify")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_by_default_no_origin_is_allowed_and_no_key_is_needed(service, shared_images):
    preflight = httpx.options(f"{service}/v1/classify", headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    answer = classify(service, shared_images[0])
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    assert answer.headers["x-request-id"]

"""End to end: the real `serve run configs/cpu.yaml` (sized for 2 cores), real HTTP on 127.0.0.1.

Also the contract over real Ray Serve: the OpenAPI description fuzzed with schemathesis, and the
Open Inference Protocol spoken by Triton's own client (`tritonclient[http]`); a failed forward
pass, which must fail only its own batch; and, beside it on the same Serve (at /decoding), the
service with `decode_on_replica`, its JPEGs decoded on the model replica's device (the CPU here).
"""

import asyncio
from collections import Counter
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_app.imaging import load_image
from serve_app.launch.harness import (
    beside,
    deployment,
    free_port,
    grpc_address,
    processes_named,
    replica_title,
    serve_run,
    sized_config,
)
from serve_app.settings import BACKENDS, FAIL_FIRST_BATCHES_ENV_VAR
from tests.images import encode, exif_rotated_jpeg, truncated
from tests.test_api import BAD_REQUESTS

pytestmark = pytest.mark.serve


# Long enough that a request held for it would show in its latency, short enough for the tests.
BATCH_WAIT_S = 0.25

DECODING = "decoding"  # the second application's name and route
# The test-only hook (off in every shipped config) makes the model's backend fail its first forward
# passes, as one that ran out of memory would.
FAILING_BATCHES = 2


def long_batch_wait_and_failing_first(config: dict) -> None:
    classifier = deployment(config, "Classifier")
    classifier["user_config"]["batch_wait_timeout_s"] = BATCH_WAIT_S
    config["applications"][0]["runtime_env"]["env_vars"][FAIL_FIRST_BATCHES_ENV_VAR] = str(FAILING_BATCHES)
    # One model replica throughout: the hook fails the first batches of every replica, so one that
    # autoscaling adds (the fuzzing's many-image requests once did) would fail the next tests' calls,
    # and the module proves that no replica restarts by their process ids. tests/test_scaling.py scales.
    classifier.pop("autoscaling_config")
    classifier["num_replicas"] = 1


def decode_on_replica(config: dict) -> None:
    config["applications"][0]["args"]["model"]["decode_on_replica"] = True


@dataclass
class Service:
    base_url: str
    first_answers: list[httpx.Response]  # one request at a time, from the start: the first ones failed
    replicas_at_start: set[int]
    grpc_address: str


@pytest.fixture(scope="module")
def started(shared_images):
    # ONNX Runtime FP32 rather than the config's INT8, so answers can be compared with torchvision's
    # reference to 1e-4; INT8's agreement is tested in test_backends.py on the same inputs.
    port = free_port()
    config = beside(sized_config(port, backend="onnx", edit=long_batch_wait_and_failing_first), DECODING,
                    sized_config(port, backend="torch", edit=decode_on_replica))
    with serve_run(config) as base_url:
        replicas = set(processes_named(replica_title("Classifier")))
        with httpx.Client() as client:
            first = [classify(base_url, path, client=client) for path in shared_images[:FAILING_BATCHES + 6]]
        yield Service(base_url, first, replicas, grpc_address(config))


@pytest.fixture(scope="module")
def service(started) -> str:
    return started.base_url


def test_a_failed_forward_pass_fails_only_its_batch_and_no_replica_restarts(started):
    answers = started.first_answers
    assert [a.status_code for a in answers] == [500] * FAILING_BATCHES + [200] * 6
    for failed in answers[:FAILING_BATCHES]:
        assert failed.json()["error"]["code"] == "inference_failed", failed.text
        assert "RuntimeError" in failed.json()["error"]["message"]
    assert set(processes_named(replica_title("Classifier"))) == started.replicas_at_start, "the replica kept serving"
    assert httpx.get(f"{started.base_url}/healthz").json()["status"] == "ok"


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


# Every bad request of the in-process contract (tests/test_api.py) gets its status and code there;
# here one of each status crosses real Serve and its HTTP front, which must not reshape them.
ONE_PER_STATUS = ("corrupt image", "over the upload limit", "not an image")


@pytest.mark.parametrize("case", ONE_PER_STATUS)
def test_bad_input_gets_a_json_4xx_over_serve_and_the_service_keeps_serving(service, shared_images, case):
    kwargs, status, code = BAD_REQUESTS[case]
    response = httpx.post(f"{service}/v1/classify", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["code"] == code
    assert classify(service, shared_images[0]).status_code == 200


def test_truncated_jpeg_is_a_400(service, shared_images):
    response = httpx.post(
        f"{service}/v1/classify", files={"file": ("t.jpg", truncated(shared_images[3], 0.3), "image/jpeg")}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "corrupt_image"


def test_unknown_route_and_wrong_method_are_json_errors(service):
    missing = httpx.get(f"{service}/v1/nothing")
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


# ---- the contract: the live service fuzzed from its OpenAPI description, and spoken to by Triton's
# own client over the Open Inference Protocol ---------------------------------------------------

CASES_PER_OPERATION = 60


def replica_pids() -> set[int]:
    return {pid for name in ("Ingress", "Classifier") for pid in processes_named(replica_title(name))}


def v1_top1(service: str, photos) -> list[int]:
    with httpx.Client(timeout=60) as client:
        return [client.post(f"{service}/v1/classify", files={"file": (p.name, p.read_bytes(), "image/jpeg")})
                .json()["predictions"][0]["index"] for p in photos]


def test_tritonclient_classifies_encoded_images_like_v1(service, shared_images):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=service.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resnet18")
    assert client.get_model_metadata("resnet18")["platform"] == BACKENDS["onnx"].platform  # the fixture's ONNX FP32
    photos = shared_images[40:48]
    images = triton.InferInput("images", [len(photos)], "BYTES")
    images.set_data_from_numpy(np.array([p.read_bytes() for p in photos], dtype=np.object_))  # binary, by default
    answer = client.infer("resnet18", [images], outputs=[triton.InferRequestedOutput("probabilities")])
    probabilities = answer.as_numpy("probabilities")
    assert probabilities.shape == (8, 1000) and np.allclose(probabilities.sum(1), 1, atol=1e-3)
    assert list(probabilities.argmax(1)) == v1_top1(service, photos)

    top3 = client.infer("resnet18", [images], outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    rows = top3.as_numpy("probabilities")
    assert rows.shape == (8, 3)
    assert [int(row[0].decode().split(":")[1]) for row in rows] == list(probabilities.argmax(1))


def test_tritonclient_sends_uint8_pixels(service, shared_images):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=service.removeprefix("http://"))
    photos = shared_images[48:52]
    pixels = np.stack([load_image(p.read_bytes(), max_pixels=10**8) for p in photos])
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    answer = client.infer("resnet18", [tensor])
    assert list(answer.as_numpy("probabilities").argmax(1)) == v1_top1(service, photos)
    with pytest.raises(triton.InferenceServerException, match="image 0"):
        bad = triton.InferInput("images", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"\xff\xd8\xff" + b"\0" * 100], dtype=np.object_))
        client.infer("resnet18", [bad])


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_spec(service):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(f"{service}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    before, ran = replica_pids(), Counter()
    for operation in operations:

        @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            ran[operation.label] += 1
            # Every check but "schema-valid data is accepted": random bytes fit the schema of an image
            # upload (no schema can say "decodable"), and the service rightly answers them 415.
            case.call_and_validate(base_url=service, timeout=60, excluded_checks=[positive_data_acceptance])

        fuzz()
    print(f"schemathesis: {sum(ran.values())} cases over {len(ran)} operations: {dict(ran)}")
    assert set(ran) == {operation.label for operation in operations}, "every operation was fuzzed"
    assert replica_pids() == before, "a replica restarted during the fuzzing"
    assert httpx.get(f"{service}/healthz", timeout=10).status_code == 200


# ---- decoding on the model replica, end to end over HTTP (CPU device here, nvJPEG on a GPU) ------


def test_with_replica_decoding_plain_jpegs_are_decoded_there_and_answer_like_the_reference(
    service, shared_images, standin_reference
):
    decoding = f"{service}/{DECODING}"
    health = httpx.get(f"{decoding}/healthz").json()
    assert health["replica"]["decodes_jpeg"] is True and health["model"]["backend"] == "torch"
    photos = shared_images[::5]  # 20 photos
    agree = 0
    for photo in photos:
        response = httpx.post(f"{decoding}/v1/classify", files={"file": (photo.name, photo.read_bytes())}, timeout=60)
        assert response.status_code == 200, response.text
        agree += response.json()["predictions"][0]["index"] == int(standin_reference(photo).argmax())
    assert agree >= 0.9 * len(photos)

    rgb = Image.open(photos[0]).convert("RGB")
    good = photos[1].read_bytes()
    files = [
        ("file", ("a.png", encode(rgb, "PNG"))),  # decoded by the ingress
        ("file", ("b.jpg", encode(rgb.convert("CMYK"), "JPEG"))),  # decoded by the ingress
        ("file", ("c.jpg", exif_rotated_jpeg(rgb))),  # decoded by the ingress
        ("file", ("d.jpg", good[: len(good) // 3])),  # sent as bytes, fails in the replica
        ("file", ("e.jpg", good)),  # sent as bytes
    ]
    results = httpx.post(f"{decoding}/v1/classify", files=files, timeout=60).json()["results"]
    assert [r.get("error", {}).get("code", "ok") for r in results] == ["ok", "ok", "ok", "corrupt_image", "ok"]
    assert results[0]["predictions"][0]["index"] == results[2]["predictions"][0]["index"]


# ---- the Open Inference Protocol over gRPC, with Triton's own client ----------------------------


# Two applications share this Serve (the second at /decoding), so a gRPC call names its own, as Serve
# asks (a config with one application, as shipped, needs no metadata: tests/test_null_model.py).
APP = {"application": "classifier"}


def v1_probabilities(base_url: str, path) -> np.ndarray:
    answer = classify(base_url, path, top_k=1000)
    probabilities = np.zeros(1000, np.float32)
    for prediction in answer.json()["predictions"]:
        probabilities[prediction["index"]] = prediction["score"]
    return probabilities


def test_tritonclient_grpc_answers_what_v1_answers_to_1e6(service, started, shared_images):
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(url=started.grpc_address)
    assert client.is_server_live(headers=APP) and client.is_server_ready(headers=APP)
    assert client.is_model_ready("resnet18", headers=APP)
    assert client.get_model_metadata("resnet18", headers=APP).platform == BACKENDS["onnx"].platform  # ONNX FP32
    assert "classification" in client.get_server_metadata(headers=APP).extensions
    photos = shared_images[48:56]
    images = triton_grpc.InferInput("images", [len(photos)], "BYTES")
    images.set_data_from_numpy(np.array([p.read_bytes() for p in photos], dtype=np.object_))
    probabilities = client.infer("resnet18", [images], headers=APP).as_numpy("probabilities")
    assert probabilities.shape == (8, 1000)
    for photo, row in zip(photos, probabilities):
        over_http = v1_probabilities(service, photo)
        assert row.argmax() == over_http.argmax() and np.abs(row - over_http).max() <= 1e-6, photo.name
    top3 = client.infer("resnet18", [images], outputs=[triton_grpc.InferRequestedOutput("probabilities", class_count=3)],
                        headers=APP)
    rows = top3.as_numpy("probabilities")
    assert rows.shape == (8, 3) and [int(row[0].decode().split(":")[1]) for row in rows] == list(probabilities.argmax(1))


def test_grpc_refusals_have_their_status_codes_and_the_service_keeps_serving(started, shared_images):
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    client = triton_grpc.InferenceServerClient(url=started.grpc_address)

    def refused(model: str, items: list[bytes]) -> InferenceServerException:
        images = triton_grpc.InferInput("images", [len(items)], "BYTES")
        images.set_data_from_numpy(np.array(items, dtype=np.object_))
        with pytest.raises(InferenceServerException) as error:
            client.infer(model, [images], headers=APP)
        return error.value

    corrupt = refused("resnet18", [shared_images[0].read_bytes(), truncated(shared_images[1])])
    assert corrupt.status() == "StatusCode.INVALID_ARGUMENT" and corrupt.message().startswith("image 1:")
    assert refused("resnet50", [shared_images[0].read_bytes()]).status() == "StatusCode.NOT_FOUND"
    oversized = refused("resnet18", [bytes(4 * 1024 * 1024)] * 3)  # 12 MiB, over max_upload_bytes
    assert oversized.status() == "StatusCode.RESOURCE_EXHAUSTED" and "larger than the limit" in oversized.message()
    images = triton_grpc.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([shared_images[2].read_bytes()], dtype=np.object_))
    assert client.infer("resnet18", [images], headers=APP).as_numpy("probabilities").shape == (1, 1000)


def test_32_concurrent_grpc_clients_for_20_seconds_get_no_error(started, shared_images):
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.grpc import InferInput
    from tritonclient.utils import InferenceServerException

    photos = [p.read_bytes() for p in shared_images]
    outcomes: Counter = Counter()

    async def run() -> None:
        client = triton_aio.InferenceServerClient(url=started.grpc_address)
        deadline = asyncio.get_running_loop().time() + 20

        async def worker(offset: int) -> None:
            n = offset
            while asyncio.get_running_loop().time() < deadline:
                images = InferInput("images", [1], "BYTES")
                images.set_data_from_numpy(np.array([photos[n % len(photos)]], dtype=np.object_))
                try:
                    answer = await client.infer("resnet18", [images], headers=APP)
                    outcomes["ok" if answer.as_numpy("probabilities").shape == (1, 1000) else "wrong shape"] += 1
                except InferenceServerException as error:
                    outcomes[error.status()] += 1
                n += 32

        try:
            await asyncio.gather(*(worker(i) for i in range(32)))
        finally:
            await client.close()

    asyncio.run(run())
    assert set(outcomes) == {"ok"} and outcomes["ok"] > 100, outcomes

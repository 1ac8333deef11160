"""Hardening, end to end on the real service: hostile uploads, a replica killed under load, timeouts,
metrics on Ray's Prometheus endpoint, request ids in headers and logs, API keys and CORS.

One service for the module, configured the way an operator locks it down: API keys from
$SERVE_APP_API_KEYS, one allowed CORS origin, a short request timeout, two model replicas.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_app.launch.harness import (
    RAY_ENV,
    SteadyLoad,
    deployment,
    free_port,
    grpc_address,
    serve_run,
    sized_config,
    wait_until,
)
from tests.hostile import corpus, send_cases, send_mutations

pytestmark = pytest.mark.serve

KEYS = ["first-key-4f9d", "second-key-a71c"]
AUTH = {"Authorization": f"Bearer {KEYS[1]}"}
ALLOWED_ORIGIN = "http://dashboard.example"
REQUEST_TIMEOUT_S = 3
DASHBOARD = "http://127.0.0.1:8265"  # where `serve run` starts Ray's dashboard (Serve's REST API)
SESSION = Path("/tmp/ray/session_latest")
RAY_TOKEN = secrets.token_hex(32)  # Ray's own token auth, on for this test's cluster and its dashboard
SAMPLED_MUTATIONS = 100


def locked_down(config: dict) -> None:
    app = config["applications"][0]
    # A line for every request, failed or not: what an operator who audits requests sets.
    app["args"]["ingress"].update(cors_allow_origins=[ALLOWED_ORIGIN], request_timeout_s=REQUEST_TIMEOUT_S,
                                  request_log="all")
    deployment(config, "Classifier")["autoscaling_config"].update(min_replicas=2, max_replicas=2)


def healthz_and_two_model_replicas(base_url: str) -> bool:
    return httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200 and len(model_replicas()) == 2


@pytest.fixture(scope="module")
def config():
    return sized_config(free_port(), backend="onnx-int8", classifier_cpus=0.4, edit=locked_down)


@pytest.fixture(scope="module")
def service(config, tmp_path_factory):
    token = tmp_path_factory.mktemp("ray") / "auth_token"
    token.write_text(RAY_TOKEN)
    env = {
        **RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
        "SERVE_APP_API_KEYS": ",".join(KEYS), "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    }
    with serve_run(config, env=env, ready=healthz_and_two_model_replicas) as base_url:
        yield base_url


def replicas(name: str) -> list[dict]:
    """Serve's own view of a deployment's replicas (state, pid), from its REST API."""
    answer = httpx.get(f"{DASHBOARD}/api/serve/applications/", headers={"Authorization": f"Bearer {RAY_TOKEN}"}, timeout=10)
    apps = answer.json()["applications"]
    return apps["classifier"]["deployments"][name]["replicas"]


def model_replicas() -> list[dict]:
    return [r for r in replicas("Classifier") if r["state"] == "RUNNING"]


def replica_identities() -> set[tuple[str, str, int]]:
    return {(name, r["replica_id"], r["pid"]) for name in ("Ingress", "Classifier") for r in replicas(name)}


# ---- hostile input ---------------------------------------------------------------------------


def test_a_sample_of_hostile_uploads_gets_json_answers_under_load_and_nothing_restarts(service, shared_images):
    """Every tenth case of the corpus and 100 of Hypothesis' mutations, end to end while good photos
    keep flowing (the whole corpus and 1,700 mutations run in process: tests/test_hostile_uploads.py)."""
    before = replica_identities()
    url = f"{service}/v1/classify"
    cases = corpus(shared_images)[::10] + [case for case in corpus(shared_images) if case[0] == "mixed multi-image request"]
    originals = [p.read_bytes() for p in shared_images[40:50]]

    with SteadyLoad(url, shared_images[:20], concurrency=2, headers=AUTH) as good, httpx.Client(headers=AUTH) as client:
        sent = send_cases(client, url, cases) + send_mutations(client, url, originals, SAMPLED_MUTATIONS)

    assert sum(sent.values()) == len(cases) + SAMPLED_MUTATIONS, sent
    assert sent[200] > 10 and sum(n for status, n in sent.items() if 400 <= status < 500) > 50, sent
    good_statuses = Counter(good.since())
    assert good_statuses[200] >= 20 and set(good_statuses) == {200}, good_statuses
    assert replica_identities() == before, "a replica restarted or was replaced"


def test_a_slow_upload_is_cut_off_with_a_408(service):
    host, port = service.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"\xff\xd8\xff" + b"\x00" * 1000
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert REQUEST_TIMEOUT_S - 0.5 < waited < REQUEST_TIMEOUT_S + 10


def test_an_oversized_upload_is_refused_while_it_still_streams(service):
    """No Content-Length (chunked): the 413 comes once the limit is passed, long before the body ends."""
    limit, chunk = 10 * 1024 * 1024, b"\xff" * (1024 * 1024)
    host, port = service.removeprefix("http://").split(":")
    answer, sent = b"", 0
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\n\r\n".encode()
        )
        connection.settimeout(0.1)
        while sent < 10 * limit and not answer:
            try:
                connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
                answer = connection.recv(65536)
            except socket.timeout:
                continue
            except OSError:  # the server closed the connection on us: read what it said
                break
        connection.settimeout(10)
        while not answer.rstrip().endswith(b"}"):
            more = connection.recv(65536)
            if not more:
                break
            answer += more
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["error"]["code"] == "upload_too_large"
    assert sent < 3 * limit, f"the answer came only after {sent} bytes"


# ---- access ----------------------------------------------------------------------------------


def test_api_keys_guard_every_route_but_health_and_the_page(service, shared_images):
    photo = {"file": ("p.jpg", shared_images[0].read_bytes())}
    missing = httpx.post(f"{service}/v1/classify", files=photo)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{service}/v1/classify", files=photo, headers={"Authorization": "Bearer first-key-4f9e"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
    assert httpx.post(f"{service}/v1/classify", files=photo, headers={"Authorization": KEYS[0]}).status_code == 401
    for key in KEYS:
        assert httpx.post(f"{service}/v1/classify", files=photo, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.post(f"{service}/predict", files=photo).status_code == 401
    assert httpx.get(f"{service}/v1/labels").status_code == 401
    assert httpx.get(f"{service}/v1/labels", headers=AUTH).status_code == 200
    for open_path in ("/healthz", "/", "/static/page.js", "/static/page.css"):
        assert httpx.get(f"{service}{open_path}").status_code == 200, open_path


def test_grpc_needs_the_key_as_metadata_where_http_needs_it(config, service, shared_images):
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    client = triton_grpc.InferenceServerClient(url=grpc_address(config))
    assert client.is_server_live() and client.is_model_ready("resnet18"), "health is open, as on HTTP"
    images = triton_grpc.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([shared_images[0].read_bytes()], dtype=np.object_))
    for headers in ({}, {"authorization": "Bearer first-key-4f9e"}):
        with pytest.raises(InferenceServerException) as refused:
            client.infer("resnet18", [images], headers=headers)
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED" and "API key" in refused.value.message()
    answer = client.infer("resnet18", [images], headers={"authorization": f"Bearer {KEYS[1]}"})
    assert answer.as_numpy("probabilities").shape == (1, 1000)


def test_the_page_asks_for_the_key(service, browser, shared_images):
    from playwright.sync_api import expect

    page = browser.new_page()
    try:
        page.goto(f"{service}/")
        page.set_input_files("#file-input", str(shared_images[2]))
        key_form = page.locator("#key-form")
        expect(key_form).to_be_visible()
        expect(page.locator(".card .error")).to_contain_text("API key")

        page.get_by_label("This service needs an API key").fill("not-a-key")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#key-error")).to_have_text("That key was not accepted.")

        page.get_by_label("This service needs an API key").fill(KEYS[0])
        page.keyboard.press("Enter")
        expect(page.locator(".card .prediction")).to_have_count(3, timeout=30_000)
        expect(key_form).to_be_hidden()
    finally:
        page.close()


def test_cors_allows_only_the_configured_origin(service):
    def preflight(origin):
        return httpx.options(f"{service}/v1/classify", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        })

    allowed = preflight(ALLOWED_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    denied = preflight("http://evil.example")
    assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers

    answer = httpx.get(f"{service}/v1/labels", headers={**AUTH, "Origin": ALLOWED_ORIGIN})
    assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "X-Request-ID" in answer.headers["access-control-expose-headers"]
    unauthorized = httpx.get(f"{service}/v1/labels", headers={"Origin": ALLOWED_ORIGIN})
    assert unauthorized.status_code == 401 and unauthorized.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = httpx.get(f"{service}/v1/labels", headers={**AUTH, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# ---- observability ---------------------------------------------------------------------------


def scrape() -> str:
    """Every Ray node's Prometheus endpoint, found the way Prometheus finds them (Ray's file_sd file)."""
    targets = json.loads((SESSION / "prom_metrics_service_discovery.json").read_text())
    return "\n".join(
        httpx.get(f"http://{target}/metrics", timeout=10).text for group in targets for target in group["targets"]
    )


def metric_total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_custom_metrics_reach_rays_prometheus_endpoint(service, shared_images):
    with httpx.Client(headers=AUTH) as client:
        for photo in shared_images[60:66]:
            assert client.post(f"{service}/predict", files={"file": (photo.name, photo.read_bytes())}).status_code == 200
        for _ in range(4):
            broken = shared_images[0].read_bytes()[:2000]
            assert client.post(f"{service}/predict", files={"file": ("b.jpg", broken)}).status_code == 400
        assert client.get(f"{service}/no/such/route").status_code == 404

    def exported() -> bool:
        text = scrape()
        return (
            metric_total(text, "ray_serve_app_requests_total", route="/predict", status="200") >= 6
            and metric_total(text, "ray_serve_app_requests_total", route="/predict", status="400") >= 4
            and metric_total(text, "ray_serve_app_requests_total", route="other", status="404") >= 1
            and metric_total(text, "ray_serve_app_rejected_uploads_total", reason="corrupt_image") >= 4
            and metric_total(text, "ray_serve_app_decode_seconds_count") >= 6
            and metric_total(text, "ray_serve_app_batch_size_count") >= 1
            and metric_total(text, "ray_serve_app_inference_seconds_count", backend="onnx-int8") >= 1
            and metric_total(text, "ray_serve_app_requests_per_call_count") >= 1
            and metric_total(text, "ray_serve_app_images_per_call_sum") >= 6
        )

    wait_until(exported, 90, "the custom metrics on Ray's Prometheus endpoint")
    text = scrape()
    images = metric_total(text, "ray_serve_app_batch_size_sum")
    assert images >= 6, "the batch-size histogram counts images"
    assert 'le="16.0"' in text and "ray_serve_app_inference_seconds_bucket" in text


def request_log_lines() -> list[dict]:
    lines = []
    for path in (SESSION / "logs" / "serve").glob("replica_classifier_Ingress_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"serve_app"' in line:
                lines.append(json.loads(line))
    return lines


def test_request_ids_come_back_in_headers_and_logs(service, shared_images):
    photo = {"file": ("p.jpg", shared_images[9].read_bytes())}
    own = httpx.post(f"{service}/v1/classify", files=photo, headers={**AUTH, "X-Request-ID": "client-chosen-42"})
    assert own.status_code == 200 and own.headers["x-request-id"] == "client-chosen-42"
    generated = httpx.post(f"{service}/v1/classify", files={"file": ("x.jpg", b"not an image")}, headers=AUTH)
    assert generated.status_code == 415
    generated_id = generated.headers["x-request-id"]
    assert len(generated_id) >= 16 and generated_id != "client-chosen-42"

    def logged(request_id: str) -> dict | None:
        return next((line for line in request_log_lines() if line["serve_app"]["request_id"] == request_id), None)

    wait_until(lambda: logged("client-chosen-42") and logged(generated_id), 30, "both requests in the ingress log")
    ok, rejected = logged("client-chosen-42"), logged(generated_id)
    assert ok["serve_app"]["status"] == 200 and ok["serve_app"]["route"] == "/v1/classify" and ok["request_id"] == "client-chosen-42"
    assert rejected["serve_app"]["status"] == 415 and rejected["serve_app"]["error"] == "unsupported_media_type"
    assert rejected["serve_app"]["duration_ms"] > 0


# ---- crashes ---------------------------------------------------------------------------------


def test_killing_a_model_replica_under_load_loses_under_one_percent(service, shared_images):
    photos = shared_images[:30]
    with httpx.Client(headers=AUTH) as client:
        expected = {
            p: client.post(f"{service}/v1/classify", files={"file": (p.name, p.read_bytes())}).json()["predictions"][0]["index"]
            for p in photos
        }
    victim = model_replicas()[0]
    with SteadyLoad(f"{service}/v1/classify", photos, concurrency=6, headers=AUTH) as load:
        wait_until(lambda: len(load.answers) >= 60, 60, "load running")
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        replaced_at = wait_until(
            lambda: len(model_replicas()) == 2 and victim["replica_id"] not in {r["replica_id"] for r in model_replicas()},
            120, "Serve to replace the killed replica",
        )
        time.sleep(3)  # keep the load on a while after the replacement is up
    window = [a for a in load.answers if a.at >= killed_at]
    failed = [a for a in window if a.status != 200]
    print(f"kill window: {len(window)} answers, {len(failed)} failed, replaced after {replaced_at - killed_at:.1f} s")
    assert len(window) >= 100, f"only {len(window)} answers in the window"
    assert len(failed) / len(window) < 0.01, f"{len(failed)} of {len(window)} failed: {Counter(a.status for a in failed)}"
    wrong = [a.photo.name for a in load.answers if a.status == 200 and a.top_index != expected[a.photo]]
    assert not wrong, f"answers that belong to another image: {wrong[:5]}"
    assert replaced_at - killed_at < 120

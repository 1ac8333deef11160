"""The null model over real Ray Serve and HTTP, as the benchmarks serve it: `python -m serve_app
serve` (`make serve`'s own stack, lean, without Ray's dashboard) on configs/cpu.yaml sized for 2
cores, `backend: null` allowed by SERVE_APP_ALLOW_NULL_MODEL=1. Everything runs as served but the
forward pass, and every answer says so."""

import httpx
import pytest

from serve_app.launch.harness import RAY_ENV, free_port, processes_named, serve_run, sized_config
from serve_app.settings import ALLOW_NULL_MODEL_ENV_VAR, BACKENDS, METRICS_PORT_ENV_VAR
from tests.images import truncated

pytestmark = pytest.mark.serve

NULL_TOP3 = [(0, "tench"), (1, "goldfish"), (2, "great white shark")]


CONFIG = sized_config(free_port(), backend="null")
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def service():
    env = {**RAY_ENV, ALLOW_NULL_MODEL_ENV_VAR: "1", METRICS_PORT_ENV_VAR: str(METRICS_PORT)}
    with serve_run(CONFIG, env=env, launcher=True) as base_url:
        yield base_url


def test_every_photo_gets_the_null_models_fixed_answer_labelled_as_such(service, shared_images):
    with httpx.Client(timeout=30) as client:
        for path in shared_images[:5]:
            answer = client.post(f"{service}/v1/classify", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert [(p["index"], p["label"]) for p in body["predictions"]] == NULL_TOP3
            assert body["model"]["backend"] == "null" and body["model"]["null_model"] is True
            assert body["model"]["notice"].startswith("NULL MODEL (measurement only)")
        health = client.get(f"{service}/healthz").json()
        assert health["model"]["null_model"] is True and health["replica"]["backend"] == "null"
        assert client.get(f"{service}/v2/models/resnet18").json()["platform"] == BACKENDS["null"].platform


def test_uploads_are_still_read_and_decoded_so_a_broken_one_is_refused(service, shared_images):
    broken = truncated(shared_images[0])
    answer = httpx.post(f"{service}/v1/classify", files={"file": ("broken.jpg", broken, "image/jpeg")}, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "corrupt_image"


def test_make_serves_stack_runs_no_dashboard(service):
    assert not processes_named("ray-dashboard-"), "the dashboard's head modules run only with --dashboard"
    with pytest.raises(httpx.ConnectError):
        httpx.get("http://127.0.0.1:8265", timeout=5)


def test_grpc_needs_no_metadata_where_one_application_runs(service, shared_images):
    import numpy as np
    import tritonclient.grpc as triton_grpc

    from serve_app.launch.harness import grpc_address

    client = triton_grpc.InferenceServerClient(url=grpc_address(CONFIG))
    images = triton_grpc.InferInput("images", [2], "BYTES")
    images.set_data_from_numpy(np.array([p.read_bytes() for p in shared_images[:2]], dtype=np.object_))
    probabilities = client.infer("resnet18", [images]).as_numpy("probabilities")
    assert list(probabilities.argmax(1)) == [NULL_TOP3[0][0]] * 2


def test_grpc_server_reflection_lists_the_inference_service(service):
    """What grpcurl uses without a .proto file (README)."""
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from serve_app.launch.harness import grpc_address

    with grpc.insecure_channel(grpc_address(CONFIG)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [answer] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=30)
        services = {s.name for s in answer.list_services_response.service}
    assert "inference.GRPCInferenceService" in services, services


def test_the_lean_stack_still_exports_prometheus_metrics_on_its_port(service, shared_images):
    """Metrics reach the agent every 30 s instead of 10 s on make serve's stack, and Prometheus finds
    them on the launcher's fixed port ($SERVE_APP_METRICS_PORT, 8080 by default): they still arrive,
    the gRPC calls above counted beside the HTTP ones."""
    from serve_app.launch.harness import wait_until
    from tests.test_hardening import metric_total

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text

    photo = shared_images[3]
    assert httpx.post(f"{service}/v1/classify", files={"file": (photo.name, photo.read_bytes())}, timeout=30).status_code == 200

    def exported() -> bool:
        text = scrape()
        return (metric_total(text, "ray_serve_app_requests_total", route="/v1/classify", status="200") >= 6
                and metric_total(text, "ray_serve_app_grpc_requests_total", rpc="ModelInfer", code="OK") >= 1
                and metric_total(text, "ray_serve_app_batch_size_count") >= 1)

    wait_until(exported, 120, "the service's metrics on Ray's Prometheus endpoint")

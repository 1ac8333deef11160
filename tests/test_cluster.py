"""configs/cpu.yaml on a real three-node Ray cluster on 127.0.0.1, deployed with the `serve deploy`
CLI: replicas spread over nodes, an in-place config update with `python -m serve_app deploy`, and
the loss of a worker node, all under steady HTTP load; and `python -m serve_app deploy` refusing a
config no node can hold. Run alone with `pytest -m cluster`."""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app.launcher import RAY_ENV
from tests.cluster import LocalCluster
from benchmarks.harness import QUICK_SHUTDOWN_ENV, SHARED_IMAGES, SteadyLoad, deployment, free_port, sized_config, wait_until

pytestmark = pytest.mark.cluster

PHOTOS = sorted(SHARED_IMAGES.glob("*.JPEG"))[:20]


def cluster_config(port: int, classifier_replicas: int, max_batch_size: int) -> dict:
    def edit(config: dict) -> None:
        config["proxy_location"] = "HeadOnly"  # one HTTP port per machine, and several nodes share this one
        ingress, classifier = deployment(config, "Ingress"), deployment(config, "Classifier")
        ingress.pop("autoscaling_config")
        ingress["num_replicas"] = 1
        ingress["ray_actor_options"]["resources"] = {"ingress": 0.1}  # beside the proxy, on the head
        classifier.pop("autoscaling_config")
        classifier["num_replicas"] = classifier_replicas
        classifier["user_config"]["max_batch_size"] = max_batch_size

    return sized_config(port, classifier_cpus=0.5, edit=edit)


@pytest.fixture(scope="module")
def cluster():
    # Faster node-failure detection than Ray's default, so the test stays short.
    cluster = LocalCluster({**RAY_ENV, **QUICK_SHUTDOWN_ENV, "RAY_health_check_period_ms": "1000",
                            "RAY_health_check_failure_threshold": "3"})
    try:
        cluster.start_head(num_cpus=1, resources={"ingress": 1})
        cluster.add_worker("worker-a", num_cpus=1)
        cluster.add_worker("worker-b", num_cpus=1)
        cluster.port = free_port()
        cluster.url = f"http://127.0.0.1:{cluster.port}"
        cluster.serve_deploy(cluster_config(cluster.port, classifier_replicas=2, max_batch_size=16))
        wait_until(lambda: httpx.get(f"{cluster.url}/healthz", timeout=5).status_code == 200, 300, "service healthy")
        yield cluster
    finally:
        cluster.stop()


def test_deployed_service_answers_and_spreads_model_replicas_over_nodes(cluster):
    with httpx.Client(timeout=60) as client:
        statuses = [client.post(f"{cluster.url}/v1/classify", files={"file": (p.name, p.read_bytes(), "image/jpeg")}).status_code
                    for p in PHOTOS]
    assert statuses == [200] * len(PHOTOS)
    nodes = cluster.replica_nodes("Classifier")
    assert len(nodes) == 2 and len(set(nodes)) == 2, f"model replicas on {nodes}"
    assert cluster.serve_status()["applications"]["classifier"]["status"] == "RUNNING"


def test_in_place_update_rolls_out_without_failed_requests(cluster):
    def batch_size_is_live() -> bool:
        info = httpx.get(f"{cluster.url}/healthz", timeout=5).json()["replica"]
        return info["batching"]["max_batch_size"] == 4

    with SteadyLoad(f"{cluster.url}/v1/classify", PHOTOS) as load:
        time.sleep(2)
        started = time.monotonic()
        deployed = cluster.serve_app_deploy(cluster_config(cluster.port, classifier_replicas=3, max_batch_size=4))
        assert deployed.returncode == 0 and "running" in deployed.stdout, deployed.stdout + deployed.stderr
        wait_until(lambda: len(cluster.replica_nodes("Classifier")) == 3, 120, "a third model replica")
        wait_until(batch_size_is_live, 60, "the new max_batch_size live")
        time.sleep(3)
    during = load.since(started)
    print(f"in-place update: {len(during)} requests during the rollout, statuses {sorted(set(during))}")
    assert len(during) > 20 and set(during) == {200}, f"statuses during the update: {sorted(set(during))}"


def test_a_config_no_node_can_hold_is_refused_at_once_saying_what_to_change(cluster):
    config = cluster_config(cluster.port, classifier_replicas=2, max_batch_size=16)
    deployment(config, "Classifier")["ray_actor_options"]["num_cpus"] = 2  # every node here has 1 CPU
    started = time.monotonic()
    refused = cluster.serve_app_deploy(config)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "'Classifier' asks for 2 CPUs per replica" in refused.stderr
    assert "largest node has 1 CPUs" in refused.stderr and "Lower ray_actor_options for 'Classifier'" in refused.stderr
    assert time.monotonic() - started < 60
    assert len(cluster.replica_nodes("Classifier")) >= 2  # the running service was left alone


def test_losing_a_worker_node_under_load(cluster):
    victim = next(node for node in cluster.replica_nodes("Classifier") if node != "head")
    with SteadyLoad(f"{cluster.url}/v1/classify", PHOTOS) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        cluster.kill_node(victim)

        def full_capacity() -> bool:
            nodes = cluster.replica_nodes("Classifier")
            return len(nodes) == 3 and victim not in nodes and \
                cluster.serve_status()["applications"]["classifier"]["status"] == "RUNNING"

        recovered_at = wait_until(full_capacity, 60, "three model replicas on the surviving nodes")
        time.sleep(5)
    during = load.since(killed_at)
    failures = sum(status != 200 for status in during)
    print(f"node {victim} killed: {failures} of {len(during)} requests failed, "
          f"full capacity after {recovered_at - killed_at:.1f}s")
    assert len(during) > 50
    assert failures / len(during) < 0.01, f"{failures} of {len(during)} requests failed after the node loss"
    assert recovered_at - killed_at <= 30, f"back to full capacity after {recovered_at - killed_at:.0f}s"
    assert httpx.get(f"{cluster.url}/healthz", timeout=10).status_code == 200


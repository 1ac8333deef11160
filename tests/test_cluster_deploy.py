"""`python -m serve_app deploy` on a one-node Ray cluster of its own (127.0.0.1): a deployment that
fails says why, and the deploying shell's SERVE_APP_* overrides reach the replicas. (Its own module:
two clusters at once would both run an HAProxy on the same stats and metrics ports.)"""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app.launcher import RAY_ENV
from tests.cluster import LocalCluster
from benchmarks.harness import QUICK_SHUTDOWN_ENV, SHARED_IMAGES, free_port, sized_config

pytestmark = pytest.mark.cluster

PHOTOS = sorted(SHARED_IMAGES.glob("*.JPEG"))[:2]



@pytest.fixture(scope="module")
def one_node():
    cluster = LocalCluster({**RAY_ENV, **QUICK_SHUTDOWN_ENV})
    try:
        cluster.start_head(num_cpus=2)
        cluster.port = free_port()
        cluster.url = f"http://127.0.0.1:{cluster.port}"
        yield cluster
    finally:
        cluster.stop()


def test_a_deploy_whose_weights_cannot_be_found_says_why_within_30_s(one_node):
    config = sized_config(one_node.port, weights="/nonexistent/resnet18-f37072fd.pth")
    started = time.monotonic()
    failed = one_node.serve_app_deploy(config)
    elapsed = time.monotonic() - started
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert elapsed < 30, f"took {elapsed:.0f}s"
    assert "deployment 'Classifier' of application 'classifier' failed to start: WeightsError: weights file " \
           "/nonexistent/resnet18-f37072fd.pth does not exist." in failed.stderr, output
    assert "SERVE_APP_WEIGHTS" in failed.stderr, "the ways to provide weights come with it"
    assert 'File "' not in failed.stderr, "the exception, not the whole traceback"
    assert "/tmp/ray/session_latest/logs/serve/replica_classifier_Classifier_*.log" in failed.stderr


def test_overrides_set_in_the_deploying_shell_reach_the_replicas(one_node):
    """The config names the official weights, which this cluster does not have: only the deploying
    shell's SERVE_APP_WEIGHTS=standin makes it start. The API key travels too, and is never printed."""
    key = "k-7c1e-not-for-logs"
    deployed = one_node.serve_app_deploy(sized_config(one_node.port, weights="torchvision"),
                                         env={"SERVE_APP_WEIGHTS": "standin", "SERVE_APP_API_KEYS": key,
                                              "SERVE_APP_WEIGTHS": "typo"})
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0 and "running" in deployed.stdout, output
    assert "forwarding to the replicas (runtime_env env_vars): SERVE_APP_WEIGHTS=standin, " \
           "SERVE_APP_API_KEYS=********" in deployed.stdout
    assert key not in output
    assert "warning: SERVE_APP_WEIGTHS is set here but is not a setting this service reads" in deployed.stdout
    health = httpx.get(f"{one_node.url}/healthz", timeout=10).json()
    assert health["model"]["standin"] is True
    photo = PHOTOS[0]
    files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    assert httpx.post(f"{one_node.url}/v1/classify", files=files, timeout=60).status_code == 401
    authorized = httpx.post(f"{one_node.url}/v1/classify", files=files, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})
    assert authorized.status_code == 200 and authorized.json()["model"]["standin"] is True

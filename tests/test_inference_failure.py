"""A failed forward pass, over real Serve: it fails only its own batch, answered as JSON, and the
replica keeps serving. (Its own module: a second Serve beside test_service's would fight over
HAProxy's ports.)"""

import httpx
import pytest

from benchmarks.harness import free_port, processes_named, replica_title, serve_run, sized_config
from tests.test_service import classify

pytestmark = pytest.mark.serve


def test_a_failed_forward_pass_fails_only_its_batch_and_no_replica_restarts(shared_images):
    """The test-only hook (off in every shipped config) makes the model's backend fail its first two
    forward passes, as one that ran out of memory would."""
    from serve_app.settings import FAIL_FIRST_BATCHES_ENV_VAR

    def failing_twice(config: dict) -> None:
        config["applications"][0]["runtime_env"]["env_vars"][FAIL_FIRST_BATCHES_ENV_VAR] = "2"

    with serve_run(sized_config(free_port(), edit=failing_twice)) as base_url:
        replicas = set(processes_named(replica_title("Classifier")))
        with httpx.Client() as client:
            answers = [classify(base_url, path, client=client) for path in shared_images[:8]]
        assert [a.status_code for a in answers] == [500, 500] + [200] * 6
        for failed in answers[:2]:
            assert failed.json()["error"]["code"] == "inference_failed", failed.text
            assert "RuntimeError" in failed.json()["error"]["message"]
        assert set(processes_named(replica_title("Classifier"))) == replicas, "the replica kept serving"
        assert httpx.get(f"{base_url}/healthz").json()["status"] == "ok"

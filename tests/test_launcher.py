"""What `python -m serve_app deploy` says and sends, without a cluster (tests/test_cluster.py does it on one)."""

from __future__ import annotations

import pytest

from serve_app.launch.harness import load_config
from serve_app.launch.launcher import (
    LEAN_RAY_ENV,
    RAY_ENV,
    failure_cause,
    local_ray_env,
    unknown_service_variables,
    with_service_environment,
)

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`

# The shape of a deployment's status message when its constructor raised (Ray 2.60): Serve's
# summary, then the replica's traceback as Ray's task error prints it.
CONSTRUCTOR_FAILED = """The deployment failed to start 3 times in a row. This may be due to a problem with its \
constructor or initial health check failing. See controller logs for details. Error:
ray::ServeReplica:classifier:Classifier.initialize_and_get_metadata() (pid=4242, ip=127.0.0.1, \
actor_id=abc, repr=<ray.serve._private.replica.ServeReplica:classifier:Classifier object at 0x7f>)
  File "/work/main/serve_app/model/classifier.py", line 50, in __init__
    source = weights_for(settings)
  File "/work/main/serve_app/model/weights.py", line 80, in checked_file
    raise WeightsError(f"weights file {path} does not exist.\\n{how_to_provide()}")
serve_app.model.weights.WeightsError: weights file /models/resnet18.pth does not exist.
Provide the official ResNet-18 IMAGENET1K_V1 weights in one of these ways:
  2. set the `weights` setting (or SERVE_APP_WEIGHTS) to the file's path, or"""


def test_a_failure_is_told_by_its_exception_type_and_message_alone():
    cause = failure_cause(CONSTRUCTOR_FAILED)
    assert cause.startswith("WeightsError: weights file /models/resnet18.pth does not exist.\nProvide the official")
    assert "SERVE_APP_WEIGHTS" in cause and 'File "' not in cause and "initialize_and_get_metadata" not in cause


def test_a_message_without_a_traceback_is_kept_whole():
    assert failure_cause("Failed to update the deployments ['Classifier'].") == \
        "Failed to update the deployments ['Classifier']."


def test_the_deploying_shells_overrides_travel_in_every_applications_runtime_env():
    config = load_config("cpu.yaml")
    environ = {"SERVE_APP_WEIGHTS": "/models/mine.pth", "SERVE_APP_API_KEYS": "secret-1,secret-2",
               "SERVE_APP_CACHE": "", "HOME": "/root", "SERVE_APP_WIEGHTS": "typo"}
    sent, shown = with_service_environment(config, environ)
    env_vars = sent["applications"][0]["runtime_env"]["env_vars"]
    assert env_vars["SERVE_APP_WEIGHTS"] == "/models/mine.pth" and env_vars["SERVE_APP_API_KEYS"] == "secret-1,secret-2"
    assert env_vars["RAY_max_direct_call_object_size"] == "262144", "the config's own variables stay"
    assert "SERVE_APP_CACHE" not in env_vars and "HOME" not in env_vars
    assert shown == "SERVE_APP_WEIGHTS=/models/mine.pth, SERVE_APP_API_KEYS=********"
    assert "SERVE_APP_WEIGHTS" not in config["applications"][0]["runtime_env"]["env_vars"], "the file is untouched"
    assert unknown_service_variables(environ) == ["SERVE_APP_WIEGHTS"]


def test_nothing_set_here_sends_the_config_as_written():
    config = load_config("cpu.yaml")
    assert with_service_environment(config, {"HOME": "/root"}) == (config, "")


def test_a_local_run_is_lean_unless_the_dashboard_is_asked_for():
    lean, full = local_ray_env(dashboard=False), local_ray_env(dashboard=True)
    assert set(LEAN_RAY_ENV.items()) <= set(lean.items()) and set(RAY_ENV.items()) <= set(lean.items())
    assert not set(LEAN_RAY_ENV) & set(full), "--dashboard keeps Ray's own defaults"
    assert set(RAY_ENV.items()) <= set(full.items()), "the throughput settings stay either way"
    assert lean["RAY_USAGE_STATS_ENABLED"] == "0" and lean["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "1"

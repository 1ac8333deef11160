"""The model deployment's autoscaling signal: images inside its replicas, averaged over time.

(End to end, tests/test_scaling.py drives a real deployment up and down with this policy: at
concurrency 12 one ingress replica sends one call at a time, so Serve's count of ongoing calls
stays at 1 and could never ask for a second replica.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.serve.config import AutoscalingConfig

from serve_app.launch.harness import deployment, load_config
from serve_app.model.autoscaling import IMAGES_IN_FLIGHT, ImagesInFlight, TimeAverage

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_mean_is_weighted_by_how_long_each_level_lasted():
    clock = Clock()
    images = TimeAverage(clock)
    images.add(16)  # a call of 16 images for 1 s
    clock.now += 1.0
    images.add(-16)  # then nothing for 3 s
    clock.now += 3.0
    assert images.mean_since_last_read() == pytest.approx(4.0)
    images.add(8)
    clock.now += 2.0
    assert images.mean_since_last_read() == pytest.approx(8.0), "each read starts a new window"
    assert images.level == 8


def context(replicas: int, images: dict, target_replicas: int | None = None):
    return SimpleNamespace(current_num_replicas=replicas, target_num_replicas=target_replicas or replicas,
                           aggregated_metrics={IMAGES_IN_FLIGHT: images} if images is not None else {})


def test_replicas_follow_images_per_replica_against_the_target():
    policy = ImagesInFlight(target_images_per_replica=24)
    assert policy(context(1, {"a": 48.0}))[0] == pytest.approx(2.0), "twice the target on one replica: two"
    assert policy(context(4, {"a": 6.0, "b": 6.0, "c": 6.0, "d": 6.0}))[0] == pytest.approx(1.0)
    assert policy(context(2, {"a": 30.0}))[0] == pytest.approx(2.5), "a replica not yet reporting counts as the mean"


def test_without_reports_the_policy_holds_the_current_target():
    policy = ImagesInFlight(24)
    assert policy(context(3, None, target_replicas=3))[0] == 3
    assert policy(context(0, {}, target_replicas=1))[0] == 1


def test_the_shipped_configs_scale_the_model_on_images_in_flight():
    for name in ("cpu.yaml", "gpu.yaml"):
        scaling = deployment(load_config(name), "Classifier")["autoscaling_config"]
        config = AutoscalingConfig(**scaling)  # what Serve validates on deploy
        policy = config.policy
        assert policy.policy_function == "serve_app.model.autoscaling:ImagesInFlight", name
        assert ImagesInFlight(**policy.policy_kwargs).target > 0

"""Fitting the shipped configs to a machine or a cluster (serve_app/launch/fitting.py): pure, no Ray."""

import math

import pytest

from serve_app.launch.fitting import (
    DoesNotFit,
    check_cluster_fit,
    demands,
    fit_to_machine,
    minimum,
    unschedulable_message,
)
from serve_app.launch.harness import deployment, load_config

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`


def minimum_cpus(config) -> float:
    return minimum(demands(config))[0]


def test_cpu_config_shrinks_its_cpu_shares_to_fit_two_cores():
    config = load_config("cpu.yaml")
    assert minimum_cpus(config) > 2  # as shipped it cannot start on 2 cores: the reason fitting exists
    fitted = fit_to_machine(config, cpus=2, gpus=0)
    assert minimum_cpus(fitted.config) <= 2
    classifier = deployment(fitted.config, "Classifier")["ray_actor_options"]["num_cpus"]
    assert math.ceil(classifier) == 2  # the replica still runs two intra-op threads
    assert any("shrinks to fit" in change for change in fitted.changes)
    # Nothing else moves, and the shipped dict is left as it was.
    assert deployment(config, "Classifier")["ray_actor_options"]["num_cpus"] == 2
    assert deployment(fitted.config, "Classifier")["user_config"] == deployment(config, "Classifier")["user_config"]


def test_cpu_config_keeps_its_shares_on_sixteen_cores_and_autoscales_only_to_what_they_hold():
    config = load_config("cpu.yaml")
    fitted = fit_to_machine(config, cpus=16, gpus=0)
    for name in ("Ingress", "Classifier"):
        assert deployment(fitted.config, name)["ray_actor_options"] == deployment(config, name)["ray_actor_options"]
    for d in demands(fitted.config):
        others = sum(o.min_replicas * o.cpus for o in demands(fitted.config) if o.name != d.name)
        assert d.max_replicas * d.cpus + others <= 16
        assert d.max_replicas >= d.min_replicas
    classifier = next(d for d in demands(fitted.config) if d.name == "Classifier")
    ingress = next(d for d in demands(fitted.config) if d.name == "Ingress")
    assert classifier.max_replicas == (16 - ingress.min_replicas * ingress.cpus) // classifier.cpus, \
        "as many classifiers as the CPUs beside the Ingress's minimum hold"


def test_gpu_config_fits_a_gpu_node_and_is_refused_without_a_gpu():
    config = load_config("gpu.yaml")
    fitted = fit_to_machine(config, cpus=16, gpus=1)
    classifier = next(d for d in demands(fitted.config) if d.name == "Classifier")
    assert classifier.max_replicas == 2  # two replicas share the one GPU
    with pytest.raises(DoesNotFit, match=r"'Classifier' asks for 1 CPU and 0.5 GPUs per replica.*has 0 GPU"):
        fit_to_machine(config, cpus=16, gpus=0)


def test_a_replica_bigger_than_every_node_is_refused_naming_it_and_what_to_change():
    nodes = [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    with pytest.raises(DoesNotFit) as refused:
        check_cluster_fit(load_config("cpu.yaml"), nodes, "configs/cpu.yaml")
    message = str(refused.value)
    assert "'Classifier' asks for 2 CPUs per replica" in message
    assert "largest node has 1 CPUs" in message and "3 node(s)" in message
    assert "Lower ray_actor_options for 'Classifier' in configs/cpu.yaml" in message


def test_minimum_replicas_beyond_the_cluster_today_are_a_warning_for_autoscaling_clusters():
    warnings = check_cluster_fit(load_config("cpu.yaml"), [{"CPU": 2.0}], "configs/cpu.yaml")
    assert len(warnings) == 1 and "ask for 3 CPUs" in warnings[0]
    assert check_cluster_fit(load_config("cpu.yaml"), [{"CPU": 16.0}]) == []


def test_the_waiting_message_names_the_deployment_its_ask_and_what_ray_has():
    message = unschedulable_message(
        load_config("cpu.yaml"), "Ingress", {"CPU": 2.0, "memory": 1e9, "node:127.0.0.1": 1.0}, {"CPU": 0.0}, 12.3,
        "configs/cpu.yaml",
    )
    assert message.startswith("'Ingress' asks for 1 CPU per replica")
    assert "waited 12s" in message and "{CPU: 2} in all, {CPU: 0} free" in message
    assert "node:" not in message and "memory" not in message

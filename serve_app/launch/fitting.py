"""Does a Serve config fit the machine or cluster it is about to run on? Pure functions over the config.

`configs/cpu.yaml` is sized for cluster nodes (a Classifier replica asks for 2 CPUs, an Ingress
replica for 1). On one machine, `python -m serve_app serve` fits it to what Ray found there:
  - CPU shares shrink in proportion when the deployments' minimum replicas ask for more CPUs than
    the machine has (fractional CPUs are a scheduling share; a replica still runs as many threads
    as its share rounded up), and
  - `max_replicas` is capped at what the machine can hold beside the other deployments' minimum,
    so autoscaling never asks for replicas that could only wait for resources.
GPUs are never shrunk: a config that needs a GPU on a machine without one cannot fit.
On a cluster the config is left as written, but a replica that no node can hold is refused.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

CPU_SHARE_STEP = 0.01  # CPU shares are rounded down to this, so the rounded ones still fit


class DoesNotFit(RuntimeError):
    """The config asks for resources the machine or cluster does not have; the message says what to change."""


@dataclass(frozen=True)
class Demand:
    """What one deployment of a config asks for."""

    name: str
    min_replicas: int
    max_replicas: int
    cpus: float  # per replica
    gpus: float  # per replica
    autoscaling: bool

    def describe(self) -> str:
        asks = f"{_amount(self.cpus)} CPU" + ("" if self.cpus == 1 else "s")
        if self.gpus:
            asks += f" and {_amount(self.gpus)} GPU" + ("" if self.gpus == 1 else "s")
        return f"{self.name!r} asks for {asks} per replica, at least {self.min_replicas} replica(s)"


@dataclass(frozen=True)
class Fitted:
    config: dict[str, Any]
    changes: list[str]  # one line per change, for the terminal


def demands(config: dict[str, Any]) -> list[Demand]:
    """Every deployment named in the config's applications, with Ray Serve's defaults where a key is absent."""
    found = []
    for application in config.get("applications", []):
        for deployment in application.get("deployments", []):
            actor = deployment.get("ray_actor_options") or {}
            scaling = deployment.get("autoscaling_config")
            replicas = deployment.get("num_replicas", 1)
            if scaling or replicas == "auto":
                scaling = scaling or {}
                low, high = scaling.get("min_replicas", 1), scaling.get("max_replicas", 1)
            else:
                low = high = int(replicas)
            found.append(Demand(
                name=deployment["name"], min_replicas=low, max_replicas=max(low, high),
                cpus=float(actor.get("num_cpus", 1)), gpus=float(actor.get("num_gpus", 0)),
                autoscaling=bool(scaling),
            ))
    return found


def minimum(wanted: list[Demand]) -> tuple[float, float]:
    """CPUs and GPUs that the deployments' minimum replicas ask for together."""
    return sum(d.min_replicas * d.cpus for d in wanted), sum(d.min_replicas * d.gpus for d in wanted)


def fit_to_machine(config: dict[str, Any], cpus: float, gpus: float, config_name: str = "the config") -> Fitted:
    """The config with CPU shares and replica caps this one machine can hold, or DoesNotFit."""
    wanted = demands(config)
    cpus_needed, gpus_needed = minimum(wanted)
    if gpus_needed > gpus:
        needy = ", ".join(d.describe() for d in wanted if d.gpus)
        raise DoesNotFit(
            f"{config_name} does not fit this machine: {needy}, and this machine has {_amount(gpus)} GPU(s). "
            "Serve configs/cpu.yaml here (`make serve`), or run this config on a node with a GPU."
        )
    scale = min(1.0, cpus / cpus_needed) if cpus_needed else 1.0
    fitted = copy.deepcopy(config)
    changes = []
    shares = {}
    for d in wanted:
        share = d.cpus if scale == 1.0 else max(CPU_SHARE_STEP, math.floor(d.cpus * scale / CPU_SHARE_STEP) * CPU_SHARE_STEP)
        shares[d.name] = round(share, 2)
        if shares[d.name] != d.cpus:
            _deployment(fitted, d.name).setdefault("ray_actor_options", {})["num_cpus"] = shares[d.name]
            changes.append(f"{d.name}: num_cpus {_amount(d.cpus)} -> {_amount(shares[d.name])}")
    if scale < 1.0:
        changes.insert(0, (
            f"this machine has {_amount(cpus)} CPUs and {config_name} asks for {_amount(cpus_needed)} at its minimum "
            "replicas, so each replica's CPU share shrinks to fit (it still runs on all the cores its share rounds up to):"
        ))
    for d in wanted:
        if not d.autoscaling:
            continue
        others = sum(o.min_replicas * shares[o.name] for o in wanted if o.name != d.name)
        others_gpus = sum(o.min_replicas * o.gpus for o in wanted if o.name != d.name)
        room = math.floor((cpus - others) / shares[d.name] + 1e-9) if shares[d.name] else d.max_replicas
        if d.gpus:
            room = min(room, math.floor((gpus - others_gpus) / d.gpus + 1e-9))
        cap = max(d.min_replicas, min(d.max_replicas, room))
        if cap < d.max_replicas:
            _deployment(fitted, d.name)["autoscaling_config"]["max_replicas"] = cap
            changes.append(f"{d.name}: max_replicas {d.max_replicas} -> {cap} (what this machine holds beside the rest)")
    return Fitted(fitted, changes)


def check_cluster_fit(config: dict[str, Any], nodes: list[dict[str, float]], config_name: str = "the config") -> list[str]:
    """DoesNotFit when some replica is bigger than every node; else warnings (the minimum replicas need
    more than the cluster has now, which only an autoscaling cluster can resolve)."""
    if not nodes:
        raise DoesNotFit("the cluster has no alive nodes")
    wanted = demands(config)
    largest_cpus = max(node.get("CPU", 0.0) for node in nodes)
    largest_gpus = max(node.get("GPU", 0.0) for node in nodes)
    for d in wanted:
        if d.cpus > largest_cpus or d.gpus > largest_gpus:
            raise DoesNotFit(
                f"{config_name} does not fit this cluster: {d.describe()}, and its largest node has "
                f"{_amount(largest_cpus)} CPUs and {_amount(largest_gpus)} GPUs ({len(nodes)} node(s)). "
                f"Lower ray_actor_options for {d.name!r} in {config_name}, or add nodes that big."
            )
    total_cpus = sum(node.get("CPU", 0.0) for node in nodes)
    total_gpus = sum(node.get("GPU", 0.0) for node in nodes)
    cpus_needed, gpus_needed = minimum(wanted)
    if cpus_needed > total_cpus or gpus_needed > total_gpus:
        return [
            f"the minimum replicas ask for {_amount(cpus_needed)} CPUs and {_amount(gpus_needed)} GPUs, and the "
            f"cluster has {_amount(total_cpus)} and {_amount(total_gpus)} now: only an autoscaling cluster can start them"
        ]
    return []


def unschedulable_message(config: dict[str, Any], deployment: str, total: dict[str, float],
                          free: dict[str, float], waited_s: float, config_name: str = "the config") -> str:
    """What a user sees when a deployment's replicas keep waiting for resources."""
    d = next((d for d in demands(config) if d.name == deployment), None)
    asks = d.describe() if d else f"{deployment!r}"
    return (
        f"{asks}, and its replicas have waited {waited_s:.0f}s for resources: "
        f"Ray has {_resources(total)} in all, {_resources({k: free.get(k, 0.0) for k in total})} free. "
        f"Lower ray_actor_options (num_cpus, num_gpus, resources) or the replicas of {deployment!r} in "
        f"{config_name}, or add nodes."
    )


def _deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for a in config["applications"] for d in a.get("deployments", []) if d["name"] == name)


def _amount(value: float) -> str:
    return f"{value:g}"


def _resources(resources: dict[str, float]) -> str:
    internal = ("memory", "object_store_memory")
    shown = {k: v for k, v in resources.items() if k not in internal and not k.startswith("node:")}
    return "{" + ", ".join(f"{k}: {_amount(v)}" for k, v in sorted(shown.items())) + "}"

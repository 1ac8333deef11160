"""Run the real service the way users do (`serve run <config>`) on loopback, and stop it cleanly.

Used by the end-to-end tests and the benchmarks. The config is the repository's own file with
only the overrides a 2-core test machine needs (host, port, weights, CPU shares).
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import yaml

from serve_app.launch.launcher import (
    RAY_ENV,  # what `python -m serve_app serve` sets; baselines pass env={}
)
from serve_app.launch.processes import kill_all, processes
from serve_app.settings import METRICS_PORT_ENV_VAR

REPO = Path(__file__).resolve().parents[2]


# In throughput mode an ingress replica keeps answering for 30 s after it is told to stop, for
# load balancers in front of it to notice. In front of a test service there is only the HAProxy
# that Serve runs, which health-checks replicas every 250 ms.
QUICK_SHUTDOWN_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


# Ports for the services tests and benchmarks start come from a range nothing else here allocates
# from: under the kernel's ephemeral range (32768-60999), where every process's port-0 sockets land,
# Ray's replicas' internal gRPC servers among them, and where Serve keeps its direct-ingress gRPC
# ports (40000-41000); over Ray's worker ports (10002-19999) and under Serve's direct-ingress HTTP
# ports (30000-31000). A port-0 pick could be taken again by the time the service bound it.
FREE_PORTS = range(21000, 30000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port of 127.0.0.1 that is free now, and not handed out before by this process."""
    for port in random.sample(FREE_PORTS, 500):
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {FREE_PORTS.start}-{FREE_PORTS.stop - 1} on 127.0.0.1")


def load_config(name: str = "cpu.yaml", source: Path = REPO) -> dict[str, Any]:
    """A config file of this checkout, or of another one (`source`)."""
    return yaml.safe_load((source / "configs" / name).read_text())


def grpc_address(config: dict[str, Any]) -> str:
    """Where a config's gRPC port answers on this machine (host:port)."""
    return f"127.0.0.1:{config['grpc_options']['port']}"


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def sized_config(
    port: int,
    *,
    weights: str = "standin",
    backend: str | None = None,
    ingress_cpus: float = 0.25,
    classifier_cpus: float = 0.5,
    edit: Callable[[dict[str, Any]], None] | None = None,
    source: Path = REPO,
    result_cache: bool = False,
) -> dict[str, Any]:
    """configs/cpu.yaml (of this checkout, or of `source`), sized for 2 cores and bound to 127.0.0.1:port
    (its gRPC port, where it has one, to a free port: grpc_port() reads it). Its result cache is off
    unless `result_cache`: tests and benchmarks send the same photos again and again, to the model."""
    config = copy.deepcopy(load_config(source=source))
    config["http_options"].update(host="127.0.0.1", port=port)
    if "grpc_options" in config:
        config["grpc_options"]["port"] = free_port()
    config["applications"][0]["args"]["model"]["weights"] = weights
    if backend:
        config["applications"][0]["args"]["model"]["backend"] = backend
    deployment(config, "Ingress")["ray_actor_options"]["num_cpus"] = ingress_cpus
    deployment(config, "Classifier")["ray_actor_options"]["num_cpus"] = classifier_cpus
    if not result_cache:
        without_result_cache(config)
    if edit:
        edit(config)
    return config


def without_result_cache(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with every application's result cache off (a config from before the cache has none)."""
    for application in config["applications"]:
        cache = application.get("args", {}).get("ingress", {}).get("cache")
        if cache is not None:
            cache["enabled"] = False
    return config


def replica_title(deployment_name: str, application: str = "classifier") -> str:
    """The process title Ray gives a replica of the app's deployment (`ray::ServeReplica:<app>:<name>`)."""
    return f"ServeReplica:{application}:{deployment_name}"


def beside(config: dict[str, Any], name: str, other: dict[str, Any]) -> dict[str, Any]:
    """`config` with `other`'s application added as a second one, named `name` and served at /`name`:
    two variants of the service on one Ray and one Serve (so tests start them once)."""
    application = copy.deepcopy(other["applications"][0])
    application.update(name=name, route_prefix=f"/{name}")
    config["applications"].append(application)
    return config


def fast_autoscaling(config: dict) -> None:
    """configs/cpu.yaml's autoscaling, with delays short enough for a test and 2 replicas on 2 cores."""
    classifier = deployment(config, "Classifier")
    classifier["autoscaling_config"].update(
        min_replicas=1, max_replicas=2, initial_replicas=1,
        upscale_delay_s=1, downscale_delay_s=4, metrics_interval_s=0.5, look_back_period_s=2,
    )
    classifier["autoscaling_config"]["policy"]["policy_kwargs"]["target_images_per_replica"] = 2
    classifier["ray_actor_options"]["num_cpus"] = 0.5
    ingress = deployment(config, "Ingress")
    ingress.pop("autoscaling_config", None)
    ingress["num_replicas"] = 1


def healthz_ok(base_url: str) -> bool:
    return httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200


def every_application_healthy(config: dict[str, Any]) -> Callable[[str], bool]:
    prefixes = [app.get("route_prefix", "/").rstrip("/") for app in config["applications"]]
    return lambda base_url: all(healthz_ok(base_url + prefix) for prefix in prefixes)


@contextmanager
def serve_run(
    config: dict[str, Any],
    startup_timeout_s: float = 240.0,
    ready: Callable[[str], bool] | None = None,
    env: dict[str, str] | None = None,
    source: Path = REPO,
    launcher: bool = False,
) -> Iterator[str]:
    """Start `serve run` on `config` in its own session (with `launcher`: `python -m serve_app serve
    --as-written`, the stack `make serve` runs, with its own Ray settings); yield the base URL once
    ready (by default: once every application of the config answers /healthz under its route prefix).
    `source` is the checkout whose serve_app runs (another one is put first on every Ray process's path)."""
    workdir = Path(tempfile.mkdtemp(prefix="serve-app-test-"))
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**QUICK_SHUTDOWN_ENV, **(RAY_ENV if env is None else env)}
    if launcher:
        command = [sys.executable, "-m", "serve_app", "serve", "--config", str(config_path), "--as-written"]
        env.setdefault(METRICS_PORT_ENV_VAR, str(free_port()))
    else:
        command = [str(Path(sys.executable).with_name("serve")), "run", str(config_path)]
    if source != REPO:
        env["PYTHONPATH"] = str(source)
    with running(command, workdir / "serve.log", env, cwd=source) as process:
        wait_ready(f"http://127.0.0.1:{config['http_options']['port']}", process, startup_timeout_s,
                   ready or every_application_healthy(config))
        yield f"http://127.0.0.1:{config['http_options']['port']}"


@contextmanager
def running(
    command: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    """Run `command` from the repository root (or `cwd`) in its own session; stop all of it afterwards."""
    base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SERVE_APP_WEIGHTS")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env={**base_env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_as_from_a_terminal,
        )
        process.log_path = log_path
        try:
            yield process
        finally:
            stop(process)


def _as_from_a_terminal() -> None:
    """Ctrl-C reaches the process, even when these tests run under a shell that started them in the
    background, which makes children ignore SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_ready(base_url: str, process: subprocess.Popen, timeout_s: float, ready: Callable[[str], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{_tail(process)}")
        try:
            if ready(base_url):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"not ready after {timeout_s}s:\n{_tail(process)}")


def _tail(process: subprocess.Popen) -> str:
    return Path(process.log_path).read_text(errors="replace")[-4000:]


def process_memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}


def processes_named(fragment: str) -> list[int]:
    """PIDs whose command line contains fragment (Ray titles replicas `ray::ServeReplica:<app>:<deployment>`)."""
    return [process.pid for process in processes() if fragment in process.command]


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C (Serve and Ray shut down), then make sure nothing the command started survives. Ray's
    workers run in process groups of their own, and so does the HAProxy one of them starts, but
    all stay in the command's session."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    kill_all(session_members(process.pid))  # the command itself included
    process.wait()


def session_members(session_id: int) -> list[int]:
    """Processes of the session still running (a zombie has exited; only its parent can collect it)."""
    return [process.pid for process in processes() if process.session == session_id and process.state != "Z"]


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when it came back
    status: int  # 0: no HTTP answer at all
    photo: Path
    top_index: int | None  # the top class of a 200 from /v1/classify


class SteadyLoad:
    """`concurrency` clients posting photos from a background thread until the block ends; every
    answer is kept with the time it came back and the photo it was for."""

    def __init__(self, url: str, photos: list[Path], concurrency: int = 4, headers: dict | None = None):
        self.url, self.photos, self.concurrency, self.headers = url, photos, concurrency, headers or {}
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits, headers=self.headers) as client:
            async def worker(offset: int) -> None:
                n = offset
                while not self._stop.is_set():
                    path = self.photos[n % len(self.photos)]
                    top_index = None
                    try:
                        response = await client.post(self.url, files={"file": (path.name, path.read_bytes(), "image/jpeg")})
                        status = response.status_code
                        if status == 200 and "predictions" in (body := response.json()):
                            top_index = body["predictions"][0]["index"]
                    except httpx.HTTPError:
                        status = 0
                    self.answers.append(Answer(time.monotonic(), status, path, top_index))
                    n += self.concurrency

            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    def __enter__(self) -> "SteadyLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def since(self, moment: float = 0.0) -> list[int]:
        return [answer.status for answer in self.answers if answer.at >= moment]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` every half second; the moment it held, or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.monotonic()
        except (httpx.HTTPError, RuntimeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not within {timeout_s}s: {what}")

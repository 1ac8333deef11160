"""Run the real service the way users do (`serve run <config>`) on loopback, and stop it cleanly.

Used by the end-to-end tests and the benchmarks. The config is the repository's own file with
only the overrides a 2-core test machine needs (host, port, weights, CPU shares).
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_config(name: str = "cpu.yaml") -> dict[str, Any]:
    return yaml.safe_load((REPO / "configs" / name).read_text())


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def sized_config(
    port: int,
    *,
    weights: str = "standin",
    ingress_cpus: float = 0.25,
    classifier_cpus: float = 0.5,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """configs/cpu.yaml, sized for 2 cores and bound to 127.0.0.1:port."""
    config = copy.deepcopy(load_config())
    config["http_options"].update(host="127.0.0.1", port=port)
    config["applications"][0]["args"]["model"]["weights"] = weights
    deployment(config, "Ingress")["ray_actor_options"]["num_cpus"] = ingress_cpus
    deployment(config, "Classifier")["ray_actor_options"]["num_cpus"] = classifier_cpus
    if edit:
        edit(config)
    return config


@contextmanager
def serve_run(config: dict[str, Any], startup_timeout_s: float = 240.0) -> Iterator[str]:
    """Start `serve run` on `config` in its own process group; yield the base URL once healthy."""
    port = config["http_options"]["port"]
    base_url = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="serve-app-test-"))
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(workdir / "serve.log", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SERVE_APP_WEIGHTS")}
    serve_cli = Path(sys.executable).with_name("serve")
    process = subprocess.Popen(
        [str(serve_cli), "run", str(config_path)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_healthy(base_url, process, startup_timeout_s, workdir / "serve.log")
        yield base_url
    finally:
        stop(process)
        log.close()


def wait_healthy(base_url: str, process: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"service not healthy after {timeout_s}s:\n{log_path.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C (Serve and Ray shut down), then make sure nothing of the group survives."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()

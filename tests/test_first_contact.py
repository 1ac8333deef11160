"""The README's quickstart exactly as written: `SERVE_APP_WEIGHTS=standin make serve`, unmodified
configs/cpu.yaml, port 8000, on whatever machine runs the tests (2 cores in CI); and the loud
failures of configs that cannot fit the machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.launch.harness import (
    REPO,
    healthz_ok,
    load_config,
    running,
    session_members,
    wait_ready,
)
from serve_app.launch.launcher import port_is_free
from serve_app.launch.processes import kill_all, process_name
from serve_app.model.artifacts import EXPORT_STEPS
from serve_app.model.cache import cache_folder
from serve_app.model.calibration import held_out_files
from serve_app.settings import CACHE_ENV_VAR

pytestmark = pytest.mark.serve

BASE_URL = "http://127.0.0.1:8000"  # configs/cpu.yaml's port, as a user reaches it
READY_WITH_CACHE_S = 60
STOPPED_WITHIN_S = 10
MAKE_SERVE = "$(PY) -m serve_app serve --config $(CONFIG)"  # the Makefile's recipe for `make serve`


@dataclass
class Run:
    log: str
    ready_after_s: float
    stopped_after_s: float
    left_running: list[str]


def ctrl_c(process: subprocess.Popen) -> None:
    """What Ctrl-C in a terminal does: SIGINT to the foreground process group."""
    os.killpg(process.pid, signal.SIGINT)


def sigterm_twice(process: subprocess.Popen) -> None:
    """What `kill`, `docker stop` and systemd do: SIGTERM to the process alone; then, as an impatient
    operator or supervisor would, more of them all the while it is stopping (Ray's shutdown resets
    SIGTERM to its default action part way through), none of which may cut the stop short."""
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "stopping" not in Path(process.log_path).read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.05)
    while process.poll() is None and time.monotonic() < deadline:
        if Path(process.log_path).read_text(errors="replace").rstrip().endswith("stopped"):
            break  # said, and past the stop: from here on a SIGTERM ends it as it would any process
        process.send_signal(signal.SIGTERM)
        time.sleep(0.1)


def serve_until_ready_then_stop(command: list[str], log_path: Path, env: dict[str, str], while_up=None,
                                stop=ctrl_c) -> Run:
    """Start `command` in a session of its own, wait for /healthz, run `while_up`, then `stop` it and
    see what is still there afterwards."""
    assert port_is_free("0.0.0.0", 8000), "port 8000 is taken: something else is serving there"
    started = time.monotonic()

    def says_ready_and_answers(base_url: str) -> bool:
        return f"ready: {base_url}" in log_path.read_text(errors="replace") and healthz_ok(base_url)

    with running(command, log_path, env) as process:
        wait_ready(BASE_URL, process, 600, says_ready_and_answers)
        ready_after = time.monotonic() - started
        if while_up:
            while_up()
        interrupted = time.monotonic()
        stop(process)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        stopped_after = time.monotonic() - interrupted
        left = [f"{pid} {process_name(pid)}" for pid in session_members(process.pid)]
    return Run(log_path.read_text(errors="replace"), ready_after, stopped_after, left)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache of its own, so the first run really builds the stand-in and the artifacts."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def first_run(cache, tmp_path_factory) -> Run:
    log = tmp_path_factory.mktemp("first") / "make-serve.log"
    run = serve_until_ready_then_stop(["make", "serve"], log, {"SERVE_APP_WEIGHTS": "standin", CACHE_ENV_VAR: str(cache)})
    seed_the_session_cache(cache)
    return run


def seed_the_session_cache(built: Path) -> None:
    """What the first run built is what the rest of the suite needs (the same stand-in and artifacts,
    keyed by the same hashes): copy into the session's cache what it does not hold yet, so a clean
    machine builds them once. (conftest.py runs this module first.)"""
    target = cache_folder()
    for entry in [*built.glob("*.pt"), *(built / "artifacts").glob("*-checked")]:
        destination = target / entry.relative_to(built)
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = destination.with_name(f".seeding-{destination.name}")
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, staging)
        os.replace(staging, destination)


def test_first_make_serve_says_what_it_does_while_it_builds_its_cache_and_stops_on_ctrl_c(first_run):
    lines = first_run.log.splitlines()

    def index(fragment: str) -> int:
        found = [i for i, line in enumerate(lines) if fragment in line]
        assert found, f"{fragment!r} not in the output:\n{first_run.log}"
        return found[0]

    steps = [index(f"[{n}/{EXPORT_STEPS}]") for n in range(1, EXPORT_STEPS + 1)]
    assert steps == sorted(steps), "the artifact steps in order"
    assert (
        index("weights ok: standin") < index("Ray found") < index("building model artifacts")
        < steps[0] and steps[-1] < index("INT8 agrees with FP32 on") < index("artifacts ok: onnx-int8")
        < index("replicas starting") < index(f"ready: {BASE_URL}")
    )
    assert "curl -F file=@photo.jpg http://127.0.0.1:8000/v1/classify" in first_run.log
    assert first_run.stopped_after_s < STOPPED_WITHIN_S and not first_run.left_running, first_run.left_running
    assert port_is_free("0.0.0.0", 8000)


def test_with_its_cache_it_is_ready_within_a_minute_answers_and_sigterm_stops_everything_it_started(
    first_run, cache, shared_images, tmp_path
):
    """The command `make serve` runs, as a container or supervisor runs it: `kill`, `docker stop` and
    systemd send SIGTERM to that process alone; then, as an impatient operator or supervisor would,
    a second one while it is stopping, which must not cut the stop short. (The first run above
    stopped on Ctrl-C.)"""
    def answers():
        health = httpx.get(f"{BASE_URL}/healthz", timeout=10).json()
        assert health["model"]["standin"] is True and health["model"]["backend"] == "onnx-int8"
        check = health["replica"]["int8_check"]
        assert check["top1_agreement"] >= check["min_agreement"] and check["images"] == len(held_out_files()), check
        photo = shared_images[0]
        response = httpx.post(f"{BASE_URL}/v1/classify", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                              timeout=30)
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 3
        again = httpx.post(f"{BASE_URL}/v1/classify?top_k=3", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                           timeout=30)
        assert again.headers["X-Cache"] == "hit", "the shipped config answers a repeat from its result cache"
        assert again.json() == response.json()
        page = httpx.get(f"{BASE_URL}/", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<html" in page.text.lower()

    assert MAKE_SERVE in (REPO / "Makefile").read_text(), "the command `make serve` runs"
    run = serve_until_ready_then_stop(
        MAKE_SERVE.replace("$(PY)", sys.executable).replace("$(CONFIG)", "configs/cpu.yaml").split(),
        tmp_path / "serve.log", {"SERVE_APP_WEIGHTS": "standin", CACHE_ENV_VAR: str(cache)},
        while_up=answers, stop=sigterm_twice,
    )
    print(f"serve with its cache: ready after {run.ready_after_s:.1f}s, stopped {run.stopped_after_s:.1f}s "
          "after SIGTERM")
    assert "building model artifacts" not in run.log
    assert run.ready_after_s < READY_WITH_CACHE_S, run.log
    assert "Traceback" not in run.log, "the second SIGTERM broke into the stop"
    assert "SIGTERM received" not in run.log, "Ray's own handler took the signal: nothing was stopped cleanly"
    assert run.log.rstrip().endswith("stopped"), run.log
    assert run.stopped_after_s < STOPPED_WITHIN_S, run.log
    assert not run.left_running, f"still running after SIGTERM: {run.left_running}"
    assert port_is_free("0.0.0.0", 8000)


def fails(command: list[str], env: dict[str, str], timeout_s: float = 120) -> tuple[int, str, float]:
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    finally:
        left = session_members(process.pid)
        kill_all(left)
    assert not left, f"left running: {left}"
    return process.returncode, output, time.monotonic() - started


def test_gpu_config_on_a_machine_without_a_gpu_fails_at_once_saying_what_to_use():
    code, output, took = fails([sys.executable, "-m", "serve_app", "serve", "--config", "configs/gpu.yaml"],
                               {"SERVE_APP_WEIGHTS": "standin"})
    assert code == 1, output
    assert "'Classifier' asks for" in output and "0.5 GPUs per replica" in output
    assert "this machine has 0 GPU(s)" in output and "configs/cpu.yaml" in output
    assert took < 60


def test_config_kept_as_written_that_the_machine_cannot_hold_fails_within_a_minute(first_run, cache, tmp_path):
    """The Classifier asks for every CPU of the machine and the Ingress for one more: one of them can
    never be scheduled. Serve only logs that; the command must stop and say it."""
    config = load_config()
    cpus = os.cpu_count()
    for deployment in config["applications"][0]["deployments"]:
        deployment["ray_actor_options"]["num_cpus"] = cpus if deployment["name"] == "Classifier" else 1
    path = tmp_path / "too-big.yaml"
    path.write_text(yaml.safe_dump(config))
    code, output, took = fails(
        [sys.executable, "-m", "serve_app", "serve", "--as-written", "--config", str(path)],
        {"SERVE_APP_WEIGHTS": "standin", CACHE_ENV_VAR: str(cache)},
    )
    assert code == 1, output
    pending = f"'Classifier' asks for {cpus} CPUs" if "'Classifier' asks for" in output else "'Ingress' asks for 1 CPU"
    assert pending in output and "waited" in output, output
    assert f"CPU: {cpus}" in output, output  # what the machine has
    assert "Lower ray_actor_options" in output and str(path) in output
    assert took < 60, output


"""The fixed price of the stack: the CPU every process of `make serve` uses idle, and under load.

    python -m benchmarks.stack_cost                    # ~3 minutes on 2 cores
    python -m benchmarks.stack_cost --idle-seconds 30 --load-seconds 20

Runs `make serve`'s own command (`python -m serve_app serve --config configs/cpu.yaml`, fitted to
this machine, stand-in weights, port 8000) twice: as shipped, and with `--dashboard` (Ray's
dashboard and Ray's default intervals, what the stack was before). Each time, once every replica
is up: every process's user+system CPU time from /proc over --idle-seconds with no request at
all, then over --load-seconds of single-image requests at concurrency 32 (after a 5 s warm-up),
one line per process kind, in cores (CPU seconds per second). The result cache is off
($SERVE_APP_RESULT_CACHE=off: its photos repeat): every request is computed. Idle, it also measures
the main threads of Serve's actors (controller, proxy, HAProxy manager, replicas) apart: each runs
Ray's task loop, which wakes every 10 ms to check for signals (a fixed period in Ray's C++ core
worker, no setting), and that is the part of the idle price no setting reaches. Writes
benchmarks/results/stack_cost.{md,png,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.cpu_share import TICKS_PER_SECOND, cpu_ticks_by_process
from benchmarks.load import load_photos, sweep
from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from serve_app.launch.harness import healthz_ok, running, wait_ready
from serve_app.launch.processes import descendants, main_thread_cpu_ticks, processes
from serve_app.settings import RESULT_CACHE_ENV_VAR

CONCURRENCY = 32
BASE_URL = "http://127.0.0.1:8000"  # configs/cpu.yaml's port, as make serve serves it
IDLE_TARGET_CORES = 0.05
VARIANTS = {"make serve (as shipped)": [], "make serve --dashboard (Ray's defaults)": ["--dashboard"]}
LOAD_GENERATOR = "load generator (this process)"
# Titles of the Ray workers that run Serve's actors (the dashboard and runtime-env agents are not workers).
SERVE_ACTORS = ("ray::ServeController", "ray::ProxyActor", "ray::HAProxyManager", "ray::ServeReplica")


def process_kind(pid: int, command: str) -> str:
    """A short name for what a process is: Ray's actor title, a binary's or a script's name."""
    if pid == os.getpid():
        return LOAD_GENERATOR
    first = command.split(" ", 1)[0]
    if first.startswith("ray::"):  # an actor's title, with the method it runs now after a dot
        return first.split(".", 1)[0]
    if first.startswith("ray-dashboard-"):
        return "dashboard head modules (ray-dashboard-*)"
    if "-m serve_app serve" in command:
        return "python -m serve_app serve (the launcher)"
    words = command.split()
    script = next((w for w in words[1:] if w.endswith(".py")), None) if Path(first).name.startswith("python") else None
    return Path(script or first).name


def cores_by_kind(before: dict, after: dict, seconds: float, stack: set[int]) -> dict[str, float]:
    """CPU seconds per second of each kind of process, for the stack's processes and this one."""
    used: Counter[str] = Counter()
    for pid, (ticks, command) in after.items():
        if pid in stack or pid == os.getpid():
            used[process_kind(pid, command)] += (ticks - before.get(pid, (0, ""))[0]) / TICKS_PER_SECOND / seconds
    return {kind: cores for kind, cores in used.most_common() if cores > 0}


def main_thread_ticks(pids: set[int]) -> dict[int, tuple[int, str]]:
    """CPU ticks of the main thread of each of Serve's actors among `pids`, with its command."""
    found = {}
    for process in processes():
        if process.pid in pids and process.command.startswith(SERVE_ACTORS):
            ticks = main_thread_cpu_ticks(process.pid)
            if ticks is not None:
                found[process.pid] = (ticks, process.command)
    return found


def stack_pids(launcher: int) -> set[int]:
    """The launcher, its session and everything below it (Ray's processes, the replicas, HAProxy)."""
    return {launcher, *descendants(launcher)} | {process.pid for process in processes() if process.session == launcher}


def measure(flags: list[str], idle_seconds: float, load_seconds: float, photos) -> dict:
    log = Path(tempfile.mkdtemp(prefix="stack-cost-")) / "serve.log"
    command = [sys.executable, "-m", "serve_app", "serve", "--config", "configs/cpu.yaml", *flags]
    env = {"SERVE_APP_WEIGHTS": "standin", RESULT_CACHE_ENV_VAR: "off"}  # its photos repeat: all to the model
    with running(command, log, env=env) as process:
        wait_ready(BASE_URL, process, 600, healthz_ok)
        time.sleep(5)  # replicas' start-up work settles
        stack = stack_pids(process.pid)
        before, main_before = cpu_ticks_by_process(), main_thread_ticks(stack)
        time.sleep(idle_seconds)
        idle = cores_by_kind(before, cpu_ticks_by_process(), idle_seconds, stack)
        main_threads = cores_by_kind(main_before, main_thread_ticks(stack), idle_seconds, stack)
        url = BASE_URL + "/v1/classify"
        sweep(url, [CONCURRENCY], photos, seconds=5, label="warm-up")
        before = cpu_ticks_by_process()
        started = time.monotonic()
        [result] = sweep(url, [CONCURRENCY], photos, seconds=load_seconds, label="c=32")
        loaded = cores_by_kind(before, cpu_ticks_by_process(), time.monotonic() - started, stack)
    return {"command": " ".join(["python", *command[1:]]), "idle": idle, "idle_main_threads": main_threads,
            "loaded": loaded, "req_s": result.req_s, "errors": result.errors}


def stack_total(cores: dict[str, float]) -> float:
    return sum(value for kind, value in cores.items() if kind != LOAD_GENERATOR)


def write_results(measured: dict[str, dict], args) -> str:
    kinds = sorted({kind for m in measured.values() for part in ("idle", "loaded") for kind in m[part]},
                   key=lambda kind: -max(m["idle"].get(kind, 0) for m in measured.values()))
    shipped = next(iter(measured.values()))
    header = ["process"] + [f"{name}: {part}" for name in measured for part in ("idle", f"c={CONCURRENCY}")]
    rows = [[kind, *(f"{m[part].get(kind, 0):.4f}" for m in measured.values() for part in ("idle", "loaded"))]
            for kind in kinds if kind != LOAD_GENERATOR]
    rows.append(["**the stack, in all**", *(f"**{stack_total(m[part]):.3f}**" for m in measured.values()
                                           for part in ("idle", "loaded"))])
    rows.append([f"of which the main threads of Serve's {len(shipped['idle_main_threads'])} actors (Ray's 10 ms "
                 "signal check)", *(cell for m in measured.values()
                                    for cell in (f"{sum(m['idle_main_threads'].values()):.3f}", "-"))])
    rows.append([LOAD_GENERATOR, *(f"{m[part].get(LOAD_GENERATOR, 0):.3f}" for m in measured.values()
                                   for part in ("idle", "loaded"))])
    rows.append(["req/s (errors)", *(cell for m in measured.values()
                                     for cell in ("-", f"{m['req_s']:.1f} ({m['errors']})"))])
    idle = stack_total(shipped["idle"])
    floor = sum(shipped["idle_main_threads"].values())
    lines = [
        "# The fixed price of the stack: CPU by process, idle and under load",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{args.command}`",
        f"- Each variant is `make serve`'s own command on this machine (stand-in weights, configs/cpu.yaml "
        f"fitted to it); cores = CPU seconds per second from /proc, over {args.idle_seconds:g} s with no "
        f"request, then {args.load_seconds:g} s of single-image requests at concurrency {CONCURRENCY} after a "
        "5 s warm-up. Result cache off (`SERVE_APP_RESULT_CACHE=off`): every request computed.",
        "",
        markdown_table(header, rows),
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| idle stack (make serve as shipped) at most {IDLE_TARGET_CORES} cores | {idle:.3f} | "
        f"{'yes' if idle <= IDLE_TARGET_CORES else '**no**'} |",
        "",
        f"Of the idle stack as shipped, {floor:.3f} cores ({floor / idle:.0%}) are the main threads of Serve's "
        f"{len(shipped['idle_main_threads'])} actors ({', '.join(k.removeprefix('ray::') for k in shipped['idle_main_threads'])}): "
        "each runs Ray's task loop, which wakes every 10 ms to check for signals, a period fixed in Ray's C++ "
        f"core worker that no setting changes. Settings can reach only the other {idle - floor:.3f} cores.",
        "",
        "![stack cost](stack_cost.png)",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(measured, kinds, RESULTS / "stack_cost.png")
    (RESULTS / "stack_cost.json").write_text(json.dumps(measured, indent=2))
    text = "\n".join(lines)
    (RESULTS / "stack_cost.md").write_text(text)
    return text


def plot(measured: dict[str, dict], kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [kind for kind in kinds if kind != LOAD_GENERATOR][:10]
    figure, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(shown) + 2.5), sharey=True)
    for axis, part, title in ((axes[0], "idle", "idle"), (axes[1], "loaded", f"concurrency {CONCURRENCY}")):
        height = 0.8 / len(measured)
        for index, (name, m) in enumerate(measured.items()):
            axis.barh([row + index * height for row in range(len(shown))], [m[part].get(k, 0) for k in shown],
                      height=height, label=f"{name}: {stack_total(m[part]):.3f} cores in all")
        axis.set(title=title, xlabel="cores (CPU s per s)")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, axis="x")
    axes[0].set_yticks([row + 0.4 - 0.4 / len(measured) for row in range(len(shown))], shown, fontsize=7)
    axes[0].invert_yaxis()
    figure.suptitle(f"the stack's CPU by process\n{machine_line()}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    args.command = command_line()
    photos = load_photos()
    measured = {name: measure(VARIANTS[name], args.idle_seconds, args.load_seconds, photos)
                for name in args.variants.split(",")}
    print(write_results(measured, args))


if __name__ == "__main__":
    main()

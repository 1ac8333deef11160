"""Where the CPU goes: each process's CPU time per request while our service is under load.

    python -m benchmarks.cpu_share                     # ~2 minutes on 2 cores
    python -m benchmarks.cpu_share --seconds 10

Runs ours (sized for 2 cores as in benchmarks/compare.py) twice, with the HTTP front Serve gives
it by default (`python -m serve_app serve`: HAProxy) and with Ray's Python HTTP proxy instead
(RAY_SERVE_ENABLE_HA_PROXY=0). At concurrency 32 it reads every process's user+system CPU time
from /proc before and after the measured window and divides by the requests answered. Writes
benchmarks/results/cpu_share.{md,png,json}.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from benchmarks.compare import sized_for_two_cores
from benchmarks.load import load_photos, sweep
from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from serve_app.processes import processes
from tests.harness import RAY_ENV, free_port, serve_run, sized_config

FRONTS = {"HAProxy": {**RAY_ENV}, "Python proxy": {**RAY_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "0"}}
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Process titles Ray sets (ray::<actor>) and the names of its binaries, grouped by the role they play.
ROLES = [
    ("model replica", "ServeReplica:classifier:Classifier"),
    ("ingress replica", "ServeReplica:classifier:Ingress"),
    ("HAProxy", "haproxy"),
    ("Python HTTP proxy", "ray::ProxyActor"),
]


def cpu_ticks_by_process() -> dict[int, tuple[int, str]]:
    return {process.pid: (process.cpu_ticks, process.command) for process in processes()}


def role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "load generator"
    for name, marker in ROLES:
        if marker in command:
            return name
    return "Ray's other processes and the rest"


def measure(front_env: dict[str, str], weights: str, seconds: float, photos) -> dict:
    with serve_run(sized_config(free_port(), weights=weights, edit=sized_for_two_cores), env=front_env) as base:
        url = base + "/v1/classify"
        sweep(url, [32], photos, seconds=5, label="warm-up")
        before = cpu_ticks_by_process()
        [result] = sweep(url, [32], photos, seconds=seconds, label="measured")
        after = cpu_ticks_by_process()
    ticks = Counter()
    for pid, (end, command) in after.items():
        ticks[role(pid, command)] += end - before.get(pid, (0, ""))[0]
    answered = result.statuses.get(200, 0)
    return {
        "req_s": result.req_s,
        "errors": result.errors,
        "ms_per_request": {name: 1000 * t / TICKS_PER_SECOND / answered for name, t in ticks.items() if t > 0},
    }


def roles_by_cost(measured: dict[str, dict]) -> list[str]:
    """Every role seen, the costliest (under either front) first."""
    return sorted({r for m in measured.values() for r in m["ms_per_request"]},
                  key=lambda r: -max(m["ms_per_request"].get(r, 0) for m in measured.values()))


def plot(measured: dict[str, dict], roles: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 0.6 * len(measured) + 2))
    for row, (front, m) in enumerate(measured.items()):
        left = 0.0
        for name in roles:
            width = m["ms_per_request"].get(name, 0.0)
            axis.barh(row, width, left=left, label=name if row == 0 else None,
                      color=plt.cm.tab10(roles.index(name)))
            left += width
        axis.text(left + 0.2, row, f"{m['req_s']:.0f} req/s", va="center", fontsize=8)
    axis.set_yticks(range(len(measured)), [f"front: {f}" for f in measured])
    axis.set(xlabel="CPU ms per request (less is better)", title="CPU per request at concurrency 32")
    axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(machine_line(), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--weights", default="standin")
    args = parser.parse_args()
    photos = load_photos()
    measured = {front: measure(env, args.weights, args.seconds, photos) for front, env in FRONTS.items()}
    print(write_results(measured, args.seconds, command_line()))


def write_results(measured: dict[str, dict], seconds: float, command: str) -> str:
    roles = roles_by_cost(measured)
    rows = [[name, *(f"{m['ms_per_request'].get(name, 0):.2f}" for m in measured.values())] for name in roles]
    rows.append(["**total**", *(f"**{sum(m['ms_per_request'].values()):.2f}**" for m in measured.values())])
    rows.append(["req/s (errors)", *(f"{m['req_s']:.1f} ({m['errors']})" for m in measured.values())])
    text = "\n".join([
        "# Where the CPU goes: CPU ms per request at concurrency 32",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command}`",
        f"- Ours sized for 2 cores (one Ingress, one Classifier replica), {seconds:g} s measured after a "
        "5 s warm-up; each process's user+system CPU time from /proc, divided by the requests answered.",
        "",
        markdown_table(["process", *(f"front: {f}" for f in measured)], rows),
        "",
        "![cpu share](cpu_share.png)",
        "",
    ])
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(measured, roles, RESULTS / "cpu_share.png")
    (RESULTS / "cpu_share.json").write_text(json.dumps(measured, indent=2))
    (RESULTS / "cpu_share.md").write_text(text)
    return text


if __name__ == "__main__":
    main()

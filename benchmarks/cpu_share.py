"""The service's cost model: CPU time per request in each process, and how much of it is inference.

    python -m benchmarks.cpu_share                       # ~3 minutes on 2 cores
    python -m benchmarks.cpu_share --before 0d9f8dc      # an earlier commit too, side by side
    python -m benchmarks.cpu_share --before 0d9f8dc --repeat 3 --no-python-proxy   # medians of 3 rounds
    python -m benchmarks.cpu_share --before 0d9f8dc --images-per-request 8   # -> cpu_share_8_images.*

Serves ours sized for 2 cores (as in benchmarks/compare.py) and sends single-image requests (or
--images-per-request) at concurrency 32. Every process's user+system CPU time is read from /proc before and after the
measured window and divided by the requests answered. Inference is measured apart: the model
replica reports how many forward passes of each batch size it ran in the window, and the same
backend, with the replica's thread count, runs those batches again in this process afterwards;
their CPU time is the inference share. The rest of the service's CPU (every process but the load
generator) is what the request path costs beside inference.

Variants: `now` (this checkout, HAProxy in front: what `python -m serve_app serve` runs), `now,
Python proxy` (RAY_SERVE_ENABLE_HA_PROXY=0) and, with --before, that commit checked out into a
temporary worktree and served the same way (with that commit's own configs/cpu.yaml). Runs of 20 s
on 2 shared cores vary by 10-15%, so --repeat runs the variants in turn that many rounds and
reports each figure's median. Writes benchmarks/results/cpu_share.{md,png,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from benchmarks.compare import sized_for_two_cores
from benchmarks.load import load_photos, sweep
from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from serve_app.launch.harness import (
    RAY_ENV,
    REPO,
    free_port,
    replica_title,
    serve_run,
    sized_config,
)
from serve_app.launch.processes import processes
from serve_app.settings import SHARED_IMAGES

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 32
BACKEND = "onnx-int8"
# Process titles Ray sets (ray::<actor>) and the names of its binaries, grouped by the role they play.
ROLES = [
    ("model replica", replica_title("Classifier")),
    ("ingress replica", replica_title("Ingress")),
    ("HAProxy", "haproxy"),
    ("Python HTTP proxy", "ray::ProxyActor"),
    ("raylet", "raylet"),
    ("GCS", "gcs_server"),
]
SERVICE_ROLES = [name for name, _ in ROLES] + ["Ray's other processes"]
LOAD_GENERATOR = "load generator"


def cpu_ticks_by_process() -> dict[int, tuple[int, str]]:
    return {process.pid: (process.cpu_ticks, process.command) for process in processes()}


def role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return LOAD_GENERATOR
    for name, marker in ROLES:
        if marker in command:
            return name
    return "Ray's other processes"


def batch_counts(base_url: str) -> tuple[Counter[int], int]:
    """Forward passes by batch size since the model replica started, and its thread count."""
    replica = httpx.get(f"{base_url}/healthz", timeout=10).json()["replica"]
    return Counter({int(size): n for size, n in replica["batching"]["batch_sizes"].items()}), replica["threads"]


def measure(weights: str, seconds: float, photos, env: dict[str, str], source: Path, images: int = 1) -> dict:
    config = sized_config(free_port(), weights=weights, backend=BACKEND, edit=sized_for_two_cores, source=source)
    with serve_run(config, env=env, source=source) as base:
        url = base + "/v1/classify"
        sweep(url, [CONCURRENCY], photos, seconds=5, label="warm-up", images_per_request=images)
        batches_before, threads = batch_counts(base)
        before = cpu_ticks_by_process()
        [result] = sweep(url, [CONCURRENCY], photos, seconds=seconds, label="measured", images_per_request=images)
        after = cpu_ticks_by_process()
        batches = batch_counts(base)[0] - batches_before
    ticks = Counter()
    for pid, (end, command) in after.items():
        ticks[role(pid, command)] += end - before.get(pid, (0, ""))[0]
    answered = result.statuses.get(200, 0)
    return {
        "req_s": result.req_s,
        "errors": result.errors,
        "answered": answered,
        "threads": threads,
        "batches": {str(size): n for size, n in sorted(batches.items())},
        "ms_per_request": {name: 1000 * t / TICKS_PER_SECOND / answered for name, t in ticks.items() if t > 0},
    }


def inference_ms(weights: str, threads: int, batches: dict[str, int], answered: int, photos) -> float:
    """CPU ms per request of the forward passes the replica ran, replayed here with its threads."""
    from serve_app.imaging import load_image
    from serve_app.model.backends import load_backend
    from serve_app.model.weights import resolve_weights
    from serve_app.settings import ModelSettings

    settings = ModelSettings(weights=weights, backend=BACKEND, device="cpu")
    model = load_backend(settings, resolve_weights(settings.weights), threads)
    pixels = np.stack([load_image(data, max_pixels=10**8) for _, data in photos[:64]])
    cpu_seconds = 0.0
    for size, count in batches.items():
        batch = pixels[np.arange(int(size)) % len(pixels)]
        model.infer(batch)
        runs = max(3, min(50, 200 // int(size)))
        started = time.process_time()
        for _ in range(runs):
            model.infer(batch)
        cpu_seconds += (time.process_time() - started) / runs * count
    return 1000 * cpu_seconds / answered


@contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """`ref` in a temporary git worktree (the shared photos are found beside it through a link)."""
    parent = Path(tempfile.mkdtemp(prefix="cpu-share-"))
    worktree = parent / "repo"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), ref], cwd=REPO, check=True,
                   capture_output=True)
    (parent / SHARED_IMAGES.parent.name).symlink_to(SHARED_IMAGES.parent)
    try:
        yield worktree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


def median_of(rounds: list[dict]) -> dict:
    """Each figure's median over the rounds (batch counts summed: they only describe the runs)."""
    batches = Counter()
    for measured in rounds:
        batches.update({int(size): n for size, n in measured["batches"].items()})
    roles = {name for measured in rounds for name in measured["ms_per_request"]}
    return {
        "rounds": len(rounds),
        **{key: float(np.median([m[key] for m in rounds]))
           for key in ("req_s", "errors", "inference_ms", "service_ms", "non_inference_ms")},
        "ms_per_request": {name: float(np.median([m["ms_per_request"].get(name, 0.0) for m in rounds])) for name in roles},
        "batches": {str(size): n for size, n in sorted(batches.items())},
    }


def run_variants(args, photos) -> dict[str, dict]:
    with ExitStack() as stack:
        sources = {}
        if args.before:
            sources[f"before ({args.before})"] = (stack.enter_context(checkout(args.before)), RAY_ENV)
        sources["now"] = (REPO, RAY_ENV)
        if not args.no_python_proxy:
            sources["now, Python proxy"] = (REPO, {**RAY_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "0"})
        rounds: dict[str, list[dict]] = {name: [] for name in sources}
        for _ in range(args.repeat):
            for name, (source, env) in sources.items():
                measured = measure(args.weights, args.seconds, photos, env, source, args.images_per_request)
                rounds[name].append(with_inference(args, measured, photos))
    return {name: median_of(measured) for name, measured in rounds.items()}


def with_inference(args, measured: dict, photos) -> dict:
    """`measured` with its inference share (replayed here, after the service stopped) and the rest."""
    measured["inference_ms"] = inference_ms(
        args.weights, measured["threads"], measured["batches"], measured["answered"], photos)
    measured["service_ms"] = sum(ms for name, ms in measured["ms_per_request"].items() if name != LOAD_GENERATOR)
    measured["non_inference_ms"] = measured["service_ms"] - measured["inference_ms"]
    return measured


def plot(variants: dict[str, dict], path: Path, what: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 0.7 * len(variants) + 2))
    for row, (name, m) in enumerate(variants.items()):
        parts = [("inference", m["inference_ms"]), ("the request path (all else in the service)", m["non_inference_ms"]),
                 (LOAD_GENERATOR, m["ms_per_request"].get(LOAD_GENERATOR, 0.0))]
        left = 0.0
        for index, (label, width) in enumerate(parts):
            axis.barh(row, width, left=left, color=plt.cm.tab10(index), label=label if row == 0 else None)
            left += width
        axis.text(left + 0.2, row, f"{m['req_s']:.0f} req/s", va="center", fontsize=8)
    axis.set_yticks(range(len(variants)), list(variants))
    axis.set(xlabel=f"CPU ms per {what} (less is better)",
             title=f"CPU per request at concurrency {CONCURRENCY}")
    axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(machine_line(), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_results(variants: dict[str, dict], seconds: float, command: str, images: int = 1) -> str:
    what = "single-image request" if images == 1 else f"request of {images} images"
    stem = "cpu_share" if images == 1 else f"cpu_share_{images}_images"
    roles = [r for r in SERVICE_ROLES if any(r in m["ms_per_request"] for m in variants.values())]

    def ms(value: float) -> str:
        return f"{value:.2f}"

    rows = [[name, *(ms(m["ms_per_request"].get(name, 0)) for m in variants.values())] for name in roles]
    rows += [
        ["**the service, in all**", *(f"**{ms(m['service_ms'])}**" for m in variants.values())],
        ["of which inference (forward passes, replayed)", *(ms(m["inference_ms"]) for m in variants.values())],
        ["**of which the request path**", *(f"**{ms(m['non_inference_ms'])}**" for m in variants.values())],
        [LOAD_GENERATOR, *(ms(m["ms_per_request"].get(LOAD_GENERATOR, 0)) for m in variants.values())],
        ["req/s (errors)", *(f"{m['req_s']:.1f} ({m['errors']})" for m in variants.values())],
        ["forward passes by batch size", *(", ".join(f"{s}: {n}" for s, n in m["batches"].items())
                                           for m in variants.values())],
    ]
    lines = [
        f"# The cost model: CPU ms per {what} at concurrency {CONCURRENCY}",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command}`",
        f"- Ours sized for 2 cores (one Ingress, one Classifier replica, `{BACKEND}`), {seconds:g} s measured after "
        f"a 5 s warm-up, {next(iter(variants.values()))['rounds']} round(s) of every variant in turn, medians; each process's user+system CPU time from /proc, divided by the requests answered. "
        "Inference: the replica's forward passes in the window, replayed in the benchmark process with the "
        "replica's threads.",
        "",
        markdown_table(["process", *variants], rows),
        "",
    ]
    before = next((m for name, m in variants.items() if name.startswith("before")), None)
    if before:
        now = variants["now"]
        share = now["non_inference_ms"] / before["non_inference_ms"]
        speed = now["req_s"] / before["req_s"]
        lines += [
            "| target | measured | met |",
            "|---|---|---|",
            f"| request-path CPU per request, now / before, at most 0.5 | {share:.2f} | {'yes' if share <= 0.5 else '**no**'} |",
            f"| req/s at concurrency {CONCURRENCY}, now / before, at least 1.0 | {speed:.2f} | {'yes' if speed >= 1.0 else '**no**'} |",
            "",
        ]
    lines += [f"![cpu share]({stem}.png)", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(variants, RESULTS / f"{stem}.png", what)
    (RESULTS / f"{stem}.json").write_text(json.dumps(variants, indent=2))
    text = "\n".join(lines)
    (RESULTS / f"{stem}.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--weights", default="standin")
    parser.add_argument("--before", default=None, help="a git commit to measure beside this checkout")
    parser.add_argument("--no-python-proxy", action="store_true", help="skip the Python-proxy variant")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all variants; medians are reported")
    parser.add_argument("--images-per-request", type=int, default=1)
    args = parser.parse_args()
    photos = load_photos()
    print(write_results(run_variants(args, photos), args.seconds, command_line(), args.images_per_request))


if __name__ == "__main__":
    main()

"""The cost model: CPU time per request in each process, and how much of it is inference, for
ours and for LitServe and gunicorn Flask on the same model, or on the null model (no inference).

    python -m benchmarks.cpu_share                              # ~6 minutes on 2 cores
    python -m benchmarks.cpu_share --variants ours-null,litserve-null --repeat 3   # medians of 3 rounds
    python -m benchmarks.cpu_share --before fa6dfa0             # ours at an earlier commit too
    python -m benchmarks.cpu_share --variants ours --images-per-request 8   # -> cpu_share_8_images.*

Each variant is a system of benchmarks/compare.py, started the same way and sized for 2 cores:
`ours` (the INT8 model, `make serve`'s stack), `ours-null` (the null model: everything as served
but the forward pass), `litserve-int8`, `litserve-null`, `flask-int8`, `flask-null`, and
`ours-null-replica-decode` (the null model on the GPU config's request path, decode_on_replica: the
ingress reads only headers, the replica decodes, here on the CPU), for what an ingress replica
costs per request on a GPU node (benchmarks/results/gpu_node_estimate.md). Single-image
requests (or --images-per-request) go at concurrency 32; every process's user+system CPU time is
read from /proc before and after the measured window and divided by the requests answered, by
the role the process plays. For `ours`, inference is measured apart: the model replica reports
how many forward passes of each batch size it ran in the window, and the same backend, with the
replica's thread count, runs those batches again in this process afterwards; the rest of the
service's CPU is what the request path costs beside inference. With the null model there is no
inference, so all of a null variant's CPU is its serving path's. The service's result cache is
off (its photos repeat): every request is computed. With --before, that commit is checked out into a temporary worktree and served
as `ours` (its own configs/cpu.yaml and launcher). Runs of 20 s on 2 shared cores vary by
10-15%, so --repeat runs the variants in turn that many rounds and reports each figure's median.
Writes benchmarks/results/cpu_share.{md,png,json}.
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

from benchmarks import compare
from benchmarks.load import load_photos, sweep
from benchmarks.report import RESULT_CACHE_OFF, RESULTS, command_line, machine_line, markdown_table
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
VARIANTS = ("ours-null", "litserve-null", "flask-null", "ours", "litserve-int8", "flask-int8", "ours-null-replica-decode")
# Process titles Ray sets (ray::<actor>), the names of binaries and scripts, grouped by the role
# they play; the first that matches names the role.
ROLES = [
    ("model replica", replica_title("Classifier")),
    ("ingress replica", replica_title("Ingress")),
    ("HAProxy", "haproxy"),
    ("Python HTTP proxy", "ray::ProxyActor"),
    ("raylet", "raylet"),
    ("GCS", "gcs_server"),
    ("LitServe inference workers", "multiprocessing"),  # LitServe's spawned worker processes
    ("LitServe server (uvicorn)", "litserve_app"),
    ("gunicorn Flask workers", "gunicorn"),
]
OTHER = "other processes (Ray's own, where Ray runs)"
SERVICE_ROLES = [name for name, _ in ROLES] + [OTHER]
LOAD_GENERATOR = "load generator"


def cpu_ticks_by_process() -> dict[int, tuple[int, str]]:
    return {process.pid: (process.cpu_ticks, process.command) for process in processes()}


def role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return LOAD_GENERATOR
    for name, marker in ROLES:
        if marker in command:
            return name
    return OTHER


def batch_counts(base_url: str) -> tuple[Counter[int], int]:
    """Forward passes by batch size since the model replica started, and its thread count."""
    replica = httpx.get(f"{base_url}/healthz", timeout=10).json()["replica"]
    return Counter({int(size): n for size, n in replica["batching"]["batch_sizes"].items()}), replica["threads"]


@contextmanager
def ours_at(source: Path, weights: str) -> Iterator[str]:
    """Ours as `make serve` runs it, from another checkout (--before)."""
    config = sized_config(free_port(), weights=weights, backend=BACKEND, edit=compare.sized_for_two_cores, source=source)
    with serve_run(config, env=RAY_ENV, source=source, launcher=True) as base:
        yield base + "/v1/classify"


def measure(system, weights: str, seconds: float, photos, images: int = 1, counts_batches: bool = False) -> dict:
    """CPU ms per request by role while `system` (a compare.SYSTEMS entry) answers at concurrency 32."""
    with system(weights) as url:
        base = url.rsplit("/v1/", 1)[0]
        sweep(url, [CONCURRENCY], photos, seconds=5, label="warm-up", images_per_request=images)
        batches_before, threads = batch_counts(base) if counts_batches else (Counter(), 0)
        before = cpu_ticks_by_process()
        [result] = sweep(url, [CONCURRENCY], photos, seconds=seconds, label="measured", images_per_request=images)
        after = cpu_ticks_by_process()
        batches = (batch_counts(base)[0] - batches_before) if counts_batches else Counter()
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
        **{key: float(np.median([m[key] for m in rounds])) if rounds[0][key] is not None else None
           for key in ("req_s", "errors", "inference_ms", "service_ms", "non_inference_ms")},
        "ms_per_request": {name: float(np.median([m["ms_per_request"].get(name, 0.0) for m in rounds])) for name in roles},
        "batches": {str(size): n for size, n in sorted(batches.items())},
    }


def run_variants(args, photos) -> dict[str, dict]:
    with ExitStack() as stack:
        systems = {}
        if args.before:
            source = stack.enter_context(checkout(args.before))
            systems[f"ours before ({args.before})"] = lambda weights, source=source: ours_at(source, weights)
        systems.update({name: compare.SYSTEMS[name] for name in args.variants.split(",")})
        rounds: dict[str, list[dict]] = {name: [] for name in systems}
        for _ in range(args.repeat):
            for name, system in systems.items():
                inference = inference_kind(name)
                measured = measure(system, args.weights, args.seconds, photos, args.images_per_request,
                                   counts_batches=inference == "replayed")
                rounds[name].append(with_inference(args, measured, photos, inference))
    return {name: median_of(measured) for name, measured in rounds.items()}


def inference_kind(name: str) -> str:
    """How a variant's inference is known: "replayed" here (ours on the INT8 model, whose replica
    counts its forward passes), "none" (the null model) or "not measured" apart (a peer's model)."""
    if name == "ours" or name.startswith("ours before"):
        return "replayed"
    return "none" if name in compare.NULL_SYSTEMS else "not measured"


def with_inference(args, measured: dict, photos, inference: str) -> dict:
    """`measured` with its inference share and the rest: replayed here for ours, after the service
    stopped; none for the null model; not measured for the peers on the real model (None)."""
    measured["service_ms"] = sum(ms for name, ms in measured["ms_per_request"].items() if name != LOAD_GENERATOR)
    if inference == "replayed":
        measured["inference_ms"] = inference_ms(
            args.weights, measured["threads"], measured["batches"], measured["answered"], photos)
    else:
        measured["inference_ms"] = 0.0 if inference == "none" else None
    known = measured["inference_ms"] is not None
    measured["non_inference_ms"] = measured["service_ms"] - measured["inference_ms"] if known else None
    return measured


def plot(variants: dict[str, dict], path: Path, what: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 0.7 * len(variants) + 2))
    for row, (name, m) in enumerate(variants.items()):
        split = m["inference_ms"] is not None
        parts = [("inference", m["inference_ms"] or 0.0),
                 ("the serving path (all else in the service)", m["non_inference_ms"] if split else 0.0),
                 ("the service, inference not measured apart", 0.0 if split else m["service_ms"]),
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

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    rows = [[name, *(ms(m["ms_per_request"].get(name)) for m in variants.values())] for name in roles]
    rows += [
        ["**the service, in all**", *(f"**{ms(m['service_ms'])}**" for m in variants.values())],
        ["of which inference (ours: forward passes replayed; null: none)", *(ms(m["inference_ms"]) for m in variants.values())],
        ["**of which the serving path**", *(f"**{ms(m['non_inference_ms'])}**" for m in variants.values())],
        [LOAD_GENERATOR, *(ms(m["ms_per_request"].get(LOAD_GENERATOR)) for m in variants.values())],
        ["req/s (errors)", *(f"{m['req_s']:.1f} ({m['errors']:.0f})" for m in variants.values())],
        ["forward passes by batch size", *(", ".join(f"{s}: {n}" for s, n in m["batches"].items()) or "-"
                                           for m in variants.values())],
    ]
    lines = [
        f"# The cost model: CPU ms per {what} at concurrency {CONCURRENCY}",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command}`",
        f"- Every system sized for 2 cores as in benchmarks/compare.py (ours: one Ingress and one Classifier "
        f"replica, `make serve`'s stack; `-null`: the null model, no inference), {seconds:g} s measured after a 5 s "
        f"warm-up, {next(iter(variants.values()))['rounds']} round(s) of every variant in turn, medians; each "
        "process's user+system CPU time from /proc, divided by the requests answered. Inference (ours): the "
        "replica's forward passes in the window, replayed in the benchmark process with the replica's threads. "
        "`-` where a role has no process, or where inference was not measured apart. " + RESULT_CACHE_OFF,
        "",
        markdown_table(["process", *variants], rows),
        "",
    ]
    pairs = [(name, peer) for name, peer in (("ours-null", "litserve-null"), ("ours-null", "flask-null"))
             if name in variants and peer in variants]
    if pairs:
        lines += ["| serving path, CPU ms per request | ours | peer | ours / peer |", "|---|---|---|---|"]
        lines += [f"| {name} against {peer} | {variants[name]['service_ms']:.2f} | {variants[peer]['service_ms']:.2f} "
                  f"| {variants[name]['service_ms'] / variants[peer]['service_ms']:.2f}x |" for name, peer in pairs]
        lines += [""]
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
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated systems of benchmarks/compare.py")
    parser.add_argument("--before", default=None, help="a git commit to measure as ours beside this checkout")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all variants; medians are reported")
    parser.add_argument("--images-per-request", type=int, default=1)
    args = parser.parse_args()
    photos = load_photos()
    print(write_results(run_variants(args, photos), args.seconds, command_line(), args.images_per_request))


if __name__ == "__main__":
    main()

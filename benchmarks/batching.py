"""Batching sweep: which model-replica settings serve the most on this machine, loaded and idle.

    python -m benchmarks.batching                      # ~13 minutes on 2 cores
    python -m benchmarks.batching --seconds 5

Starts our service once per variant (configs/cpu.yaml, sized for 2 cores as in benchmarks/compare.py,
then the variant's changes) and measures concurrency 32 and 64 (batches should fill; requests
beyond max_ongoing_requests wait in the ingress's router) and concurrency 1 (a lone request must
not wait for a batch that never fills). The wait applies only while other requests are in the
replica (serve_app/model/classifier.py). Writes benchmarks/results/batching.{md,png}.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from benchmarks.compare import healthz, ours, sized_for_two_cores
from benchmarks.load import LoadResult, load_photos, sweep
from benchmarks.report import RESULT_CACHE_OFF, RESULTS, command_line, machine_line, markdown_table
from serve_app.launch.harness import deployment

# name -> (Classifier num_cpus, max_batch_size, batch_wait_timeout_s, max_ongoing_requests)
VARIANTS = {
    "chosen: batch 16, wait 20 ms, 128 ongoing": (1.5, 16, 0.02, 128),
    "batch 16, no wait, 128 ongoing": (1.5, 16, 0.0, 128),
    "batch 16, wait 5 ms, 128 ongoing": (1.5, 16, 0.005, 128),
    "batch 16, wait 50 ms, 128 ongoing": (1.5, 16, 0.05, 128),
    "batch 8, wait 20 ms, 128 ongoing": (1.5, 8, 0.02, 128),
    "batch 32, wait 20 ms, 128 ongoing": (1.5, 32, 0.02, 128),
    "batch 16, wait 20 ms, 32 ongoing": (1.5, 16, 0.02, 32),
    "batch 8, wait 20 ms, 8 ongoing (nothing queues while a batch computes)": (1.5, 8, 0.02, 8),
    "no batching (batch 1), 128 ongoing": (1.5, 1, 0.0, 128),
    "batch 16, wait 20 ms, 128 ongoing, 0.75 CPU (1 thread)": (0.75, 16, 0.02, 128),
}


def variant_config(num_cpus: float, batch: int, wait: float, ongoing: int):
    def edit(config: dict) -> None:
        sized_for_two_cores(config)
        classifier = deployment(config, "Classifier")
        classifier["ray_actor_options"]["num_cpus"] = num_cpus
        classifier["max_ongoing_requests"] = ongoing
        classifier["user_config"].update(max_batch_size=batch, batch_wait_timeout_s=wait)

    return edit


def batch_sizes(classify_url: str) -> Counter[int]:
    """How many batches of each size the model replica has run (its /healthz report)."""
    health = healthz(classify_url)
    return Counter({int(size): n for size, n in health["replica"]["batching"]["batch_sizes"].items()})


def mean_batch_size(before: Counter[int], after: Counter[int]) -> float:
    ran = after - before
    return sum(size * n for size, n in ran.items()) / max(1, sum(ran.values()))


def plot(measured: dict[str, tuple[LoadResult, LoadResult, LoadResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(measured)
    rows = range(len(names))
    figure, (throughput, idle) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.5), sharey=True)
    throughput.barh([r - 0.2 for r in rows], [m[0].req_s for m in measured.values()], height=0.4, label="c=32")
    throughput.barh([r + 0.2 for r in rows], [m[1].req_s for m in measured.values()], height=0.4, label="c=64")
    throughput.set(xlabel="requests/s (more is better)", title="under load")
    idle.barh(rows, [m[2].percentile_ms(50) for m in measured.values()], height=0.5, color="tab:gray")
    idle.set(xlabel="p50 ms at concurrency 1 (less is better)", title="a lone request")
    throughput.set_yticks(list(rows), names, fontsize=8)
    throughput.invert_yaxis()
    throughput.legend(fontsize=8)
    for axis in (throughput, idle):
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle(f"batching sweep (one Classifier replica)\n{machine_line()}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument("--weights", default="standin")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown appended to the results file")
    args = parser.parse_args()
    photos = load_photos()
    rows, measured = [], {}
    for name, values in VARIANTS.items():
        with ours(args.weights, edit=variant_config(*values)) as url:
            before = batch_sizes(url)
            [loaded] = sweep(url, [32], photos, seconds=args.seconds, label=name)
            fill = mean_batch_size(before, batch_sizes(url))
            heavy, idle = sweep(url, [64, 1], photos, seconds=args.seconds, label=name)
        measured[name] = (loaded, heavy, idle)
        rows.append([name, f"{loaded.req_s:.1f}", f"{loaded.percentile_ms(50):.0f}", f"{loaded.percentile_ms(99):.0f}",
                     f"{fill:.1f}", f"{heavy.req_s:.1f}", loaded.errors + heavy.errors + idle.errors,
                     f"{idle.percentile_ms(50):.0f}", f"{idle.percentile_ms(99):.0f}"])
    text = "\n".join([
        "# Batching sweep",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command_line()}`",
        f"- {RESULT_CACHE_OFF}",
        f"- Our service on onnx-int8, {args.seconds:g} s per level; one Ingress replica (0.5 CPU) and one "
        "Classifier replica whose settings vary.",
        "",
        markdown_table(["variant", "c=32 req/s", "c=32 p50 ms", "c=32 p99 ms", "c=32 mean batch", "c=64 req/s", "errors",
                        "c=1 p50 ms", "c=1 p99 ms"], rows),
        "",
        "![batching](batching.png)",
        "",
    ])
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(measured, RESULTS / "batching.png")
    out = RESULTS / "batching.md"
    out.write_text(text + (("\n" + args.notes.read_text()) if args.notes else ""))
    print(text)


if __name__ == "__main__":
    main()

"""Batching sweep: which model-replica settings serve the most on this machine, loaded and idle.

    python -m benchmarks.batching                      # ~6 minutes on 2 cores
    python -m benchmarks.batching --seconds 5

Starts our service once per variant (configs/cpu.yaml, sized for 2 cores as in benchmarks/compare.py,
then the variant's changes) and measures concurrency 32 (batches should fill) and concurrency 1
(a lone request must not wait for a batch that never fills). Writes benchmarks/results/batching.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.compare import ours, sized_for_two_cores
from benchmarks.load import load_photos, sweep
from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from tests.harness import deployment

# name -> (Classifier num_cpus, max_batch_size, batch_wait_timeout_s, max_ongoing_requests)
VARIANTS = {
    "chosen: batch 16, wait 0, 32 ongoing": (1.5, 16, 0.0, 32),
    "batch 16, wait 5 ms, 32 ongoing": (1.5, 16, 0.005, 32),
    "batch 8, wait 0, 16 ongoing": (1.5, 8, 0.0, 16),
    "batch 8, wait 5 ms, 16 ongoing": (1.5, 8, 0.005, 16),
    "batch 8, wait 50 ms, 16 ongoing": (1.5, 8, 0.05, 16),
    "batch 8, 8 ongoing (nothing queues while a batch computes)": (1.5, 8, 0.0, 8),
    "batch 4, wait 0, 8 ongoing": (1.5, 4, 0.0, 8),
    "no batching (batch 1)": (1.5, 1, 0.0, 16),
    "batch 16, wait 0, 0.75 CPU (1 thread)": (0.75, 16, 0.0, 32),
}


def variant_config(num_cpus: float, batch: int, wait: float, ongoing: int):
    def edit(config: dict) -> None:
        sized_for_two_cores(config)
        classifier = deployment(config, "Classifier")
        classifier["ray_actor_options"]["num_cpus"] = num_cpus
        classifier["max_ongoing_requests"] = ongoing
        classifier["user_config"].update(max_batch_size=batch, batch_wait_timeout_s=wait)

    return edit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument("--weights", default="standin")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown appended to the results file")
    args = parser.parse_args()
    photos = load_photos()
    rows = []
    for name, values in VARIANTS.items():
        with ours(args.weights, edit=variant_config(*values)) as url:
            loaded, idle = sweep(url, [32, 1], photos, seconds=args.seconds, label=name)
        rows.append([name, f"{loaded.req_s:.1f}", f"{loaded.percentile_ms(50):.0f}", f"{loaded.percentile_ms(99):.0f}",
                     loaded.errors, f"{idle.percentile_ms(50):.0f}", f"{idle.percentile_ms(99):.0f}"])
    text = "\n".join([
        "# Batching sweep",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command_line()}`",
        f"- Our service on onnx-int8, {args.seconds:g} s per level; one Ingress replica (0.5 CPU) and one "
        "Classifier replica whose settings vary.",
        "",
        markdown_table(["variant", "c=32 req/s", "c=32 p50 ms", "c=32 p99 ms", "errors", "c=1 p50 ms", "c=1 p99 ms"],
                       rows),
        "",
    ])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "batching.md"
    out.write_text(text + (("\n" + args.notes.read_text()) if args.notes else ""))
    print(text)


if __name__ == "__main__":
    main()

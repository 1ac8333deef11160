"""HTTP load generator: posts the shared photos at a fixed concurrency and measures what comes back.

    python -m benchmarks.load --url http://127.0.0.1:8000 --concurrency 1,8,32 --seconds 20
    python -m benchmarks.load --url http://127.0.0.1:8001 --path /predict --requests 500 --name flask

Each of `concurrency` asyncio workers keeps one request in flight (multipart field `file`, the
photos in turn), for --seconds or until --requests have been sent. Reports req/s, images/s,
p50/p95/p99 latency and errors by status; writes JSON, a Markdown table and a PNG plot to
benchmarks/results/load-<name>.*.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from serve_app.imaging import image_files
from serve_app.settings import SHARED_IMAGES


@dataclass
class LoadResult:
    concurrency: int
    images_per_request: int
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of successful requests, seconds

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.requests - self.statuses.get(200, 0)

    @property
    def req_s(self) -> float:
        return self.statuses.get(200, 0) / self.seconds if self.seconds else 0.0

    @property
    def images_s(self) -> float:
        return self.req_s * self.images_per_request

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency, "requests": self.requests, "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "seconds": round(self.seconds, 2), "req_s": round(self.req_s, 1), "images_s": round(self.images_s, 1),
            "p50_ms": round(self.percentile_ms(50), 1), "p95_ms": round(self.percentile_ms(95), 1),
            "p99_ms": round(self.percentile_ms(99), 1),
        }


def load_photos(folder: Path = SHARED_IMAGES) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in image_files(folder)]


async def run_load(
    url: str,
    concurrency: int,
    photos: list[tuple[str, bytes]],
    *,
    seconds: float | None = None,
    requests: int | None = None,
    images_per_request: int = 1,
    on_response=None,
    timeout_s: float = 60.0,
) -> LoadResult:
    """Keep `concurrency` requests in flight until `seconds` pass or `requests` were sent."""
    if seconds is None and requests is None:
        raise ValueError("bound the run by seconds or requests")
    result = LoadResult(concurrency, images_per_request)
    counter = itertools.count()
    deadline = time.perf_counter() + seconds if seconds else float("inf")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            if requests is not None and n >= requests:
                return
            files = [("file", photos[(n * images_per_request + i) % len(photos)]) for i in range(images_per_request)]
            files = [("file", (name, data, "image/jpeg")) for _, (name, data) in files]
            started = time.perf_counter()
            try:
                response = await client.post(url, files=files)
                status = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latency = time.perf_counter() - started
            if status == 200:
                result.latencies.append(latency)
            result.statuses[status] += 1
            if on_response:
                on_response(status, latency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def sweep(url: str, levels: list[int], photos, *, seconds=None, requests=None, images_per_request=1,
          warmup: int = 20, label: str = "") -> list[LoadResult]:
    """Run each concurrency level in turn (after a short warm-up) with a progress bar."""
    from tqdm import tqdm

    asyncio.run(run_load(url, min(8, max(levels)), photos, requests=warmup, images_per_request=images_per_request))
    results = []
    for level in levels:
        total = requests if requests else None
        with tqdm(total=total, desc=f"{label} c={level}".strip(), unit="req", leave=False) as bar:
            results.append(asyncio.run(run_load(
                url, level, photos, seconds=seconds, requests=requests, images_per_request=images_per_request,
                on_response=lambda *_: bar.update(1),
            )))
        print(json.dumps({"target": label, **results[-1].summary()}), flush=True)
    return results


def results_table(results: list[LoadResult]) -> str:
    rows = [[r.concurrency, r.requests, f"{r.req_s:.1f}", f"{r.images_s:.1f}", f"{r.percentile_ms(50):.0f}",
             f"{r.percentile_ms(95):.0f}", f"{r.percentile_ms(99):.0f}", r.errors,
             ", ".join(f"{k}: {v}" for k, v in r.statuses.items() if k != 200) or "-"] for r in results]
    return markdown_table(["concurrency", "requests", "req/s", "images/s", "p50 ms", "p95 ms", "p99 ms",
                           "errors", "non-200"], rows)


def plot(series: dict[str, list[LoadResult]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, results in series.items():
        levels = [r.concurrency for r in results]
        left.plot(levels, [r.req_s for r in results], marker="o", label=name)
        right.plot(levels, [r.percentile_ms(99) for r in results], marker="o", label=f"{name} p99")
        right.plot(levels, [r.percentile_ms(50) for r in results], marker=".", linestyle="--", label=f"{name} p50")
    left.set(xlabel="concurrency", ylabel="requests/s", title="throughput", xscale="log", xticks=levels)
    right.set(xlabel="concurrency", ylabel="latency ms", title="latency", xscale="log", yscale="log", xticks=levels)
    for axis in (left, right):
        axis.set_xticklabels([str(x) for x in levels])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"{title}\n{machine_line()}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--path", default="/v1/classify")
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated levels")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--name", default="service", help="results go to benchmarks/results/load-<name>.*")
    args = parser.parse_args()
    if args.seconds is None and args.requests is None:
        args.seconds = 15.0
    levels = [int(x) for x in args.concurrency.split(",")]
    results = sweep(args.url.rstrip("/") + args.path, levels, load_photos(args.images), seconds=args.seconds,
                    requests=args.requests, images_per_request=args.images_per_request, label=args.name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"load-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps([r.summary() for r in results], indent=2))
    text = "\n".join([f"# Load: {args.name}", "", f"- Machine: {machine_line()}", f"- Command: `{command_line()}`",
                      f"- Target: {args.url}{args.path}", "", results_table(results), "",
                      f"![load](load-{args.name}.png)", ""])
    stem.with_suffix(".md").write_text(text)
    plot({args.name: results}, stem.with_suffix(".png"), f"load: {args.name}")
    print(text)


if __name__ == "__main__":
    main()

"""HTTP load generator: posts the shared photos at a fixed concurrency and measures what comes back.

    python -m benchmarks.load --url http://127.0.0.1:8000 --concurrency 1,8,32 --seconds 20
    python -m benchmarks.load --url http://127.0.0.1:8001 --path /predict --requests 500 --name flask

Each of `concurrency` asyncio workers keeps one request in flight (multipart field `file`, the
photos in turn), for --seconds or until --requests have been sent. The photos repeat, so a service
answering them from its result cache is refused: serve it with SERVE_APP_RESULT_CACHE=off. Reports req/s, images/s,
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
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import numpy as np

from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from serve_app.imaging import image_files
from serve_app.settings import RESULT_CACHE_ENV_VAR, SHARED_IMAGES


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


async def run_calls(
    concurrency: int,
    call: Callable[[int], Awaitable[int | str]],
    *,
    seconds: float | None = None,
    requests: int | None = None,
    images_per_request: int = 1,
    on_response=None,
) -> LoadResult:
    """Keep `concurrency` calls in flight until `seconds` pass or `requests` were made; `call(n)` makes
    the n-th and returns its status (200: answered; anything else counts as an error)."""
    if seconds is None and requests is None:
        raise ValueError("bound the run by seconds or requests")
    result = LoadResult(concurrency, images_per_request)
    counter = itertools.count()
    deadline = time.perf_counter() + seconds if seconds else float("inf")

    async def worker() -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            if requests is not None and n >= requests:
                return
            started = time.perf_counter()
            status = await call(n)
            latency = time.perf_counter() - started
            if status == 200:
                result.latencies.append(latency)
            result.statuses[status] += 1
            if on_response:
                on_response(status, latency)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


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
    """Keep `concurrency` multipart uploads to `url` in flight until `seconds` pass or `requests` were sent,
    each worker on its own keep-alive connection (UploadClient)."""
    bodies = MultipartBodies(url, photos, images_per_request)
    connections = [UploadClient(bodies.host, bodies.port) for _ in range(concurrency)]
    idle = asyncio.Queue()
    for connection in connections:
        idle.put_nowait(connection)

    async def post(n: int) -> int | str:
        connection = await idle.get()
        try:
            return await asyncio.wait_for(connection.send(bodies.request(n)), timeout_s)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            connection.close()  # the next request on it reconnects
            return type(exc).__name__
        finally:
            idle.put_nowait(connection)

    try:
        return await run_calls(concurrency, post, seconds=seconds, requests=requests,
                               images_per_request=images_per_request, on_response=on_response)
    finally:
        for connection in connections:
            connection.close()


class MultipartBodies:
    """The n-th request to `url` as the bytes on the wire: an HTTP/1.1 POST of multipart `file` parts
    (the photos in turn), built once per distinct request and reused."""

    BOUNDARY = "serve-app-load-5d1c0f"

    def __init__(self, url: str, photos: list[tuple[str, bytes]], images_per_request: int):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._photos, self._images = photos, images_per_request
        self._built: dict[int, bytes] = {}

    def request(self, n: int) -> bytes:
        first = (n * self._images) % len(self._photos)
        if first not in self._built:
            body = b"".join(
                f'--{self.BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"
                for name, data in (self._photos[(first + i) % len(self._photos)] for i in range(self._images))
            ) + f"--{self.BOUNDARY}--\r\n".encode()
            head = (f"POST {self._path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Content-Type: multipart/form-data; boundary={self.BOUNDARY}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n")
            self._built[first] = head.encode() + body
        return self._built[first]


class UploadClient:
    """The least an HTTP/1.1 client does on one keep-alive connection: write a prepared request, read the
    status line, the headers and a Content-Length or chunked body; reconnect when the server closed.
    A load generator sharing the cores with the service must spend little: httpx with 128 connections
    open spent 9.6 ms of CPU per request here (1.9 ms at 32), more than the service it measured."""

    def __init__(self, host: str, port: int):
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(request)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
        headers = {name.strip().lower(): value.strip().lower() for name, value in headers.items()}
        if headers.get("transfer-encoding") == "chunked":
            while size := int((await self._reader.readuntil(b"\r\n")).strip() or b"0", 16):
                await self._reader.readexactly(size + 2)
            await self._reader.readuntil(b"\r\n")
        else:
            await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            self.close()
        return int(status_line.split(" ", 2)[1])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def refuse_cached_answers(url: str, photo: tuple[str, bytes]) -> None:
    """Exit where the service answers a repeated photo from its result cache (X-Cache: hit): these photos
    repeat, so it would time lookups, not the service. benchmarks/cache.py measures the cache."""
    import httpx

    for _ in range(2):
        answer = httpx.post(url, files={"file": (photo[0], photo[1], "image/jpeg")}, timeout=60)
    if answer.headers.get("X-Cache") == "hit":
        raise SystemExit(f"{url} answered a repeated photo from its result cache: these photos repeat, so the "
                         f"numbers would time the cache. Serve it with {RESULT_CACHE_ENV_VAR}=off (or "
                         "ingress.cache.enabled: false); benchmarks/cache.py measures the cache itself.")


def sweep(url: str, levels: list[int], photos, *, seconds=None, requests=None, images_per_request=1,
          warmup: int = 20, label: str = "") -> list[LoadResult]:
    """Run each concurrency level in turn (after a short warm-up) with a progress bar."""
    from tqdm import tqdm

    refuse_cached_answers(url, photos[0])
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

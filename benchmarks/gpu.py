"""GPU throughput: the model alone at batch 1 to 256, then end to end through HTTP.

    python -m benchmarks.gpu                        # on a machine with a CUDA GPU
    python -m benchmarks.gpu --skip-http            # model only
    python -m benchmarks.gpu --http-seconds 30 --clients 8

Model only: the cuda-graphs backend (FP16, channels-last, a CUDA Graph per batch size) against
eager FP32 torch on the same GPU, images/s at each batch size, with uint8 batches coming from host
memory as they do in the replica. End to end: `serve run configs/gpu.yaml` (decoding on the GPU),
the shared photos posted by `--clients` load-generator processes, one image per request and several
per request. Writes benchmarks/results/gpu.{md,png,json} with the GPU and the CPU core count.
Without a CUDA GPU it says so and writes nothing.

Correct first: before a backend or the service is timed, its answers on the shared photos are
compared with eager FP32 torch on the same weights (at least 99% top-1 agreement, no NaN); one that
disagrees is refused and nothing is written. Latency percentiles are computed over every request of
every load-generator process together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time

import numpy as np

from benchmarks.load import load_photos, run_load
from benchmarks.report import (
    RESULT_CACHE_OFF,
    RESULTS,
    Disagrees,
    check_agreement,
    command_line,
    machine_line,
    markdown_table,
)

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
MIN_TOP1_AGREEMENT = 0.99


def model_only(seconds_per_point: float, device: str = "cuda", batch_sizes: list[int] | None = None) -> list[dict]:
    """Images/s of cuda-graphs fp16 and eager fp32 at each batch size, uint8 batches from host memory.
    On `device="cpu"` (a dry run of benchmarks/device_run.py) only eager fp32 runs."""
    import torch

    from serve_app.imaging import load_image
    from serve_app.model.backends.torch_eager import TorchEagerBackend
    from serve_app.model.weights import resolve_weights
    from serve_app.settings import ModelSettings

    source = resolve_weights("standin")
    photos = [load_image(data, max_pixels=10**8) for _, data in load_photos()]
    sizes = batch_sizes or BATCH_SIZES
    eager = TorchEagerBackend(ModelSettings(weights="standin", backend="torch", device=device), source, 4)
    backends = {"eager fp32": eager}
    every_photo = np.stack(photos)
    reference = eager.infer(every_photo)
    if not np.isfinite(reference).all():
        raise Disagrees("eager FP32 answered NaN or infinity: nothing to compare with")
    if device == "cuda":
        from serve_app.model.backends.cuda_graphs import CudaGraphsBackend

        graphs = CudaGraphsBackend(
            ModelSettings(weights="standin", backend="cuda-graphs", graph_batch_sizes=sizes), source, 4
        )
        logits = graphs.infer(every_photo)
        if not np.isfinite(logits).all():
            raise Disagrees("cuda-graphs answered NaN or infinity: not timed, nothing written")
        check_agreement("cuda-graphs fp16", logits.argmax(1), reference.argmax(1), MIN_TOP1_AGREEMENT)
        backends = {"cuda-graphs fp16": graphs, **backends}
    rows = []
    for size in sizes:
        batch = np.stack([photos[i % len(photos)] for i in range(size)])
        row = {"batch": size}
        for label, backend in backends.items():
            backend.infer(batch)
            if device == "cuda":
                torch.cuda.synchronize()
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds_per_point:
                backend.infer(batch)
                runs += 1
            row[label] = round(runs * size / (time.perf_counter() - started))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _client(url: str, concurrency: int, seconds: float, images_per_request: int, queue) -> None:
    result = asyncio.run(run_load(url, concurrency, load_photos(), seconds=seconds, images_per_request=images_per_request))
    queue.put({**result.summary(), "latencies": result.latencies})


def http_load(url: str, clients: int, concurrency: int, seconds: float, images_per_request: int) -> dict:
    """Several load-generator processes: one Python process can't post thousands of requests a second."""
    queue = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_client, args=(url, max(1, concurrency // clients), seconds, images_per_request, queue))
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    summaries = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    images = sum(s["images_s"] for s in summaries)
    latencies_ms = 1000 * np.concatenate([s["latencies"] for s in summaries]) if summaries else np.array([])
    return {
        "concurrency": concurrency, "images_per_request": images_per_request, "images_s": round(images),
        "req_s": round(sum(s["req_s"] for s in summaries)), "errors": sum(s["errors"] for s in summaries),
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 1) if latencies_ms.size else None,
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 1) if latencies_ms.size else None,
    }


def served_top1(url: str, weights: str) -> tuple[list[int], list[int]]:
    """The service's top-1 for every shared photo, and eager FP32 torch's on the same weights."""
    import httpx
    import torch

    from serve_app.imaging import load_image
    from serve_app.model.backends.torch_eager import TorchEagerBackend
    from serve_app.model.weights import resolve_weights
    from serve_app.settings import ModelSettings

    photos = load_photos()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager = TorchEagerBackend(ModelSettings(weights=weights, backend="torch", device=device), resolve_weights(weights), 4)
    reference = eager.infer(np.stack([load_image(data, max_pixels=10**8) for _, data in photos])).argmax(1)
    served = []
    with httpx.Client(timeout=60) as client:
        for name, data in photos:
            response = client.post(url, params={"top_k": 1}, files={"file": (name, data, "image/jpeg")})
            response.raise_for_status()
            served.append(response.json()["predictions"][0]["index"])
    return served, list(reference)


def end_to_end(args) -> list[dict]:
    from serve_app.launch.harness import free_port, load_config, serve_run, without_result_cache

    config = without_result_cache(load_config("gpu.yaml"))  # its photos repeat: every one goes to the model
    config["http_options"].update(host="127.0.0.1", port=free_port())
    config["applications"][0]["args"]["model"]["weights"] = args.weights
    rows = []
    with serve_run(config, startup_timeout_s=600) as base_url:
        url = f"{base_url}/v1/classify"
        check_agreement("configs/gpu.yaml through HTTP", *served_top1(url, args.weights), MIN_TOP1_AGREEMENT)
        asyncio.run(run_load(url, 16, load_photos(), requests=200))  # warm-up
        for images_per_request in (1, 16):
            for concurrency in args.concurrency:
                row = http_load(url, args.clients, concurrency, args.http_seconds, images_per_request)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def write(gpu_name: str, model_rows: list[dict], http_rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for label in ("cuda-graphs fp16", "eager fp32"):
        axis.plot([r["batch"] for r in model_rows], [r[label] for r in model_rows], marker="o", label=label)
    axis.set(xscale="log", xlabel="batch size", ylabel="images/s", title=f"ResNet-18 model only on {gpu_name}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / "gpu.png", dpi=120)
    best = max(model_rows, key=lambda r: r["cuda-graphs fp16"])
    lines = [
        "# GPU throughput", "",
        f"- GPU: {gpu_name}; host: {machine_line()} ({os.cpu_count()} CPU cores)",
        f"- Command: `{command_line()}`",
        f"- {RESULT_CACHE_OFF}",
        f"- Best model-only: {best['cuda-graphs fp16']} images/s at batch {best['batch']} (target 20,000)", "",
        "## Model only", "",
        markdown_table(["batch", "cuda-graphs fp16 images/s", "eager fp32 images/s"],
                       [[r["batch"], r["cuda-graphs fp16"], r["eager fp32"]] for r in model_rows]), "",
        "![gpu](gpu.png)", "",
    ]
    if http_rows:
        lines += [
            "## End to end through HTTP (configs/gpu.yaml, decoding on the GPU)", "",
            markdown_table(["images/request", "concurrency", "images/s", "req/s", "p50 ms", "p99 ms", "errors"],
                           [[r["images_per_request"], r["concurrency"], r["images_s"], r["req_s"], r["p50_ms"],
                             r["p99_ms"], r["errors"]] for r in http_rows]),
            "", f"Best: {max(r['images_s'] for r in http_rows)} images/s (target 5,000).", "",
        ]
    (RESULTS / "gpu.md").write_text("\n".join(lines))
    (RESULTS / "gpu.json").write_text(json.dumps({"gpu": gpu_name, "model": model_rows, "http": http_rows}))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds-per-point", type=float, default=3.0)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--http-seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=6, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--weights", default="standin")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: benchmarks/gpu.py measures GPU throughput and has nothing to measure (nothing written)")
    model_rows = model_only(args.seconds_per_point)
    http_rows = [] if args.skip_http else end_to_end(args)
    write(torch.cuda.get_device_name(), model_rows, http_rows)


if __name__ == "__main__":
    main()

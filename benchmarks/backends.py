"""Backend benchmark: images/s, latency, load time and memory of every inference backend.

    python -m benchmarks.backends                      # everything, about 5 minutes on 2 cores
    python -m benchmarks.backends --seconds 1 --no-serve

Each backend runs in its own fresh process, set up like a model replica (Ray and Serve imported,
threads = --threads), on the shared photos: model only (preprocessed uint8 batches) and with
decode + preprocess (JPEG bytes in, one process, sequential), at batch 1, 8, 16 and 32. Throughput
is batch size / median batch latency. Then, unless --no-serve, the real service is started on
onnx-int8 and the resident memory of its Ingress and Classifier replica processes is read after
traffic. Writes benchmarks/results/backends.md and backends.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from serve_app.imaging import image_files
from serve_app.launch.harness import process_memory_mb, processes_named, replica_title
from serve_app.settings import CPU_BACKENDS, SHARED_IMAGES

BACKENDS = list(CPU_BACKENDS)
BATCH_SIZES = [1, 8, 16, 32]
TARGETS = {"onnx_vs_torch": 1.3, "int8_vs_onnx": 2.0, "load_s": 1.5, "model_rss_mb": 400, "ingress_rss_mb": 250}


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def timed_batches(run, batch: int, seconds: float, min_runs: int = 3) -> list[float]:
    latencies, deadline, step = [], time.perf_counter() + seconds, 0
    while len(latencies) < min_runs or time.perf_counter() < deadline:
        started = time.perf_counter()
        run(step, batch)
        latencies.append(time.perf_counter() - started)
        step += 1
    return latencies


def worker(backend_name: str, artifacts: str, weights: str, threads: int, seconds: float, images: Path) -> None:
    """One backend in this process, as a replica would hold it; results as JSON lines on stdout."""
    import serve_app.model.classifier  # noqa: F401  (what a model replica imports: Ray, Serve)
    from serve_app.imaging import load_image
    from serve_app.model.backends import backend_class
    from serve_app.model.weights import resolve_weights
    from serve_app.settings import ModelSettings

    settings = ModelSettings(weights=weights, backend=backend_name, device="cpu", artifacts_dir=artifacts)
    source = resolve_weights(weights, calibration_images=settings.calibration_images)
    started = time.perf_counter()
    runtime = backend_class(settings)
    import_s = time.perf_counter() - started
    started = time.perf_counter()
    backend = runtime(settings, source, threads)
    load_s = time.perf_counter() - started
    rss_loaded = process_memory_mb(os.getpid())["rss_mb"]

    uploads = [p.read_bytes() for p in image_files(images)]
    photos = np.stack([load_image(data, max_pixels=10**9) for data in uploads])
    backend.infer(photos[:8])  # first-run allocations and kernel selection

    def pick(step: int, batch: int, items):
        start = (step * batch) % len(items)
        return [items[(start + i) % len(items)] for i in range(batch)]

    def model_only(step, batch):
        backend.infer(np.stack(pick(step, batch, photos)))

    def with_decode(step, batch):
        backend.infer(np.stack([load_image(data, max_pixels=10**9) for data in pick(step, batch, uploads)]))

    for batch in BATCH_SIZES:
        for stage, run in (("model", model_only), ("decode+model", with_decode)):
            emit(kind="batch", stage=stage, batch=batch, latencies=timed_batches(run, batch, seconds))
    emit(kind="process", import_s=import_s, load_s=load_s, rss_loaded_mb=rss_loaded,
         peak_rss_mb=process_memory_mb(os.getpid())["peak_rss_mb"], torch_imported="torch" in sys.modules)


def run_backend(backend: str, args, artifacts: str, progress) -> dict:
    command = [sys.executable, "-m", "benchmarks.backends", "--worker", backend, "--artifacts", artifacts,
               "--weights", args.weights, "--threads", str(args.threads), "--seconds", str(args.seconds),
               "--images", str(args.images)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    result = {"batches": {}, "process": None}
    for line in child.stdout:
        event = json.loads(line)
        if event["kind"] == "batch":
            result["batches"][(event["stage"], event["batch"])] = event["latencies"]
            progress.update(1)
        else:
            result["process"] = event
    if child.wait() != 0 or result["process"] is None:
        raise RuntimeError(f"benchmark worker for {backend} failed (exit {child.returncode})")
    return result


def measure_service_memory(weights: str, requests: int) -> dict[str, dict]:
    """Start the real service on onnx-int8, send traffic, read each replica process's memory."""
    import httpx

    from serve_app.launch.harness import free_port, serve_run, sized_config

    photos = image_files(SHARED_IMAGES)
    with serve_run(sized_config(free_port(), weights=weights, backend="onnx-int8")) as url:
        with httpx.Client(timeout=60) as client:
            for i in range(requests):
                path = photos[i % len(photos)]
                client.post(f"{url}/v1/classify", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        return {
            name: process_memory_mb(pids[0])
            for name in ("Ingress", "Classifier")
            if (pids := processes_named(replica_title(name)))
        }


def summarise(results: dict[str, dict]) -> dict:
    table = {}
    for backend, result in results.items():
        for (stage, batch), latencies in result["batches"].items():
            median = float(np.median(latencies))
            table[(backend, stage, batch)] = {"images_s": batch / median, "p50_ms": 1000 * median,
                                              "p95_ms": 1000 * float(np.percentile(latencies, 95))}
    return table


def write_results(args, results, table, service_memory) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(results)
    rows = []
    for backend in backends:
        process = results[backend]["process"]
        for batch in BATCH_SIZES:
            model, full = table[(backend, "model", batch)], table[(backend, "decode+model", batch)]
            rows.append([backend, batch, f"{model['images_s']:.0f}", f"{model['p50_ms']:.1f}", f"{model['p95_ms']:.1f}",
                         f"{full['images_s']:.0f}", f"{full['p50_ms']:.1f}",
                         f"{process['import_s']:.2f}", f"{process['load_s']:.2f}", f"{process['peak_rss_mb']:.0f}",
                         "yes" if process["torch_imported"] else "no"])

    def at8(backend):
        return table[(backend, "model", 8)]["images_s"]

    checks = []
    if {"torch", "onnx"} <= set(backends):
        ratio = at8("onnx") / at8("torch")
        checks.append(("`onnx` / `torch`, model only, batch 8", f"{ratio:.2f}x", f">= {TARGETS['onnx_vs_torch']}x",
                       ratio >= TARGETS["onnx_vs_torch"]))
    if {"onnx", "onnx-int8"} <= set(backends):
        ratio = at8("onnx-int8") / at8("onnx")
        checks.append(("`onnx-int8` / `onnx`, model only, batch 8", f"{ratio:.2f}x", f">= {TARGETS['int8_vs_onnx']}x",
                       ratio >= TARGETS["int8_vs_onnx"]))
    for backend in [b for b in backends if b != "torch"]:
        load = results[backend]["process"]["load_s"]
        checks.append((f"`{backend}` load from prepared artifacts", f"{load:.2f} s", f"<= {TARGETS['load_s']} s",
                       load <= TARGETS["load_s"]))
    for name, limit in (("Classifier", TARGETS["model_rss_mb"]), ("Ingress", TARGETS["ingress_rss_mb"])):
        if name in service_memory:
            peak = service_memory[name]["peak_rss_mb"]
            checks.append((f"{name} replica peak RSS (live service, onnx-int8)", f"{peak:.0f} MB", f"<= {limit} MB",
                           peak <= limit))

    fastest = max(backends, key=lambda b: max(table[(b, "decode+model", n)]["images_s"] for n in BATCH_SIZES))
    ceiling = max(table[(fastest, "decode+model", n)]["images_s"] for n in BATCH_SIZES)
    lines = [
        "# Backend benchmark",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{args.command}`",
        f"- Weights: `{args.weights}`" + (" (stand-in: same architecture and arithmetic as the official weights)"
                                          if args.weights == "standin" else ""),
        f"- Each backend in a fresh process set up like a replica, {args.threads} intra-op threads, "
        f"at least {args.seconds:g} s per cell; images/s = batch / median batch latency.",
        "- `import s`: importing the backend's runtime (torch, or ONNX Runtime); `load s`: building the "
        "model from prepared artifacts (eager torch: from the state dict).",
        "",
        markdown_table(["backend", "batch", "model img/s", "model p50 ms", "model p95 ms",
                        "decode+model img/s", "decode+model p50 ms", "import s", "load s", "peak RSS MB",
                        "imports torch"], rows),
        "",
        "## Targets",
        "",
        markdown_table(["what", "measured", "target", "met"],
                       [[what, got, want, "yes" if ok else "**no**"] for what, got, want, ok in checks]),
        "",
        f"In-process ceiling with decoding (no HTTP): `{fastest}` at {ceiling:.0f} images/s.",
        "",
        "![backends](backends.png)",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "backends.md"
    out.write_text("\n".join(lines) + args.notes)

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for axis, stage in zip(axes, ("model", "decode+model")):
        for backend in backends:
            axis.plot(BATCH_SIZES, [table[(backend, stage, n)]["images_s"] for n in BATCH_SIZES], marker="o", label=backend)
        axis.set(title=f"{stage} ({args.threads} threads)", xlabel="batch size", ylabel="images/s", xticks=BATCH_SIZES)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(machine_line(), fontsize=9)
    figure.tight_layout()
    figure.savefig(RESULTS / "backends.png", dpi=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--weights", default="standin")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per (backend, stage, batch) cell")
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--artifacts", default=None, help="prepared artifacts (default: export into a temp dir)")
    parser.add_argument("--no-serve", action="store_true", help="skip the live-service memory measurement")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown appended to the results file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.artifacts, args.weights, args.threads, args.seconds, args.images)

    from tqdm import tqdm

    args.command = command_line()
    args.notes = ("\n" + args.notes.read_text()) if args.notes else ""
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = args.artifacts
        if artifacts is None:
            from serve_app.model.artifacts import export_artifacts
            from serve_app.settings import ModelSettings

            artifacts = scratch
            export_artifacts(ModelSettings(weights=args.weights), Path(artifacts))
        backends = args.backends.split(",")
        results = {}
        with tqdm(total=len(backends) * len(BATCH_SIZES) * 2, desc="backends", unit="cell") as progress:
            for backend in backends:
                progress.set_postfix_str(backend)
                results[backend] = run_backend(backend, args, artifacts, progress)
    service_memory = {} if args.no_serve else measure_service_memory(args.weights, requests=200)
    table = summarise(results)
    print(write_results(args, results, table, service_memory).read_text())


if __name__ == "__main__":
    main()

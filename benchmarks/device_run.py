"""Everything the lent GPU machine (one GPU, 16 cores) is for, prepared to run in two short calls.

    # on the device, after `source .device/setup.sh` (see ../shared/device/README.md):
    python3 -m benchmarks.device_run --part 1 --out "$OUT"   # ~4.5 min: pytest -m gpu, the model-only sweep,
                                                             # the null Serve app, configs/gpu.yaml end to end
    python3 -m benchmarks.device_run --part 2 --out "$OUT"   # ~4 min: the null app, configs/cpu.yaml on every
                                                             # core, autoscaling from its minimum up and back
    # here, afterwards: benchmarks/results/gpu.* and scale16.* rewritten from what came back
    python -m benchmarks.device_run --publish <files_at>/results
    # here, before spending a minute of the device: every step it can run on 2 cores without CUDA
    python -m benchmarks.device_run --part 1 --dry-run && python -m benchmarks.device_run --part 2 --dry-run

Part 1: `pytest -m gpu`; the model-only sweep (benchmarks/gpu.py: cuda-graphs fp16 against eager fp32,
batch 1 to 256, host copy included); the null Ray Serve app (one Starlette route that reads the
upload and answers a constant, same Ray settings, same replicas as our ingress); the serving path
alone: ours on the null model (configs/gpu.yaml with `backend: null`: decoding, coalescing, the
Ray call, @serve.batch, top-k and JSON as served, no forward pass) against gunicorn Flask and
LitServe on the same null model, a worker per core (benchmarks/compare.py flask-null,
litserve-null); then
configs/gpu.yaml, both under the same load generator: ours is timed only after its answers over
HTTP agree with eager FP32 on >= 99% of the shared photos with no NaN; its time to ready, single-image
requests at concurrency 256, 16-image requests. Part 2: the null app again, then configs/cpu.yaml
fitted to the machine's cores (python -m serve_app serve's fitting) with short autoscaling delays,
under a load ramp: model replicas, requests/s and images/s every second, plotted.

--dry-run runs the same steps on this machine: configs/cpu.yaml instead of gpu.yaml, the eager CPU
model instead of the GPU sweep, seconds instead of minutes. Everything is written under --out
(default $OUT, else a temporary folder): results/gpu.{md,json,png}, results/scale16.{md,json,png},
pytest_gpu.txt, and run.json with every measurement and each target's verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.load import load_photos, run_load
from benchmarks.report import (
    RESULT_CACHE_OFF,
    RESULTS,
    check_agreement,
    command_line,
    machine_line,
    markdown_table,
)
from serve_app.launch.harness import (
    RAY_ENV,
    REPO,
    deployment,
    free_port,
    load_config,
    processes_named,
    replica_title,
    serve_run,
    without_result_cache,
)
from serve_app.settings import ALLOW_NULL_MODEL_ENV_VAR

NULL_APP = "benchmarks.baselines.null_serve:app"
RAMP = [8, 64, 256, 256, 64, 8, 0, 0]  # concurrency per step of the autoscaling run; 0 = idle


class Plan:
    """How big each step is: the device's, or a dry run's on 2 cores."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.seconds = 4.0 if dry_run else 20.0
        self.clients = 2 if dry_run else 8  # load-generator processes
        self.single_concurrency = 16 if dry_run else 256
        self.multi_concurrency = 4 if dry_run else 64
        self.step_seconds = 5.0 if dry_run else 15.0
        self.ramp = [8, 8, 0, 0, 0] if dry_run else RAMP
        self.sweep_seconds = 0.3 if dry_run else 1.5


def null_app(plan: Plan):
    """The null Serve app, sized like our ingress (its replicas, their CPUs), with our Ray settings."""
    ours = deployment(load_config("cpu.yaml" if plan.dry_run else "gpu.yaml"), "Ingress")
    replicas = 1 if plan.dry_run else ours["autoscaling_config"]["min_replicas"]
    config = {
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [{"name": "null", "route_prefix": "/", "import_path": NULL_APP,
                          "deployments": [{"name": "NullIngress", "num_replicas": replicas,
                                           "max_ongoing_requests": ours["max_ongoing_requests"],
                                           "ray_actor_options": {"num_cpus": 0.5 if plan.dry_run else 1}}]}],
    }
    return serve_run(config, ready=lambda url: _posts_ok(url + "/"))


def _posts_ok(url: str) -> bool:
    import httpx

    name, data = load_photos()[0]
    return httpx.post(url, files={"file": (name, data, "image/jpeg")}, timeout=10).status_code == 200


def measure_null(plan: Plan) -> dict:
    from benchmarks.gpu import http_load

    with null_app(plan) as base_url:
        asyncio.run(run_load(base_url + "/", 8, load_photos(), requests=100))
        return http_load(base_url + "/", plan.clients, plan.single_concurrency, plan.seconds, 1)


def measure_null_model(plan: Plan) -> dict[str, dict]:
    """The serving path alone on this node: ours on the null model (the config of the run, `backend:
    null`) and the null peers (gunicorn Flask and LitServe, a worker per core, decoding as they do,
    then the null model's fixed logits), single-image requests at the single-image concurrency, each
    timed only once every answer is the null model's."""
    from benchmarks import compare
    from benchmarks.gpu import http_load

    def ours_null(weights: str):
        config = ours_config(plan)
        config["applications"][0]["args"]["model"]["backend"] = "null"
        return _at_path(serve_run(config, env={**RAY_ENV, ALLOW_NULL_MODEL_ENV_VAR: "1"}, startup_timeout_s=600),
                        "/v1/classify")

    photos = load_photos()
    measured = {}
    for name, system in (("ours-null", ours_null), ("flask-null", compare.SYSTEMS["flask-null"]),
                         ("litserve-null", compare.SYSTEMS["litserve-null"])):
        with system("standin") as url:
            check_agreement(name, compare.served_labels(url, photos[:20]), compare.null_labels(photos[:20]), 1.0,
                            "the null model's fixed answer")
            asyncio.run(run_load(url, 8, photos, requests=100))  # warm-up
            measured[name] = http_load(url, plan.clients, plan.single_concurrency, plan.seconds, 1)
        print(f"{name}:", measured[name], flush=True)
    return measured


@contextmanager
def _at_path(base_urls, path: str):
    with base_urls as base_url:
        yield base_url + path


def ours_config(plan: Plan) -> dict:
    if plan.dry_run:
        from benchmarks.compare import sized_for_two_cores
        from serve_app.launch.harness import sized_config

        return sized_config(free_port(), edit=sized_for_two_cores)
    config = without_result_cache(load_config("gpu.yaml"))
    config["http_options"].update(host="127.0.0.1", port=free_port())
    config["applications"][0]["args"]["model"]["weights"] = "standin"
    return config


def part_one(plan: Plan, out: Path) -> dict:
    from benchmarks.gpu import http_load, model_only, served_top1

    run: dict = {"part": 1, "dry_run": plan.dry_run}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", "-q",
                            "tests/test_gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    (out / "pytest_gpu.txt").write_text(tests.stdout + tests.stderr)
    run["pytest_gpu"] = {"exit": tests.returncode, "summary": (tests.stdout.strip().splitlines() or [""])[-1]}
    print("pytest -m gpu:", run["pytest_gpu"], flush=True)
    run["model"] = model_only(plan.sweep_seconds, device="cpu" if plan.dry_run else "cuda",
                              batch_sizes=[1, 8] if plan.dry_run else None)
    run["null"] = measure_null(plan)
    print("null app:", run["null"], flush=True)
    run["null_model"] = measure_null_model(plan)
    started = time.monotonic()
    with serve_run(ours_config(plan), startup_timeout_s=600) as base_url:
        run["ready_s"] = round(time.monotonic() - started, 1)
        url = f"{base_url}/v1/classify"
        served, reference = served_top1(url, "standin")
        run["agreement"] = check_agreement("ours over HTTP", served, reference, 0.9 if plan.dry_run else 0.99)
        asyncio.run(run_load(url, 16, load_photos(), requests=200))  # warm-up
        run["single"] = http_load(url, plan.clients, plan.single_concurrency, plan.seconds, 1)
        run["multi"] = http_load(url, plan.clients, plan.multi_concurrency, plan.seconds, 16)
    print("ours:", {k: run[k] for k in ("ready_s", "agreement", "single", "multi")}, flush=True)
    return run


def part_two(plan: Plan, out: Path) -> dict:
    from benchmarks.gpu import http_load
    from serve_app.launch.fitting import fit_to_machine

    run: dict = {"part": 2, "dry_run": plan.dry_run, "null": measure_null(plan)}
    if plan.dry_run:  # 2 cores hold one model replica as configured: shares small enough for two
        from serve_app.launch.harness import fast_autoscaling, sized_config

        fitted = sized_config(free_port(), edit=fast_autoscaling)
    else:
        config = without_result_cache(load_config("cpu.yaml"))
        config["http_options"].update(host="127.0.0.1", port=free_port())
        config["applications"][0]["args"]["model"]["weights"] = "standin"
        fitted = fit_to_machine(config, float(os.cpu_count() or 1), 0.0, "configs/cpu.yaml").config
        deployment(fitted, "Classifier")["autoscaling_config"].update(
            upscale_delay_s=2, downscale_delay_s=8, metrics_interval_s=0.5, look_back_period_s=3)
    run["max_replicas"] = deployment(fitted, "Classifier")["autoscaling_config"]["max_replicas"]
    samples: list[tuple[float, int]] = []
    with serve_run(fitted, startup_timeout_s=600) as base_url:
        url = f"{base_url}/v1/classify"
        started, stop = time.monotonic(), threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((round(time.monotonic() - started, 1), len(processes_named(replica_title("Classifier")))))
                time.sleep(1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        steps = []
        for concurrency in plan.ramp:
            at = time.monotonic() - started
            if concurrency == 0:
                time.sleep(plan.step_seconds)
                steps.append({"at_s": round(at, 1), "concurrency": 0})
                continue
            step = http_load(url, plan.clients, concurrency, plan.step_seconds, 1)
            steps.append({"at_s": round(at, 1), **step})
            print(json.dumps(steps[-1]), flush=True)
        stop.set()
        sampler.join()
    run["steps"], run["replicas"] = steps, samples
    return run


def targets(run: dict) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, met) for what this part measured (the issue's targets)."""
    checks = []
    if run["part"] == 1:
        best = max((row.get("cuda-graphs fp16", 0) for row in run["model"]), default=0)
        checks.append(("model only, cuda-graphs fp16, images/s", f"{best:,}", ">= 40,000", best >= 40_000))
        checks.append(("gpu.yaml top-1 agreement with eager FP32 over HTTP", f"{run['agreement']:.1%}", ">= 99%",
                       run["agreement"] >= 0.99))
        share = run["single"]["req_s"] / run["null"]["req_s"] if run["null"]["req_s"] else 0.0
        checks.append(("single-image requests, ours / null app", f"{share:.0%}", ">= 80%", share >= 0.8))
        null_model = run["null_model"]
        best = max((name for name in null_model if name != "ours-null"), key=lambda name: null_model[name]["req_s"])
        ratio = null_model["ours-null"]["req_s"] / null_model[best]["req_s"] if null_model[best]["req_s"] else 0.0
        checks.append((f"null model, ours / best null peer ({best})", f"{ratio:.2f}x", ">= 1.0x", ratio >= 1.0))
        multi = run["multi"]
        checks.append(("16-image requests, images/s (errors)", f"{multi['images_s']:,} ({multi['errors']})",
                       ">= 5,000 (0)", multi["images_s"] >= 5000 and multi["errors"] == 0))
        checks.append(("replica start to ready", f"{run['ready_s']:.0f} s", "<= 60 s", run["ready_s"] <= 60))
    else:
        loaded = [s for s in run["steps"] if s.get("concurrency")]
        best = max(loaded, key=lambda s: s["images_s"]) if loaded else {"images_s": 0, "req_s": 0}
        checks.append(("cpu.yaml on every core, images/s", f"{best['images_s']:,}", ">= 1,000", best["images_s"] >= 1000))
        share = best["req_s"] / run["null"]["req_s"] if run["null"]["req_s"] else 0.0
        checks.append(("cpu.yaml, ours / null app", f"{share:.0%}", ">= 60%", share >= 0.6))
        counts = [n for _, n in run["replicas"]]
        up, down = max(counts, default=0), (counts[-1] if counts else 0)
        checks.append(("model replicas: up under load, back down idle", f"{min(counts, default=0)} -> {up} -> {down}",
                       f"up to {run['max_replicas']}, back to 1", up > 1 and down < up))
    return checks


def write(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    run["targets"] = [{"what": a, "measured": b, "target": c, "met": ok} for a, b, c, ok in targets(run)]
    (out / f"run{run['part']}.json").write_text(json.dumps(run, indent=2, default=str))
    device = _device_name(run)
    header = [f"- Device: {device}; host: {machine_line()}", f"- Command: `{command_line()}`",
              f"- {RESULT_CACHE_OFF}",
              "- DRY RUN on the development machine: these numbers say the script works, nothing about a GPU."
              if run["dry_run"] else "", ""]
    verdicts = markdown_table(["target", "measured", "wanted", "met"],
                              [[t["what"], t["measured"], t["target"], "yes" if t["met"] else "**no**"]
                               for t in run["targets"]])
    figure, axis = plt.subplots(figsize=(8, 4.5))
    if run["part"] == 1:
        stem = "gpu"
        labels = [key for key in run["model"][0] if key != "batch"]
        for label in labels:
            axis.plot([r["batch"] for r in run["model"]], [r[label] for r in run["model"]], marker="o", label=label)
        axis.set(xscale="log", xlabel="batch size", ylabel="images/s", title=f"ResNet-18 model only, {device}")
        axis.legend()
        http = [["null Serve app", 1, run["null"]["concurrency"], run["null"]["req_s"], run["null"]["images_s"],
                 run["null"]["p50_ms"], run["null"]["p99_ms"], run["null"]["errors"]]]
        for name, r in [*run["null_model"].items(), ("ours", run["single"]), ("ours", run["multi"])]:
            http.append([name, r["images_per_request"], r["concurrency"], r["req_s"], r["images_s"], r["p50_ms"],
                         r["p99_ms"], r["errors"]])
        body = ["# GPU: the model alone and configs/gpu.yaml end to end", "", *header, "## Targets", "", verdicts, "",
                "## Model only (host copy included)", "",
                markdown_table(["batch", *labels], [[r["batch"], *(r[label] for label in labels)] for r in run["model"]]),
                "", f"## End to end (ready after {run['ready_s']} s; top-1 agreement with eager FP32 "
                f"{run['agreement']:.1%} over HTTP, checked before timing)", "",
                markdown_table(["system", "images/request", "concurrency", "req/s", "images/s", "p50 ms", "p99 ms",
                                "errors"], http), "", f"`pytest -m gpu`: {run['pytest_gpu']['summary']}", ""]
    else:
        stem = "scale16"
        times, counts = zip(*run["replicas"]) if run["replicas"] else ((), ())
        axis.step(times, counts, where="post", color="tab:red", label="model replicas")
        axis.set(xlabel="seconds", ylabel="model replicas", title=f"configs/cpu.yaml on {os.cpu_count()} cores")
        throughput = axis.twinx()
        loaded = [s for s in run["steps"] if s.get("concurrency")]
        throughput.plot([s["at_s"] for s in loaded], [s["images_s"] for s in loaded], marker="o", color="tab:blue")
        throughput.set_ylabel("images/s (per step)")
        body = [f"# configs/cpu.yaml on {os.cpu_count()} cores: throughput and autoscaling", "", *header,
                "## Targets", "", verdicts, "", f"Null Serve app: {run['null']['req_s']} req/s at concurrency "
                f"{run['null']['concurrency']}.", "", "## Load ramp", "",
                markdown_table(["at s", "concurrency", "req/s", "images/s", "p50 ms", "p99 ms", "errors"],
                               [[s["at_s"], s["concurrency"], s.get("req_s", "-"), s.get("images_s", "-"),
                                 s.get("p50_ms", "-"), s.get("p99_ms", "-"), s.get("errors", "-")]
                                for s in run["steps"]]), ""]
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(results / f"{stem}.png", dpi=120)
    (results / f"{stem}.md").write_text("\n".join([*body, f"![{stem}]({stem}.png)", ""]))
    (results / f"{stem}.json").write_text(json.dumps(run, indent=2, default=str))
    print((results / f"{stem}.md").read_text(), flush=True)


def _device_name(run: dict) -> str:
    if run["dry_run"]:
        return "none (dry run)"
    import torch

    return torch.cuda.get_device_name()


def publish(folder: Path) -> None:
    """Copy what came back from the device into benchmarks/results (a dry run's results are refused)."""
    for stem in ("gpu", "scale16"):
        if not (folder / f"{stem}.json").is_file():
            continue
        if json.loads((folder / f"{stem}.json").read_text())["dry_run"]:
            sys.exit(f"{folder / stem}.json is from a dry run: not published")
        for suffix in ("md", "json", "png"):
            shutil.copy(folder / f"{stem}.{suffix}", RESULTS / f"{stem}.{suffix}")
        print(f"published {stem}.md, .json, .png to {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", type=int, choices=(1, 2))
    parser.add_argument("--dry-run", action="store_true", help="on this machine, without CUDA: prove the script")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="device-run-")))
    parser.add_argument("--publish", type=Path, help="copy a device run's results/ into benchmarks/results")
    args = parser.parse_args()
    if args.publish:
        publish(args.publish)
        return
    if not args.part:
        parser.error("--part 1 or 2 (or --publish)")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU here: run with --dry-run to prove the script on this machine")
    plan = Plan(args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    run = part_one(plan, args.out) if args.part == 1 else part_two(plan, args.out)
    write(run, args.out)
    print(f"written under {args.out}")


if __name__ == "__main__":
    main()

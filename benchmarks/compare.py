"""Ours against the simple ways, one after another on the same machine, photos and load generator.

    python -m benchmarks.compare                       # ~15 minutes on 2 cores
    python -m benchmarks.compare --systems ours,litserve-int8,flask-int8,plain-serve-int8   # same model only
    python -m benchmarks.compare --seconds 5 --concurrency 1,8

Systems: `ours` (configs/cpu.yaml via `serve run`, sized for this machine by `sized_for_two_cores`),
`plain-serve` (benchmarks/baselines/plain_serve.py with Ray's defaults), `plain-serve+ray-settings`
(the same with the Ray settings `python -m serve_app serve` uses; not a target), `flask`
(benchmarks/baselines/flask_app.py under gunicorn, one worker per core, torch's default threads)
and `flask-tuned` (the same with one torch thread per worker). Those run eager FP32 torch, so ours
against them measures the serving design and INT8 together. `plain-serve-int8`, `flask-int8`
(gunicorn, one thread per worker) and `litserve-int8` (LitServe as its docs teach: two workers,
`max_batch_size=8`, `batch_timeout=0.01`, one thread each) run the very INT8 model ours serves:
ours against the best of them at each concurrency measures the serving design alone.

Before timing a system, its answers for every shared photo are compared with torchvision's eager
FP32 pipeline; a system whose top-1 agrees on fewer than MIN_TOP1_AGREEMENT of them is not timed.
Each is started, checked, warmed up, swept over the concurrency levels and stopped before the next
starts. Also measures the in-process ceiling (every core decoding and classifying with the served
INT8 model in one process, no HTTP), and reads our ingress's model calls per second at each level.
Writes benchmarks/results/serving.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from benchmarks.load import LoadResult, load_photos, plot, results_table, sweep
from benchmarks.report import (
    RESULTS,
    check_agreement,
    command_line,
    machine_line,
    markdown_table,
)
from serve_app.launch.harness import (
    RAY_ENV,
    deployment,
    free_port,
    running,
    serve_run,
    sized_config,
    wait_ready,
)

LEVELS = [1, 8, 32, 64]
TARGETS = {"vs_flask": 3.0, "vs_plain": 2.0, "p99_over_p50_at_8": 3.0}
MIN_TOP1_AGREEMENT = 0.9  # INT8 systems included; see benchmarks/results/int8_fidelity.md
INT8 = {"BASELINE_BACKEND": "onnx-int8"}


def sized_for_two_cores(config: dict) -> None:
    """Ours on a 2-core box (the sweep in results/batching.md chose these): one model replica with
    both cores' threads, the ingress decoding beside it."""
    classifier = deployment(config, "Classifier")
    classifier["ray_actor_options"]["num_cpus"] = 1.5
    classifier.pop("autoscaling_config", None)
    classifier["num_replicas"] = 1
    ingress = deployment(config, "Ingress")
    ingress["ray_actor_options"]["num_cpus"] = 0.5
    ingress.pop("autoscaling_config", None)
    ingress["num_replicas"] = 1


def post_ok(path: str):
    photo = load_photos()[0]

    def ready(base_url: str) -> bool:
        return httpx.post(base_url + path, files={"file": (photo[0], photo[1], "image/jpeg")}, timeout=30).status_code == 200

    return ready


@contextmanager
def ours(weights: str, edit=sized_for_two_cores) -> Iterator[str]:
    with serve_run(sized_config(free_port(), weights=weights, edit=edit)) as url:
        yield url + "/v1/classify"


@contextmanager
def plain_serve(weights: str, ray_env: dict[str, str] | None = None, baseline_env: dict[str, str] | None = None
                ) -> Iterator[str]:
    """Ray's defaults, as a user gets them, unless `ray_env` says otherwise."""
    port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "plain", "route_prefix": "/", "import_path": "benchmarks.baselines.plain_serve:app",
            "runtime_env": {"env_vars": {"SERVE_APP_WEIGHTS": weights, **(baseline_env or {})}},
        }],
    }
    with serve_run(config, ready=post_ok("/"), env=ray_env or {}) as url:
        yield url + "/"


@contextmanager
def plain_serve_with_our_ray_settings(weights: str) -> Iterator[str]:
    """Not a target: shows how much of the gap Ray's settings alone close (HAProxy, throughput mode)."""
    with plain_serve(weights, ray_env=RAY_ENV) as url:
        yield url


@contextmanager
def plain_serve_int8(weights: str) -> Iterator[str]:
    with plain_serve(weights, baseline_env=INT8) as url:
        yield url


@contextmanager
def flask(weights: str, threads: int | None = None, baseline_env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    log = Path(tempfile.mkdtemp(prefix="flask-baseline-")) / "gunicorn.log"
    command = [gunicorn, "-w", str(os.cpu_count() or 1), "-b", f"127.0.0.1:{port}", "--timeout", "120",
               "benchmarks.baselines.flask_app:app"]
    env = {"SERVE_APP_WEIGHTS": weights, **({"BASELINE_THREADS": str(threads)} if threads else {}), **(baseline_env or {})}
    with running(command, log, env=env) as process:
        wait_ready(f"http://127.0.0.1:{port}", process, 240, post_ok("/predict"))
        yield f"http://127.0.0.1:{port}/predict"


@contextmanager
def flask_tuned(weights: str) -> Iterator[str]:
    with flask(weights, threads=1) as url:
        yield url


@contextmanager
def flask_int8(weights: str) -> Iterator[str]:
    with flask(weights, threads=1, baseline_env=INT8) as url:
        yield url


@contextmanager
def litserve_int8(weights: str) -> Iterator[str]:
    """LitServe as its docs teach: two inference workers batching up to 8 within 10 ms, one thread each."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="litserve-baseline-")) / "litserve.log"
    command = [sys.executable, "-m", "benchmarks.baselines.litserve_app", "--port", str(port),
               "--workers", str(os.cpu_count() or 1)]
    env = {"SERVE_APP_WEIGHTS": weights, "BASELINE_THREADS": "1", **INT8}
    with running(command, log, env=env) as process:
        wait_ready(f"http://127.0.0.1:{port}", process, 240, post_ok("/predict"))
        yield f"http://127.0.0.1:{port}/predict"


SYSTEMS = {"ours": ours, "plain-serve": plain_serve, "plain-serve+ray-settings": plain_serve_with_our_ray_settings,
           "flask": flask, "flask-tuned": flask_tuned, "plain-serve-int8": plain_serve_int8, "flask-int8": flask_int8,
           "litserve-int8": litserve_int8}
EAGER_BASELINES = ("plain-serve", "plain-serve+ray-settings", "flask", "flask-tuned")
SAME_BACKEND_BASELINES = ("plain-serve-int8", "flask-int8", "litserve-int8")
BASELINES = EAGER_BASELINES + SAME_BACKEND_BASELINES


def reference_labels(weights: str, photos) -> list[str]:
    """torchvision's eager FP32 pipeline's top-1 label for each photo."""
    from benchmarks.baselines.common import CATEGORIES, EagerModel

    os.environ["SERVE_APP_WEIGHTS"] = weights
    model = EagerModel()
    return [CATEGORIES[int(model.logits([model.preprocess(data)])[0].argmax())] for _, data in photos]


def call_stats(url: str) -> dict:
    """Requests and model calls of our ingress replica so far (its /healthz)."""
    return httpx.get(url.rsplit("/v1/", 1)[0] + "/healthz", timeout=30).json()["ingress"]


def served_labels(url: str, photos) -> list[str]:
    """The system at `url`'s top-1 label for each photo (ours answers {"predictions"}, the baselines a list)."""
    labels = []
    with httpx.Client(timeout=60) as client:
        for name, data in photos:
            body = client.post(url, files={"file": (name, data, "image/jpeg")}).json()
            labels.append((body["predictions"][0] if isinstance(body, dict) else body[0])["label"])
    return labels


def in_process_ceiling(weights: str, seconds: float) -> float:
    """Images/s of the best the cores can do with no HTTP and no hops: one worker thread per core,
    each decoding 8 photos as the service does and classifying them with the served INT8 model
    (one ONNX Runtime thread each), all at once, for `seconds`."""
    import threading
    import time

    from serve_app.imaging import load_image
    from serve_app.model.backends import load_backend
    from serve_app.model.weights import resolve_weights
    from serve_app.settings import ModelSettings

    settings = ModelSettings(weights=weights, backend="onnx-int8", device="cpu")
    source = resolve_weights(settings.weights)
    photos = [data for _, data in load_photos()]
    cores = os.cpu_count() or 1
    models = [load_backend(settings, source, 1) for _ in range(cores)]
    done = [0] * cores
    stop = time.monotonic() + seconds

    def work(worker: int) -> None:
        n = worker * 8
        while time.monotonic() < stop:
            batch = [load_image(photos[(n + i) % len(photos)], max_pixels=10**8) for i in range(8)]
            models[worker].infer(np.stack(batch))
            done[worker] += 8
            n += 8 * cores

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(cores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def targets(series: dict[str, list[LoadResult]], levels: list[int], ceiling: float | None) -> list[tuple]:
    """(what, measured, target, met) for every target the systems that ran can be checked against."""
    def at(name, level):
        return next(r for r in series[name] if r.concurrency == level)

    checks = []
    if "ours" not in series:
        return checks
    peers = [name for name in SAME_BACKEND_BASELINES if name in series]
    for level, minimum in ((8, 1.0), (32, 1.1), (64, 1.1)):
        if level in levels and peers:
            best = max(peers, key=lambda name: at(name, level).req_s)
            ratio = at("ours", level).req_s / at(best, level).req_s
            checks.append((f"c={level}: ours / best same-model peer ({best})", f"{ratio:.2f}x", f">= {minimum}x",
                           ratio >= minimum))
    if 1 in levels and "flask-int8" in series:
        gap = at("ours", 1).percentile_ms(50) - at("flask-int8", 1).percentile_ms(50)
        checks.append(("c=1: ours p50 - flask-int8 p50", f"{gap:+.1f} ms", "<= +1 ms", gap <= 1.0))
    if 32 in levels and ceiling:
        share = at("ours", 32).images_s / ceiling
        checks.append(("c=32: ours / in-process ceiling (moonshot)", f"{share:.0%}", ">= 85%", share >= 0.85))
    if 32 in levels:
        for other, key in (("flask", "vs_flask"), ("flask-tuned", "vs_flask"), ("plain-serve", "vs_plain")):
            if other in series and at(other, 32).req_s:
                ratio = at("ours", 32).req_s / at(other, 32).req_s
                checks.append((f"c=32: ours / {other} (eager FP32)", f"{ratio:.2f}x", f">= {TARGETS[key]}x",
                               ratio >= TARGETS[key]))
    if 8 in levels:
        ours8 = at("ours", 8)
        ratio = ours8.percentile_ms(99) / ours8.percentile_ms(50)
        checks.append(("c=8: ours p99 / p50", f"{ratio:.2f}", f"<= {TARGETS['p99_over_p50_at_8']}",
                       ratio <= TARGETS["p99_over_p50_at_8"]))
    errors = sum(r.errors for r in series["ours"])
    checks.append(("errors (ours, all levels)", str(errors), "0", errors == 0))
    return checks


def write_results(args, series: dict[str, list[LoadResult]], ceiling: float | None) -> Path:
    def at(name, level):
        return next(r for r in series[name] if r.concurrency == level)

    sections = [
        "# Serving benchmark: ours against the simple ways",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{args.command}`",
        f"- Weights: `{args.weights}`; photos: the 100 shared ImageNet JPEGs, one per request (multipart).",
        f"- Each system started alone, warmed up, then {args.seconds:g} s per concurrency level; "
        "the load generator (benchmarks/load.py) runs on the same cores.",
        "",
    ]
    for name, results in series.items():
        sections += [f"## {name}", "", results_table(results), ""]

    levels = [r.concurrency for r in series.get("ours", [])]
    sections += ["## Agreement with torchvision's eager FP32 (top-1, all photos, checked before timing)", "",
                 markdown_table(["system", "top-1 agreement"],
                                [[name, f"{share:.0%}"] for name, share in args.agreement.items()]), ""]
    kinds = [
        ("Ours against eager FP32 baselines: the serving design and INT8 together", EAGER_BASELINES),
        ("Ours against the same INT8 model served the simple ways: the serving design alone", SAME_BACKEND_BASELINES),
    ]
    for title, baselines in kinds:
        present = [other for other in baselines if other in series]
        if "ours" not in series or not present:
            continue
        header, rows = ["concurrency", "ours req/s"], []
        for other in present:
            header += [f"{other} req/s", f"ours / {other}"]
        for level in levels:
            row = [level, f"{at('ours', level).req_s:.1f}"]
            for other in present:
                base = at(other, level).req_s
                row += [f"{base:.1f}", f"{at('ours', level).req_s / base:.2f}x" if base else "n/a"]
            rows.append(row)
        sections += [f"## {title}", "", markdown_table(header, rows), ""]

    if args.model_calls:
        rows = [[level, f"{at('ours', level).req_s:.1f}", f"{calls['calls_s']:.1f}", f"{calls['requests_per_call']:.2f}"]
                for level, calls in args.model_calls.items()]
        sections += ["## Ours: model calls per second against requests per second", "",
                     "Each level's requests and calls from the ingress's /healthz (the warm-up's included).", "",
                     markdown_table(["concurrency", "requests/s", "model calls/s", "requests per call"], rows), ""]

    peers = [name for name in SAME_BACKEND_BASELINES if name in series]
    if "ours" in series and peers:
        header = ["concurrency", "ours req/s", "best same-model peer", "its req/s", "ours / best peer",
                  "ours p50 ms", "peer p50 ms"]
        if ceiling:
            header.append("ours / in-process ceiling")
        rows = []
        for level in levels:
            best = max(peers, key=lambda name: at(name, level).req_s)
            row = [level, f"{at('ours', level).req_s:.1f}", best, f"{at(best, level).req_s:.1f}",
                   f"**{at('ours', level).req_s / at(best, level).req_s:.2f}x**",
                   f"{at('ours', level).percentile_ms(50):.1f}", f"{at(best, level).percentile_ms(50):.1f}"]
            if ceiling:
                row.append(f"{at('ours', level).images_s / ceiling:.0%}")
            rows.append(row)
        sections += ["## Ours against the best peer running the same INT8 model, at each concurrency", "",
                     "`ours / best peer`: our requests/s divided by those of the fastest same-model system "
                     f"({', '.join(peers)}) at that concurrency; `ours / in-process ceiling`: our images/s as a "
                     "share of what the same cores do decoding and classifying in one process with no HTTP.", "",
                     markdown_table(header, rows), ""]

    sections += ["## Targets", "", markdown_table(["what", "measured", "target", "met"],
                                                  [[a, b, c, "yes" if ok else "**no**"]
                                                   for a, b, c, ok in targets(series, levels, ceiling)]), ""]
    if ceiling:
        sections += [f"In-process ceiling (onnx-int8, one worker per core decoding and classifying batches of 8, "
                     f"one ONNX Runtime thread each, no HTTP): {ceiling:.0f} images/s.", ""]
    sections += ["![serving](serving.png)", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "serving.md"
    out.write_text("\n".join(sections) + args.notes)
    (RESULTS / "serving.json").write_text(json.dumps(
        {name: [r.summary() for r in results] for name, results in series.items()}
        | {"ceiling_images_s": ceiling, "ours_model_calls": args.model_calls},
        indent=2))
    plot(series, RESULTS / "serving.png", "ours vs the simple ways")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    parser.add_argument("--weights", default="standin")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown appended to the results file")
    args = parser.parse_args()
    args.command = command_line()
    args.notes = ("\n" + args.notes.read_text()) if args.notes else ""
    levels = [int(x) for x in args.concurrency.split(",")]
    photos = load_photos()
    reference = reference_labels(args.weights, photos)
    series, args.agreement, args.model_calls = {}, {}, {}
    for name in args.systems.split(","):
        with SYSTEMS[name](args.weights) as url:
            args.agreement[name] = check_agreement(name, served_labels(url, photos), reference, MIN_TOP1_AGREEMENT)
            if name != "ours":
                series[name] = sweep(url, levels, photos, seconds=args.seconds, label=name)
                continue
            series[name] = []
            for level in levels:  # one level at a time, to read the model calls each one made
                before = call_stats(url)
                series[name] += sweep(url, [level], photos, seconds=args.seconds, label=name)
                after = call_stats(url)
                calls = after["model_calls"] - before["model_calls"]
                args.model_calls[level] = {"calls_s": calls / series[name][-1].seconds,
                                           "requests_per_call": (after["requests"] - before["requests"]) / max(1, calls)}
    ceiling = None if args.no_ceiling else in_process_ceiling(args.weights, seconds=10.0)
    print(write_results(args, series, ceiling).read_text())


if __name__ == "__main__":
    main()

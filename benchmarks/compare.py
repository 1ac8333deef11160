"""Ours against the simple ways, one after another on the same machine, photos and load generator.

    python -m benchmarks.compare                       # ~12 minutes on 2 cores
    python -m benchmarks.compare --seconds 5 --concurrency 1,8

Systems: `ours` (configs/cpu.yaml via `serve run`, sized for this machine by `sized_for_two_cores`),
`plain-serve` (benchmarks/baselines/plain_serve.py with Ray's defaults), `plain-serve+ray-settings`
(the same with the Ray settings `python -m serve_app serve` uses; not a target), `flask`
(benchmarks/baselines/flask_app.py under gunicorn, one worker per core, torch's default threads)
and `flask-tuned` (the same with one torch thread per worker). Those run eager FP32 torch, so ours
against them measures the serving design and INT8 together. `plain-serve-int8` and `flask-int8`
(one thread per worker) run the very INT8 model ours serves: ours against them measures the
serving design alone.

Before timing a system, its answers for every shared photo are compared with torchvision's eager
FP32 pipeline; a system whose top-1 agrees on fewer than MIN_TOP1_AGREEMENT of them is not timed.
Each is started, checked, warmed up, swept over the concurrency levels and stopped before the next
starts. Also measures the in-process ceiling (the fastest backend decoding and classifying in one
process, no HTTP). Writes benchmarks/results/serving.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import httpx

from benchmarks.load import LoadResult, load_photos, plot, results_table, sweep
from benchmarks.report import RESULTS, check_agreement, command_line, machine_line, markdown_table
from benchmarks.harness import RAY_ENV, deployment, free_port, running, serve_run, sized_config, wait_ready

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


SYSTEMS = {"ours": ours, "plain-serve": plain_serve, "plain-serve+ray-settings": plain_serve_with_our_ray_settings,
           "flask": flask, "flask-tuned": flask_tuned, "plain-serve-int8": plain_serve_int8, "flask-int8": flask_int8}
EAGER_BASELINES = ("plain-serve", "plain-serve+ray-settings", "flask", "flask-tuned")
SAME_BACKEND_BASELINES = ("plain-serve-int8", "flask-int8")
BASELINES = EAGER_BASELINES + SAME_BACKEND_BASELINES


def reference_labels(weights: str, photos) -> list[str]:
    """torchvision's eager FP32 pipeline's top-1 label for each photo."""
    from benchmarks.baselines.common import CATEGORIES, EagerModel

    os.environ["SERVE_APP_WEIGHTS"] = weights
    model = EagerModel()
    return [CATEGORIES[int(model.logits([model.preprocess(data)])[0].argmax())] for _, data in photos]


def served_labels(url: str, photos) -> list[str]:
    """The system at `url`'s top-1 label for each photo (ours answers {"predictions"}, the baselines a list)."""
    labels = []
    with httpx.Client(timeout=60) as client:
        for name, data in photos:
            body = client.post(url, files={"file": (name, data, "image/jpeg")}).json()
            labels.append((body["predictions"][0] if isinstance(body, dict) else body[0])["label"])
    return labels


def in_process_ceiling(weights: str, seconds: float) -> float:
    """The fastest backend (onnx-int8) decoding + classifying the photos in one process, batch 8."""
    from benchmarks.backends import run_backend, summarise
    from serve_app.artifacts import export_artifacts
    from serve_app.settings import ModelSettings

    class Quiet:
        def update(self, _):
            pass

    with tempfile.TemporaryDirectory() as artifacts:
        export_artifacts(ModelSettings(weights=weights), Path(artifacts))
        args = SimpleNamespace(weights=weights, threads=os.cpu_count() or 1, seconds=seconds,
                               images=Path(__file__).resolve().parents[2] / "shared" / "images")
        result = run_backend("onnx-int8", args, artifacts, Quiet())
    return summarise({"onnx-int8": result})[("onnx-int8", "decode+model", 8)]["images_s"]


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

    checks = []
    if "ours" in series and 32 in levels:
        ours32 = at("ours", 32)
        for other, key in (("flask", "vs_flask"), ("flask-tuned", "vs_flask"), ("plain-serve", "vs_plain")):
            if other in series and at(other, 32).req_s:
                ratio = ours32.req_s / at(other, 32).req_s
                checks.append((f"throughput at concurrency 32, ours / {other}", f"{ratio:.2f}x",
                               f">= {TARGETS[key]}x", ratio >= TARGETS[key]))
        errors = sum(r.errors for r in series["ours"])
        checks.append(("errors (ours, all levels)", str(errors), "0", errors == 0))
    if "ours" in series and 8 in levels:
        ours8 = at("ours", 8)
        ratio = ours8.percentile_ms(99) / ours8.percentile_ms(50)
        checks.append(("p99 / p50 at concurrency 8 (ours)", f"{ratio:.2f}", f"<= {TARGETS['p99_over_p50_at_8']}",
                       ratio <= TARGETS["p99_over_p50_at_8"]))
    if checks:
        sections += ["## Targets", "", markdown_table(["what", "measured", "target", "met"],
                                                      [[a, b, c, "yes" if ok else "**no**"] for a, b, c, ok in checks]), ""]
    if ceiling and "ours" in series:
        best = max(r.images_s for r in series["ours"])
        sections += [f"In-process ceiling (onnx-int8, decode + classify in one process, batch 8, no HTTP): "
                     f"{ceiling:.0f} images/s. Ours at its best level: {best:.0f} images/s = "
                     f"{100 * best / ceiling:.0f}% of it.", ""]
    sections += ["![serving](serving.png)", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "serving.md"
    out.write_text("\n".join(sections) + args.notes)
    (RESULTS / "serving.json").write_text(json.dumps(
        {name: [r.summary() for r in results] for name, results in series.items()} | {"ceiling_images_s": ceiling},
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
    series, args.agreement = {}, {}
    for name in args.systems.split(","):
        with SYSTEMS[name](args.weights) as url:
            args.agreement[name] = check_agreement(name, served_labels(url, photos), reference, MIN_TOP1_AGREEMENT)
            series[name] = sweep(url, levels, photos, seconds=args.seconds, label=name)
    ceiling = None if args.no_ceiling else in_process_ceiling(args.weights, seconds=3.0)
    print(write_results(args, series, ceiling).read_text())


if __name__ == "__main__":
    main()

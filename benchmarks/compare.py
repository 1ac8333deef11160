"""Ours against the simple ways, one after another on the same machine, photos and load generator.

    python -m benchmarks.compare                       # every system: ~35 minutes on 2 cores
    python -m benchmarks.compare --systems ours,litserve-int8,flask-int8,plain-serve-int8   # same model only
    python -m benchmarks.compare --systems ours-null,litserve-null,flask-null,plain-serve-null  # null model
    python -m benchmarks.compare --seconds 5 --concurrency 1,8
    python -m benchmarks.compare --systems ours,flask-int8,litserve-int8 --rounds 3 --out serving_rounds

Systems: `ours` (configs/cpu.yaml sized for this machine by `sized_for_two_cores`, started as
`make serve` starts it: `python -m serve_app serve`, with its lean Ray, serving the INT8 model:
`backend: onnx-int8`, where the shipped `auto` serves INT8 only on CPUs where it passes its fidelity
check and ONNX FP32 elsewhere; the results say which this CPU gets), `plain-serve`
(benchmarks/baselines/plain_serve.py with Ray's defaults), `plain-serve+ray-settings` (the same
with the Ray settings `python -m serve_app serve` uses; not a target), `flask`
(benchmarks/baselines/flask_app.py under gunicorn, one worker per core, torch's default threads)
and `flask-tuned` (the same with one torch thread per worker). Those run eager FP32 torch, so ours
against them measures the serving design and INT8 together. `plain-serve-int8`, `flask-int8`
(gunicorn, one thread per worker) and `litserve-int8` (LitServe as its docs teach: two workers,
`max_batch_size=8`, `batch_timeout=0.01`, one thread each) run the very INT8 model ours serves:
ours against the best of them at each concurrency measures the serving design alone.

The null model takes the model out: `ours-null` serves `backend: null` (SERVE_APP_ALLOW_NULL_MODEL=1;
everything runs as served but the forward pass, which answers fixed logits), and `plain-serve-null`,
`flask-null` and `litserve-null` decode and preprocess each photo as they do, then answer the same
fixed logits (benchmarks/baselines/common.py NullModel). Ours against the best of them measures the
serving path's own cost, which is what caps a GPU node. `serve-null-app` (not a peer: it decodes
nothing) is Serve's own floor.

Before timing a system, its answers for every shared photo are compared with the reference: for a
system on a model, torchvision's eager FP32 pipeline (one whose top-1 agrees on fewer than
MIN_TOP1_AGREEMENT of them is not timed); for a null-model system, the null model's fixed answer,
on every photo. Each is started, checked, warmed up, swept over the concurrency levels (the null
systems over --null-concurrency) and stopped before the next starts. Also measures the in-process
ceiling (every core decoding and classifying with the served INT8 model in one process, no HTTP),
and reads our ingress's model calls per second at each level. Writes
benchmarks/results/serving.{md,json,png} (serving_null.png for the null-model systems; --out names
another stem).

The machine drifts (10-20% within an hour here), so one run's ratio of ours to a peer measured
minutes apart can move by as much. `--rounds N` starts and sweeps every system N times in turn and
judges each target on the median of the rounds' own ratios, each taken within its round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from benchmarks.load import LoadResult, load_photos, plot, results_table, sweep
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
    deployment,
    free_port,
    running,
    serve_run,
    sized_config,
    wait_ready,
)
from serve_app.settings import ALLOW_NULL_MODEL_ENV_VAR

LEVELS = [1, 8, 32, 64]
NULL_LEVELS = [1, 8, 32, 64, 128]
TARGETS = {"vs_flask": 3.0, "vs_plain": 2.0, "p99_over_p50_at_8": 3.0}
MIN_TOP1_AGREEMENT = 0.9  # INT8 systems included; see benchmarks/results/int8_fidelity.md
SAME_MODEL = "onnx-int8"  # what ours serves here, and the same-model peers with it
INT8 = {"BASELINE_BACKEND": SAME_MODEL}
NULL = {"BASELINE_BACKEND": "null"}  # benchmarks/baselines/common.py: decode as usual, then the fixed logits


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


def ours_config(weights: str, edit=sized_for_two_cores, backend: str = SAME_MODEL) -> dict:
    """configs/cpu.yaml sized for 2 cores, on free ports of 127.0.0.1, serving `backend`: the INT8 model
    unless told otherwise. configs/cpu.yaml's `auto` serves it only where INT8 passes its fidelity check
    on this CPU (ONNX FP32 otherwise); a comparison with peers running INT8 needs INT8 either way."""
    return sized_config(free_port(), weights=weights, backend=backend, edit=edit)


@contextmanager
def ours(weights: str, edit=sized_for_two_cores, backend: str = SAME_MODEL, env: dict[str, str] | None = None,
         config: dict | None = None) -> Iterator[str]:
    """`config` (default: ours_config) started the way `make serve` starts it (its lean Ray)."""
    with serve_run(config or ours_config(weights, edit, backend), env={**RAY_ENV, **(env or {})}, launcher=True) as url:
        yield url + "/v1/classify"


@contextmanager
def ours_null(weights: str, edit=sized_for_two_cores) -> Iterator[str]:
    """Ours with the null model: everything as served but the forward pass."""
    with ours(weights, edit=edit, backend="null", env={ALLOW_NULL_MODEL_ENV_VAR: "1"}) as url:
        yield url


def decoding_on_the_replica(config: dict) -> None:
    sized_for_two_cores(config)
    config["applications"][0]["args"]["model"]["decode_on_replica"] = True


@contextmanager
def ours_null_replica_decode(weights: str) -> Iterator[str]:
    """Not a peer: the null model with the GPU config's request path (decode_on_replica: the ingress
    reads only the headers and sends JPEGs as bytes; here the replica decodes them on the CPU, where
    a GPU replica uses nvJPEG), for what an ingress costs per request on a GPU node."""
    with ours_null(weights, edit=decoding_on_the_replica) as url:
        yield url


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
def serve_null_app(weights: str) -> Iterator[str]:
    """Not a peer (it decodes nothing): one Starlette route on Serve that reads the upload and answers a
    constant, with our Ray settings. The floor under any Serve app's own cost per request."""
    config = {
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [{"name": "null", "route_prefix": "/", "import_path": "benchmarks.baselines.null_serve:app",
                          "deployments": [{"name": "NullIngress", "ray_actor_options": {"num_cpus": 0.5},
                                           "max_ongoing_requests": 128}]}],
    }
    with serve_run(config, ready=post_ok("/"), env=RAY_ENV) as url:
        yield url + "/"


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
def litserve(weights: str, baseline_env: dict[str, str] = INT8) -> Iterator[str]:
    """LitServe as its docs teach: two inference workers batching up to 8 within 10 ms, one thread each."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="litserve-baseline-")) / "litserve.log"
    command = [sys.executable, "-m", "benchmarks.baselines.litserve_app", "--port", str(port),
               "--workers", str(os.cpu_count() or 1)]
    env = {"SERVE_APP_WEIGHTS": weights, "BASELINE_THREADS": "1", **baseline_env}
    with running(command, log, env=env) as process:
        wait_ready(f"http://127.0.0.1:{port}", process, 240, post_ok("/predict"))
        yield f"http://127.0.0.1:{port}/predict"


SYSTEMS = {
    "ours": ours,
    "plain-serve": plain_serve,
    # Not a target: how much of the gap Ray's settings alone close (HAProxy, throughput mode).
    "plain-serve+ray-settings": partial(plain_serve, ray_env=RAY_ENV),
    "flask": flask,
    "flask-tuned": partial(flask, threads=1),
    "plain-serve-int8": partial(plain_serve, baseline_env=INT8),
    "flask-int8": partial(flask, threads=1, baseline_env=INT8),
    "litserve-int8": litserve,
    "ours-null": ours_null,
    "plain-serve-null": partial(plain_serve, baseline_env=NULL),
    "flask-null": partial(flask, threads=1, baseline_env=NULL),
    "litserve-null": partial(litserve, baseline_env=NULL),
    "serve-null-app": serve_null_app,
    "ours-null-replica-decode": ours_null_replica_decode,
    # Not a peer: ours with Ray's Python HTTP proxy in place of HAProxy (benchmarks/cpu_share.py compares them).
    "ours-python-proxy": partial(ours, env={"RAY_SERVE_ENABLE_HA_PROXY": "0"}),
}
EAGER_BASELINES = ("plain-serve", "plain-serve+ray-settings", "flask", "flask-tuned")
SAME_BACKEND_BASELINES = ("plain-serve-int8", "flask-int8", "litserve-int8")
NULL_PEERS = ("plain-serve-null", "flask-null", "litserve-null")  # decode, then the same fixed logits as ours-null
REPLICA_DECODE = "ours-null-replica-decode"
NULL_SYSTEMS = ("ours-null", *NULL_PEERS, "serve-null-app", REPLICA_DECODE)
BASELINES = EAGER_BASELINES + SAME_BACKEND_BASELINES


def reference_labels(weights: str, photos) -> list[str]:
    """torchvision's eager FP32 pipeline's top-1 label for each photo."""
    from benchmarks.baselines.common import CATEGORIES, EagerModel

    os.environ["SERVE_APP_WEIGHTS"] = weights
    model = EagerModel()
    return [CATEGORIES[int(model.logits([model.preprocess(data)])[0].argmax())] for _, data in photos]


def null_labels(photos) -> list[str]:
    """What the null model answers for every photo: the top class of its fixed logits."""
    from benchmarks.baselines.common import CATEGORIES
    from serve_app.model.backends.null import NULL_LOGITS

    return [CATEGORIES[int(NULL_LOGITS.argmax())]] * len(photos)


def healthz(url: str) -> dict:
    """Our service's /healthz, from the URL of one of its /v1/ routes."""
    return httpx.get(url.rsplit("/v1/", 1)[0] + "/healthz", timeout=30).json()


def call_stats(url: str) -> dict:
    """Requests and model calls of our ingress replica so far (its /healthz)."""
    return healthz(url)["ingress"]


def served_model_line(replica: dict) -> str:
    """What our model replica served, and what configs/cpu.yaml's `backend: auto` would on this CPU."""
    check = replica.get("int8_check")
    line = f"- Ours served `{replica['backend']}` ({replica['threads']} threads), pinned so that it runs the same model as its peers."
    if check:
        passes = check["top1_agreement"] >= check["min_agreement"]
        line += (f" On this CPU INT8's top-1 agreement with FP32 was {check['top1_agreement']:.1%} ({check['photos']}; "
                 f"int8_min_agreement {check['min_agreement']:.0%}), so configs/cpu.yaml as shipped (`backend: auto`) "
                 + ("serves INT8 here too." if passes else "serves ONNX FP32 here instead."))
    return line


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


@dataclass(frozen=True)
class Check:
    """One target measured in one round: met when `value` is at least (or at most) `bound`."""
    what: str
    value: float
    fmt: str  # how a value shows, e.g. "{:.2f}x"
    bound: float
    at_least: bool
    detail: str = ""  # what the value was measured against in its round (the best peer)

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound

    @property
    def target(self) -> str:
        return (">= " if self.at_least else "<= ") + self.fmt.format(self.bound)


def round_checks(series: dict[str, list[LoadResult]], levels: list[int], ceiling: float | None) -> list[Check]:
    """Every target the systems of one round can be checked against, each ratio within that round."""
    def at(name, level):
        return next(r for r in series[name] if r.concurrency == level)

    checks = []
    for ours, peer_names, what, minimum in (("ours-null", NULL_PEERS, "best null peer", 1.0),
                                            (REPLICA_DECODE, NULL_PEERS, "best null peer", 1.0),
                                            ("ours", SAME_BACKEND_BASELINES, "best same-model peer", 0.9)):
        peers = [name for name in peer_names if name in series]
        if ours not in series or not peers:
            continue
        for level in (32, 64):
            if level in levels:
                best = max(peers, key=lambda name: at(name, level).req_s)
                checks.append(Check(f"c={level}: {ours} / {what}", at(ours, level).req_s / at(best, level).req_s,
                                    "{:.2f}x", minimum, True, best))
    if "ours" not in series:
        return checks
    if 1 in levels and "flask-int8" in series:
        gap = at("ours", 1).percentile_ms(50) - at("flask-int8", 1).percentile_ms(50)
        checks.append(Check("c=1: ours p50 - flask-int8 p50", gap, "{:+.1f} ms", 2.0, False))
    if 32 in levels and ceiling:
        checks.append(Check("c=32: ours / in-process ceiling (moonshot)", at("ours", 32).images_s / ceiling,
                            "{:.0%}", 0.85, True))
    if 32 in levels:
        for other, key in (("flask", "vs_flask"), ("flask-tuned", "vs_flask"), ("plain-serve", "vs_plain")):
            if other in series and at(other, 32).req_s:
                checks.append(Check(f"c=32: ours / {other} (eager FP32)", at("ours", 32).req_s / at(other, 32).req_s,
                                    "{:.2f}x", TARGETS[key], True))
    if 8 in levels:
        ours8 = at("ours", 8)
        checks.append(Check("c=8: ours p99 / p50", ours8.percentile_ms(99) / ours8.percentile_ms(50), "{:.2f}",
                            TARGETS["p99_over_p50_at_8"], False))
    return checks


def targets(rounds: list[dict[str, list[LoadResult]]], levels: list[int], ceiling: float | None) -> list[tuple]:
    """(what, measured, target, met) for every target: with several rounds, the median of the rounds'
    own values (each ratio taken within its round), each round's value shown beside it."""
    by_round = [round_checks(series, levels, ceiling) for series in rounds]
    rows = []
    for what in dict.fromkeys(check.what for checks in by_round for check in checks):
        taken = [check for checks in by_round for check in checks if check.what == what]
        value = statistics.median(check.value for check in taken)
        measured = taken[0].fmt.format(value)
        shown = [check.fmt.format(check.value) + (f" {check.detail}" if check.detail else "") for check in taken]
        if len(taken) > 1:
            measured += f" (median of {', '.join(shown)})"
        elif taken[0].detail:
            measured += f" ({taken[0].detail})"
        rows.append((what, measured, taken[0].target, taken[0].met(value)))
    return rows


def errors_check(rounds: list[dict[str, list[LoadResult]]]) -> list[tuple]:
    names = [name for name in ("ours", "ours-null", REPLICA_DECODE) if any(name in series for series in rounds)]
    return [(f"errors ({name}, all levels{', all rounds' if len(rounds) > 1 else ''})", str(errors), "0", errors == 0)
            for name in names
            for errors in [sum(r.errors for series in rounds for r in series.get(name, []))]]


def median_rounds(rounds: list[dict[str, list[LoadResult]]]) -> dict[str, list[LoadResult]]:
    """Each system's results at each level from its median round there (by req/s; the lower middle one
    of an even count), so every table row is one real measurement."""
    series = {}
    for name in rounds[0]:
        by_level = zip(*(series_of_round[name] for series_of_round in rounds))
        series[name] = [sorted(results, key=lambda r: r.req_s)[(len(results) - 1) // 2] for results in by_level]
    return series


def against_best(series: dict[str, list[LoadResult]], ours: str, peers: list[str], levels: list[int],
                 ceiling: float | None = None) -> str:
    """Per concurrency: ours, the fastest of `peers` there, the ratio, and both p50 and p99."""
    def at(name, level):
        return next(r for r in series[name] if r.concurrency == level)

    header = ["concurrency", f"{ours} req/s", "best peer", "its req/s", "ours / best peer",
              "ours p50 ms", "peer p50 ms", "ours p99 ms", "peer p99 ms"]
    if ceiling:
        header.append("ours / in-process ceiling")
    rows = []
    for level in levels:
        best = max(peers, key=lambda name: at(name, level).req_s)
        mine, theirs = at(ours, level), at(best, level)
        row = [level, f"{mine.req_s:.1f}", best, f"{theirs.req_s:.1f}", f"**{mine.req_s / theirs.req_s:.2f}x**",
               f"{mine.percentile_ms(50):.1f}", f"{theirs.percentile_ms(50):.1f}",
               f"{mine.percentile_ms(99):.1f}", f"{theirs.percentile_ms(99):.1f}"]
        if ceiling:
            row.append(f"{mine.images_s / ceiling:.0%}")
        rows.append(row)
    return markdown_table(header, rows)


def write_results(args, rounds: list[dict[str, list[LoadResult]]], ceiling: float | None) -> Path:
    series = median_rounds(rounds)

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
        *([f"- {len(rounds)} rounds, each starting every system in turn: every table shows each level's median "
           "round (by req/s), and each target is the median of the rounds' own values, a ratio taken within "
           "its round, so the machine's drift over the run moves ours and its peers alike."]
          if len(rounds) > 1 else []),
        f"- Ours: {RESULT_CACHE_OFF} As in every peer; benchmarks/results/cache.md measures it on.",
        *([served_model_line(args.ours_replica)] if args.ours_replica else []),
        "",
    ]
    for name, results in series.items():
        sections += [f"## {name}", "", results_table(results), ""]

    levels = [r.concurrency for r in series.get("ours", series.get("ours-null", []))]
    sections += ["## Agreement with the reference (top-1, all photos, checked before timing)", "",
                 *(["Checked at every start; the lowest over the rounds.", ""] if len(rounds) > 1 else []),
                 "Systems on a model: torchvision's eager FP32 pipeline, at least "
                 f"{MIN_TOP1_AGREEMENT:.0%}; systems on the null model: its fixed answer, on every photo.", "",
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

    for name, by_level in args.model_calls.items():
        rows = [[level, f"{at(name, level).req_s:.1f}", f"{calls['calls_s']:.1f}", f"{calls['requests_per_call']:.2f}"]
                for level, calls in by_level.items()]
        sections += [f"## {name}: model calls per second against requests per second", "",
                     "Each level's requests and calls from the ingress's /healthz (the warm-up's included)"
                     + ("; model calls: the median of the rounds." if len(rounds) > 1 else "."), "",
                     markdown_table(["concurrency", "requests/s", "model calls/s", "requests per call"], rows), ""]

    peers = [name for name in SAME_BACKEND_BASELINES if name in series]
    if "ours" in series and peers:
        sections += ["## Ours against the best peer running the same INT8 model, at each concurrency", "",
                     "`ours / best peer`: our requests/s divided by those of the fastest same-model system "
                     f"({', '.join(peers)}) at that concurrency; `ours / in-process ceiling`: our images/s as a "
                     "share of what the same cores do decoding and classifying in one process with no HTTP.", "",
                     against_best(series, "ours", peers, levels, ceiling), ""]
    null_peers = [name for name in NULL_PEERS if name in series]
    if "ours-null" in series and null_peers:
        null_levels = [r.concurrency for r in series["ours-null"]]
        sections += ["## The serving path alone: ours and its peers on the null model", "",
                     "Every system decodes and preprocesses each photo as it serves it, then answers the null "
                     "model's fixed logits instead of running a network (`backend: null`), so what is timed is "
                     f"everything but the model. Best of {', '.join(null_peers)} at each concurrency.", "",
                     against_best(series, "ours-null", null_peers, null_levels), ""]
        if REPLICA_DECODE in series:
            sections += [f"## The GPU config's request path on the null model: {REPLICA_DECODE} against the same peers",
                         "", "Ours with `decode_on_replica` (configs/gpu.yaml's path; a setting on CPU nodes): the "
                         "ingress reads only each photo's header and sends the JPEG as bytes, and the model replica "
                         "decodes and resizes it (here on its CPU threads, where a GPU replica uses nvJPEG). The same "
                         "work per photo as every peer.", "",
                         against_best(series, REPLICA_DECODE, null_peers, null_levels), ""]
        if "serve-null-app" in series:
            sections += ["`serve-null-app` (not a peer: one Starlette route on Serve that reads the upload and "
                         "answers a constant, decoding nothing) at each concurrency: " + ", ".join(
                             f"c={r.concurrency}: {r.req_s:.0f} req/s" for r in series["serve-null-app"]), ""]

    sections += ["## Targets", "", markdown_table(["what", "measured", "target", "met"],
                                                  [[a, b, c, "yes" if ok else "**no**"] for a, b, c, ok in
                                                   targets(rounds, levels, ceiling) + errors_check(rounds)]), ""]
    if ceiling:
        sections += [f"In-process ceiling (onnx-int8, one worker per core decoding and classifying batches of 8, "
                     f"one ONNX Runtime thread each, no HTTP): {ceiling:.0f} images/s.", ""]
    plots = {f"{args.out}.png": [name for name in series if name not in NULL_SYSTEMS],
             f"{args.out}_null.png": [name for name in series if name in NULL_SYSTEMS]}
    sections += [f"![{file}]({file})" for file, names in plots.items() if names] + [""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.out}.md"
    out.write_text("\n".join(sections) + args.notes)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {name: [r.summary() for r in results] for name, results in series.items()}
        | {"ceiling_images_s": ceiling, "ours_model_calls": args.model_calls}
        | ({"rounds": [{name: [r.summary() for r in results] for name, results in series_of_round.items()}
                       for series_of_round in rounds]} if len(rounds) > 1 else {}),
        indent=2))
    for (file, names), title in zip(plots.items(), ("ours vs the simple ways", "the serving path alone: the null model")):
        if names:
            plot({name: series[name] for name in names}, RESULTS / file, title)
    return out


def measure(name: str, args, photos, reference: list[str] | None, levels: list[int], null_levels: list[int],
            calls_by_round: dict) -> list[LoadResult]:
    """Start system `name`, check its answers (not timed unless they agree), sweep it, stop it."""
    with SYSTEMS[name](args.weights) as url:
        if name in NULL_SYSTEMS:  # every answer must be the null model's own, or it is not timed
            share = check_agreement(name, served_labels(url, photos), null_labels(photos), 1.0,
                                    "the null model's fixed answer")
        else:
            share = check_agreement(name, served_labels(url, photos), reference, MIN_TOP1_AGREEMENT)
        args.agreement[name] = min(share, args.agreement.get(name, share))
        if name == "ours":
            args.ours_replica = healthz(url)["replica"]
        system_levels = null_levels if name in NULL_SYSTEMS else levels
        if name not in ("ours", "ours-null"):
            return sweep(url, system_levels, photos, seconds=args.seconds, label=name)
        results = []
        for level in system_levels:  # one level at a time, to read the model calls each one made
            before = call_stats(url)
            results += sweep(url, [level], photos, seconds=args.seconds, label=name)
            after = call_stats(url)
            calls = after["model_calls"] - before["model_calls"]
            calls_by_round.setdefault(name, {}).setdefault(level, []).append({
                "calls_s": calls / results[-1].seconds,
                "requests_per_call": (after["requests"] - before["requests"]) / max(1, calls)})
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--null-concurrency", default=",".join(map(str, NULL_LEVELS)),
                        help="levels for the null-model systems")
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    parser.add_argument("--weights", default="standin")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown appended to the results file")
    parser.add_argument("--rounds", type=int, default=1,
                        help="start and sweep every system this many times in turn; report medians")
    parser.add_argument("--out", default="serving", help="results file stem in benchmarks/results")
    args = parser.parse_args()
    args.command = command_line()
    args.notes = ("\n" + args.notes.read_text()) if args.notes else ""
    levels = [int(x) for x in args.concurrency.split(",")]
    null_levels = [int(x) for x in args.null_concurrency.split(",")]
    photos = load_photos()
    systems = args.systems.split(",")
    reference = reference_labels(args.weights, photos) if set(systems) - set(NULL_SYSTEMS) else None
    rounds, args.agreement, calls_by_round, args.ours_replica = [], {}, {}, None
    for _ in range(args.rounds):  # every system in turn, then again: the machine drifts between rounds
        rounds.append({name: measure(name, args, photos, reference, levels, null_levels, calls_by_round)
                       for name in systems})
    args.model_calls = {name: {level: {key: statistics.median(calls[key] for calls in taken) for key in taken[0]}
                               for level, taken in by_level.items()}
                        for name, by_level in calls_by_round.items()}
    ceiling = None if args.no_ceiling else in_process_ceiling(args.weights, seconds=10.0)
    print(write_results(args, rounds, ceiling).read_text())


if __name__ == "__main__":
    main()

"""The result cache on a realistic mix of uploads: off, in process and in Redis, one after another in one run.

    python -m benchmarks.cache                                  # ~6 minutes on 2 cores
    python -m benchmarks.cache --requests 2000 --repeat-share 0.3 --concurrency 32

The mix: --requests single-image uploads kept --concurrency (32) in flight, of which a share
(--repeat-share, 30%) repeats an earlier upload, picked by a Zipf law (exponent --zipf) over the
uploads in the order they first came: a few images come back often, most never. A new upload is
one of the 100 shared photos made unique by a JPEG comment: other bytes, the same pixels, so it
costs what that photo costs to decode and classify. Every variant gets the same sequence.

Variants: ours (configs/cpu.yaml sized for 2 cores as in benchmarks/compare.py, `make serve`'s stack,
ONNX Runtime INT8, stand-in weights) with the result cache off, in process (the shipped default),
and in a real redis-server started here; each started fresh, with an empty cache. Before timing a
variant, 20 photos are sent twice, one at a time: the cache-off answers must agree with torchvision's
eager FP32 reference (top-1), every variant's first answers must be the cache-off ones, and where the
cache is on the second round must be hits identical to the first. Writes
benchmarks/results/cache.{md,json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from contextlib import contextmanager
from typing import Iterator

import httpx
import numpy as np

from benchmarks.compare import MIN_TOP1_AGREEMENT, healthz, ours, reference_labels, sized_for_two_cores
from benchmarks.load import LoadResult, load_photos, run_load
from benchmarks.report import RESULTS, Disagrees, check_agreement, command_line, machine_line, markdown_table
from serve_app.launch.harness import free_port, sized_config
from serve_app.launch.redis_server import RedisServer

VARIANTS = ("cache off", "in process", "redis")
CHECKED_PHOTOS = 20
WARMUP_REQUESTS = 60
ALL_HITS_DISTINCT, ALL_HITS_REQUESTS = 100, 2000  # after the mix: uploads it has seen, again and again


def unique_upload(photo: bytes, n: int) -> bytes:
    """`photo` with a JPEG comment (COM segment) naming upload `n` after its start marker: bytes no other
    upload has, pixels the photo's own."""
    comment = f"benchmarks.cache upload {n}".encode()
    return photo[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + photo[2:]


def workload(requests: int, repeat_share: float, zipf: float, seed: int = 0) -> list[int]:
    """Which upload each request sends: a new one, or with probability `repeat_share` an earlier one,
    the k-th to have appeared with weight 1 / k**zipf."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(1.0 / np.arange(1, requests + 1) ** zipf)
    sequence, seen = [], 0
    for _ in range(requests):
        if seen and rng.random() < repeat_share:
            sequence.append(int(np.searchsorted(cumulative[:seen], rng.random() * cumulative[seen - 1], side="right")))
        else:
            sequence.append(seen)
            seen += 1
    return sequence


def variant_config(weights: str, variant: str, redis_url: str | None) -> dict:
    config = sized_config(free_port(), weights=weights, edit=sized_for_two_cores, backend="onnx-int8",
                          result_cache=variant != "cache off")
    if variant == "redis":
        config["applications"][0]["args"]["ingress"]["cache"]["redis_url"] = redis_url
    return config


@contextmanager
def serving(weights: str, variant: str) -> Iterator[str]:
    redis = RedisServer().start() if variant == "redis" else None
    try:
        with ours(weights, config=variant_config(weights, variant, redis.url if redis else None)) as url:
            yield url
    finally:
        if redis:
            redis.stop()


def answers_twice(url: str, photos) -> tuple[list[dict], list[dict], list[str]]:
    """Each photo's answer, then each one's again, and the X-Cache of the second round."""
    rounds, second_cache = [[], []], []
    with httpx.Client(timeout=60) as client:
        for round_ in rounds:
            for name, data in photos:
                answer = client.post(url, files={"file": (name, data, "image/jpeg")}, params={"top_k": 5})
                answer.raise_for_status()
                round_.append(answer.json()["predictions"])
                if round_ is rounds[1]:
                    second_cache.append(answer.headers.get("X-Cache", "none"))
    return rounds[0], rounds[1], second_cache


def check_answers(variant: str, first: list[dict], second: list[dict], second_cache: list[str],
                  uncached: list[dict]) -> None:
    """Refuse to time a variant whose answers are not the model's: the same classes as the cache-off
    service (scores to 1e-5: forward passes may batch differently), and hits identical to the first."""
    for mine, reference in zip(first, uncached):
        if [p["index"] for p in mine] != [p["index"] for p in reference] or not np.allclose(
                [p["score"] for p in mine], [p["score"] for p in reference], atol=1e-5):
            raise Disagrees(f"{variant}: an answer differs from the cache-off service's: not timed")
    if variant != "cache off":
        if set(second_cache) != {"hit"} or second != first:
            raise Disagrees(f"{variant}: a repeat was not a hit identical to its first answer "
                            f"({second_cache.count('hit')} of {len(second_cache)} hits): not timed")
    print(f"{variant}: answers agree with the cache-off service on {len(first)} photos"
          + ("" if variant == "cache off" else ", repeats are identical hits"), flush=True)


def cache_stats(url: str) -> dict:
    return healthz(url)["ingress"]["cache"]


def write_results(args, results: dict[str, LoadResult], hits: dict[str, float], store_errors: dict[str, int],
                  all_hits: dict[str, LoadResult], repeats: float) -> str:
    off = results["cache off"]
    rows = [[variant, f"{r.req_s:.1f}", f"{r.req_s / off.req_s:.2f}x", f"{r.percentile_ms(50):.0f}",
             f"{r.percentile_ms(99):.0f}", r.errors, f"{hits[variant]:.0%}" if variant in hits else "-",
             store_errors.get(variant, "-")] for variant, r in results.items()]
    rows += [[f"{variant}, every request a repeat", f"{r.req_s:.1f}", f"{r.req_s / off.req_s:.2f}x",
              f"{r.percentile_ms(50):.0f}", f"{r.percentile_ms(99):.0f}", r.errors, "all", "-"]
             for variant, r in all_hits.items()]
    lines = [
        "# The result cache on a realistic mix of uploads",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{args.command}`",
        f"- Ours sized for 2 cores (one Ingress, one Classifier replica, ONNX Runtime INT8, `make serve`'s stack), "
        f"{args.weights} weights; each variant started fresh with an empty cache; the load generator "
        "(benchmarks/load.py) runs on the same cores, as does redis-server.",
        f"- The same {args.requests} single-image uploads for each variant at concurrency {args.concurrency}: "
        f"{repeats:.0%} of them repeat an earlier upload (Zipf, exponent {args.zipf:g}, over the uploads in order "
        "of first appearance); a new upload is a shared photo made unique by a JPEG comment.",
        f"- Then, where the cache is on, {ALL_HITS_REQUESTS} requests for {ALL_HITS_DISTINCT} uploads it has seen: "
        "what a hit costs the whole stack (HTTP, multipart, the key's sha256, the lookup, JSON).",
        f"- Checked before timing: cache-off top-1 against torchvision's eager FP32 on {CHECKED_PHOTOS} photos "
        f"({args.agreement:.0%}); every variant's answers equal the cache-off ones; repeats are identical hits.",
        "",
        markdown_table(["variant", "req/s", "vs off", "p50 ms", "p99 ms", "errors", "hits (healthz)",
                        "store errors"], rows),
        "",
        "![cache](cache.png)",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache.json").write_text(json.dumps(
        {"mix": {variant: {**r.summary(), "hit_share": hits.get(variant), "store_errors": store_errors.get(variant)}
                 for variant, r in results.items()},
         "every request a repeat": {variant: r.summary() for variant, r in all_hits.items()}}, indent=2))
    plot(results, args)
    text = "\n".join(lines)
    (RESULTS / "cache.md").write_text(text)
    return text


def plot(results: dict[str, LoadResult], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(results)
    left.bar(names, [results[n].req_s for n in names], color=["#999999", "#4878d0", "#d65f5f"])
    left.set(ylabel="requests/s", title=f"throughput at concurrency {args.concurrency}")
    x = np.arange(len(names))
    right.bar(x - 0.2, [results[n].percentile_ms(50) for n in names], 0.4, label="p50")
    right.bar(x + 0.2, [results[n].percentile_ms(99) for n in names], 0.4, label="p99")
    right.set(xticks=x, xticklabels=names, ylabel="latency ms", title="latency")
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle(f"result cache, {args.repeat_share:.0%} repeats (Zipf {args.zipf:g})\n{machine_line()}", fontsize=9)
    figure.tight_layout()
    figure.savefig(RESULTS / "cache.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat-share", type=float, default=0.3)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--weights", default="standin")
    args = parser.parse_args()
    args.command = command_line()
    photos = load_photos()
    sequence = workload(args.requests, args.repeat_share, args.zipf)
    uploads = [(f"upload-{n}.jpg", unique_upload(photos[n % len(photos)][1], n)) for n in sequence]
    repeats = 1 - len(set(sequence)) / len(sequence)
    warmup = [(f"warmup-{n}.jpg", unique_upload(photos[n % len(photos)][1], -1 - n)) for n in range(WARMUP_REQUESTS)]
    checked = photos[:CHECKED_PHOTOS]
    uncached = None
    results, hits, store_errors, all_hits = {}, {}, {}, {}
    for variant in args.variants.split(","):
        with serving(args.weights, variant) as url:
            first, second, second_cache = answers_twice(url, checked)
            if uncached is None:
                if variant != "cache off":
                    raise SystemExit("the cache-off variant runs first: the others are checked against it")
                args.agreement = check_agreement(variant, [p[0]["label"] for p in first],
                                                 reference_labels(args.weights, checked), MIN_TOP1_AGREEMENT)
                uncached = first
            check_answers(variant, first, second, second_cache, uncached)
            asyncio.run(run_load(url, 8, warmup, requests=len(warmup)))
            before = cache_stats(url)
            results[variant] = asyncio.run(run_load(url, args.concurrency, uploads, requests=len(uploads)))
            after = cache_stats(url)
            if after["enabled"]:
                looked_up = (after["hits"] + after["misses"]) - (before["hits"] + before["misses"])
                hits[variant] = (after["hits"] - before["hits"]) / max(1, looked_up)
                store_errors[variant] = after["store_errors"] - before["store_errors"]
                # Then every request a repeat: what a hit costs the whole stack.
                seen = uploads[:ALL_HITS_DISTINCT]
                all_hits[variant] = asyncio.run(run_load(url, args.concurrency, seen * (ALL_HITS_REQUESTS // len(seen)),
                                                         requests=ALL_HITS_REQUESTS))
                print(json.dumps({"variant": f"{variant}, every request a repeat", **all_hits[variant].summary()}),
                      flush=True)
            print(json.dumps({"variant": variant, **results[variant].summary(), "hit_share": hits.get(variant),
                              "store_errors": store_errors.get(variant)}), flush=True)
    print(write_results(args, results, hits, store_errors, all_hits, repeats))


if __name__ == "__main__":
    main()

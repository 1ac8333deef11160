"""Command line: `python -m serve_app serve|deploy|check-weights|export|evaluate`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serve_app.errors import WeightsError
from serve_app.model.weights import resolve_weights
from serve_app.settings import CPU_BACKENDS, WEIGHTS_ENV_VAR, ModelSettings, environment


def check_weights(spec: str, allow_download: bool, calibration_images: str | None = None) -> int:
    try:
        source = resolve_weights(spec, allow_download=allow_download, calibration_images=calibration_images)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"weights ok: {source.name} ({source.kind}) sha256={source.sha256}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve a config on this machine, fitted to its CPUs and GPUs")
    run.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"))
    run.add_argument("--as-written", action="store_true",
                     help="keep the config's CPU shares and replica limits, even where this machine cannot hold them")
    run.add_argument("--dashboard", action="store_true",
                     help="start Ray's dashboard (http://127.0.0.1:8265) and keep Ray's default intervals")
    deployer = commands.add_parser("deploy", help="deploy a config to a running Ray cluster and watch it start")
    deployer.add_argument("config", type=Path)
    deployer.add_argument("--address", default="auto", help="the cluster's GCS address (default: auto)")
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
    evaluator.add_argument("--backends", default=",".join(b for b in CPU_BACKENDS if b != "torch"),
                           help="comma-separated")
    evaluator.add_argument("--artifacts", default=None, help="exported artifacts (default: build into the cache)")
    evaluator.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    if args.command == "serve":
        from serve_app.launch.launcher import serve_locally

        return serve_locally(args.config, fit=not args.as_written, dashboard=args.dashboard)
    if args.command == "deploy":
        from serve_app.launch.launcher import deploy_to_cluster

        return deploy_to_cluster(args.config, args.address)
    spec = args.weights or environment(WEIGHTS_ENV_VAR) or "torchvision"
    if args.command == "export":
        return export(args.out, spec, args.settings_json)
    if args.command == "evaluate":
        return evaluate(args.images, ModelSettings(weights=spec, artifacts_dir=args.artifacts),
                        args.backends.split(","), args.threads)
    return check_weights(spec, allow_download=not args.no_download)


def export(out: Path, spec: str, settings_json: str | None) -> int:
    from serve_app.model.artifacts import export_artifacts

    settings = ModelSettings.model_validate_json(settings_json) if settings_json else ModelSettings(weights=spec)
    try:
        manifest = export_artifacts(settings, out, progress=lambda step: print(step, flush=True))
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for backend, entry in manifest["artifacts"].items():
        print(f"{backend:12s} {out / entry['file']}  sha256={entry['sha256'][:16]}")
    return 0


def evaluate(images: Path, settings: ModelSettings, backends: list[str], threads: int) -> int:
    from serve_app.launch.evaluate import evaluate as run_evaluation
    from serve_app.launch.evaluate import format_reports

    try:
        evaluation = run_evaluation(settings, images, backends, threads)
    except (WeightsError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_reports(evaluation, settings.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `python -m serve_app serve|check-weights`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from serve_app.settings import AppSettings
from serve_app.weights import WeightsError, resolve_weights


def _app_settings(config: Path) -> AppSettings:
    document = yaml.safe_load(config.read_text())
    return AppSettings.from_args(document["applications"][0].get("args"))


def check_weights(spec: str, allow_download: bool, standin_images: str | None = None) -> int:
    try:
        source = resolve_weights(spec, allow_download=allow_download, standin_images=standin_images)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"weights ok: {source.name} ({source.kind}) sha256={source.sha256}")
    return 0


def serve(config: Path) -> int:
    settings = _app_settings(config)
    if check_weights(settings.model.weights, True, settings.model.standin_images):
        return 2
    http = yaml.safe_load(config.read_text()).get("http_options", {})
    print(f"starting Ray Serve with {config}: http://127.0.0.1:{http.get('port', 8000)} (Ctrl-C stops it)", flush=True)
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
    args = parser.parse_args(argv)

    if args.command == "serve":
        return serve(args.config)
    spec = args.weights or os.environ.get("SERVE_APP_WEIGHTS") or "torchvision"
    return check_weights(spec, allow_download=not args.no_download)


if __name__ == "__main__":
    sys.exit(main())

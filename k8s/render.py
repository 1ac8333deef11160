"""Render the RayService manifests: k8s/templates/rayservice-<flavor>.yaml with configs/<flavor>.yaml
pasted verbatim into `serveConfigV2`, so the Serve config has one source of truth.

    python k8s/render.py            # rewrite k8s/rayservice-cpu.yaml and k8s/rayservice-gpu.yaml
    python k8s/render.py --check    # exit 1 if they differ from what would be rendered
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

K8S = Path(__file__).resolve().parent
REPO = K8S.parent
FLAVORS = ("cpu", "gpu")
PLACEHOLDER = "{{ serveConfigV2 }}"


def render(flavor: str) -> str:
    template = (K8S / "templates" / f"rayservice-{flavor}.yaml").read_text()
    config = (REPO / "configs" / f"{flavor}.yaml").read_text()
    lines = []
    for line in template.splitlines():
        if line.strip() == PLACEHOLDER:
            indent = line[: len(line) - len(line.lstrip())]
            lines += [f"{indent}{row}".rstrip() for row in config.splitlines()]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def manifest_path(flavor: str) -> Path:
    return K8S / f"rayservice-{flavor}.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for flavor in FLAVORS:
        rendered, path = render(flavor), manifest_path(flavor)
        if args.check:
            if not path.is_file() or path.read_text() != rendered:
                stale.append(path.name)
        else:
            path.write_text(rendered)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python k8s/render.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every benchmark writes beside its numbers: the machine, the command, tables; and the check
that refuses to time a path whose answers disagree with the reference."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# What every benchmark of the serving path says of the result cache: off, since its photos repeat.
RESULT_CACHE_OFF = "Result cache off (`ingress.cache.enabled: false`; the photos repeat): every request is computed."


class Disagrees(SystemExit):
    """A path whose answers differ from the FP32 reference: it is not timed, nothing is written."""


def check_agreement(label: str, answers, reference, minimum: float, reference_name: str = "eager FP32") -> float:
    """The share of `answers` (top-1 indices or labels) equal to the reference's; Disagrees under `minimum`."""
    agreement = sum(a == r for a, r in zip(answers, reference, strict=True)) / len(reference)
    print(f"{label}: top-1 agreement with {reference_name} {agreement:.1%} on {len(reference)} photos", flush=True)
    if agreement < minimum:
        raise Disagrees(f"{label} agrees with {reference_name} on {agreement:.1%} of top-1 answers "
                        f"(at least {minimum:.0%} needed): not timed, nothing written")
    return agreement


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def command_line() -> str:
    return "python -m " + ".".join(Path(sys.argv[0]).with_suffix("").parts[-2:]) + " " + shlex.join(sys.argv[1:])


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)

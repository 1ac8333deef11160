"""Processes as /proc shows them (Linux): what a local run started, so that stopping it leaves nothing.

Ray's workers run in process groups of their own, and so does the HAProxy one of them starts, so a
signal to the launching process's group does not reach them; walking /proc does.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    state: str  # R running, S sleeping, ... Z zombie: exited, waiting for its parent to collect it
    parent: int
    session: int
    cpu_ticks: int  # user + system CPU time so far, in clock ticks
    command: str  # the command line, arguments joined by spaces


def processes() -> list[ProcessInfo]:
    """Every process in /proc (one that exits while being read is left out), zombies included."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry / "stat")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        found.append(ProcessInfo(int(entry.name), fields[0], int(fields[1]), int(fields[3]),
                                 int(fields[11]) + int(fields[12]), command))
    return found


def main_thread_cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of the process's main thread alone (its thread id is its pid), in clock
    ticks, or None once it has gone."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/task/{pid}/stat"))
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def _stat_fields(path: Path) -> list[str]:
    # The fields after the parenthesised name, which may itself hold spaces or parentheses.
    return path.read_text().rsplit(")", 1)[1].split()


def process_name(pid: int) -> str | None:
    """The process's executable name (/proc/PID/comm), or None once it has gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def descendants(root: int) -> list[int]:
    """Every process below `root` in the parent tree, children before their own children."""
    children: dict[int, list[int]] = {}
    for process in processes():
        children.setdefault(process.parent, []).append(process.pid)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

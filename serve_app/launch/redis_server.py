"""A real redis-server (Debian's package, installed by `make install`) on a free port of 127.0.0.1,
started and stopped by a test or benchmark: killed, paused and restarted the way an outage would."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from serve_app.launch.harness import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError(f"no redis-server at {REDIS_SERVER}: `make install` installs Debian's redis-server")
        # No persistence: a restart comes back empty, as a cache node that was replaced does.
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """Stopped, not gone: connections stay open and nothing answers (Redis slow, or a network hang)."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self.resume()
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

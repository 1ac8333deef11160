"""Where the result cache keeps answers: in this process (the default) or in a Redis that every ingress
replica of a cluster shares. Both behind one small interface (`ResultStore`): `get` many keys at once,
`put` many answers, and say how they are doing.

A store never raises into a request. Redis down or slow counts as a miss: each call waits at most
`redis_timeout_s`, and after FAILURES_TO_SKIP failures in a row Redis is skipped for `redis_retry_s`,
so an outage costs requests nothing, then tried again. One late answer is only a miss: on a busy
ingress the event loop itself can make a call late. An outage is logged once, and its end once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Callable, Protocol

from serve_app.settings import CacheSettings

log = logging.getLogger("ray.serve")
REDIS_KEY_PREFIX = "serve_app:answer:"
# An entry's bookkeeping in process besides its key and value (the OrderedDict's node, the tuple).
ENTRY_OVERHEAD_BYTES = 100
FAILURES_TO_SKIP = 3
WRITE_TIMEOUT_S = 1.0


class ResultStore(Protocol):
    async def get(self, keys: list[str]) -> list[bytes | None]:
        """Each key's value, or None where there is none (or the store could not say in time)."""

    async def put(self, items: dict[str, bytes]) -> None:
        """Keep these values for the configured TTL."""

    def stats(self) -> dict:
        """What the store holds and how it has failed, for /healthz."""


class MemoryStore:
    """Least recently used first out, bounded in bytes; entries expire after `ttl_s`."""

    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._max_bytes, self._ttl_s, self._clock = max_bytes, ttl_s, clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expires at, value)
        self._bytes = 0

    async def get(self, keys: list[str]) -> list[bytes | None]:
        return [self._get(key) for key in keys]

    async def put(self, items: dict[str, bytes]) -> None:
        expires = self._clock() + self._ttl_s
        for key, value in items.items():
            self._drop(key)
            if _size(key, value) > self._max_bytes:
                continue
            self._entries[key] = (expires, value)
            self._bytes += _size(key, value)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def stats(self) -> dict:
        return {"store": "memory", "entries": len(self._entries), "bytes": self._bytes,
                "max_bytes": self._max_bytes, "store_errors": 0}

    def _get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry[1])


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


class RedisStore:
    """Answers in Redis, with Redis's own TTL (SET PX). Eviction is Redis's: size it with maxmemory
    and an LRU maxmemory-policy."""

    def __init__(self, url: str, ttl_s: float, timeout_s: float, retry_s: float,
                 clock: Callable[[], float] = time.monotonic, on_error: Callable[[], None] = lambda: None):
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Each call is bounded by its own timeout (_call); the sockets' only bound the slowest, a write.
        # No retries of its own: a failed call is a miss now. No CLIENT SETINFO on each new connection:
        # two round trips fewer before a reconnected lookup can answer.
        slowest = max(WRITE_TIMEOUT_S, timeout_s)
        self._client = redis.Redis.from_url(url, socket_timeout=slowest, socket_connect_timeout=slowest,
                                            retry=Retry(NoBackoff(), 0), lib_name=None, lib_version=None)
        self._where = _without_password(url)
        self._ttl_ms = int(ttl_s * 1000)
        self._timeout_s, self._retry_s, self._clock, self._on_error = timeout_s, retry_s, clock, on_error
        self._skip_until = 0.0
        self._failures_in_a_row = 0
        self._down = False
        self._errors = 0

    async def get(self, keys: list[str]) -> list[bytes | None]:
        values = await self._call(lambda: self._client.mget([REDIS_KEY_PREFIX + key for key in keys]), self._timeout_s)
        return values if values is not None else [None] * len(keys)

    async def put(self, items: dict[str, bytes]) -> None:
        async def set_all():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(REDIS_KEY_PREFIX + key, value, px=self._ttl_ms)
                return await pipe.execute()

        # Nobody waits for a write: it may take longer than a lookup may.
        await self._call(set_all, max(WRITE_TIMEOUT_S, self._timeout_s))

    def stats(self) -> dict:
        return {"store": "redis", "url": self._where, "reachable": not self._down, "store_errors": self._errors}

    async def _call(self, command, timeout_s: float):
        """The command's result, or None when Redis failed, took longer than `timeout_s`, or is being skipped
        after failures."""
        if self._clock() < self._skip_until:
            return None
        try:
            result = await asyncio.wait_for(command(), timeout_s)
        except Exception as error:  # redis's errors, OSError, a timeout: all mean "no answer from Redis now"
            self._errors += 1
            self._on_error()
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= FAILURES_TO_SKIP:
                self._skip_until = self._clock() + self._retry_s
                if not self._down:
                    self._down = True
                    log.warning("result cache: Redis at %s failed %d times in a row (last: %s: %s); answering "
                                "without it, trying again every %g s", self._where, self._failures_in_a_row,
                                type(error).__name__, error, self._retry_s)
            return None
        self._failures_in_a_row = 0
        if self._down:
            self._down = False
            log.warning("result cache: Redis at %s answers again", self._where)
        return result


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def store_for(settings: CacheSettings, on_error: Callable[[], None] = lambda: None) -> ResultStore:
    """The store the settings name; `on_error` is told of each failed call to it."""
    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.ttl_s, settings.redis_timeout_s, settings.redis_retry_s,
                          on_error=on_error)
    return MemoryStore(settings.max_bytes, settings.ttl_s)

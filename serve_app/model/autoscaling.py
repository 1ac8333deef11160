"""How the model deployment autoscales: on the images in its replicas, not on Serve's count of calls.

Ingress replicas send concurrent requests as one call (coalescing.py), so a call may carry one
image or sixteen, and the number of ongoing calls no longer measures a replica's load. Each model
replica reports the time-averaged number of images inside it (queued or computing) through Serve's
custom autoscaling metrics (`record_autoscaling_stats`), and `ImagesInFlight` asks for as many
replicas as keep that near `target_images_per_replica`. Serve applies the config's min/max
replicas and upscale/downscale delays on top, as for its own policy.

This module is imported by Serve's controller: it must stay light (no torch, no NumPy).
"""

from __future__ import annotations

import time
from typing import Any, Callable

IMAGES_IN_FLIGHT = "images_in_flight"


class TimeAverage:
    """The time-weighted mean of a level (images in a replica) between two reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._level = 0
        self._area = 0.0
        self._since = self._changed = clock()

    @property
    def level(self) -> int:
        return self._level

    def add(self, delta: int) -> None:
        now = self._clock()
        self._area += self._level * (now - self._changed)
        self._changed = now
        self._level += delta

    def mean_since_last_read(self) -> float:
        now = self._clock()
        area = self._area + self._level * (now - self._changed)
        mean = area / (now - self._since) if now > self._since else float(self._level)
        self._area, self._since, self._changed = 0.0, now, now
        return mean


class ImagesInFlight:
    """A Serve autoscaling policy: replicas = current replicas x (mean images per replica / target)."""

    def __init__(self, target_images_per_replica: float = 24.0):
        if target_images_per_replica <= 0:
            raise ValueError(f"target_images_per_replica must be positive, got {target_images_per_replica}")
        self.target = target_images_per_replica

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        replicas = ctx.current_num_replicas
        reported = (ctx.aggregated_metrics or {}).get(IMAGES_IN_FLIGHT) or {}
        if replicas == 0 or not reported:  # starting, or no report yet: hold
            return ctx.target_num_replicas, {}
        per_replica = sum(reported.values()) / len(reported)
        return replicas * per_replica / self.target, {"images_per_replica": round(per_replica, 2)}

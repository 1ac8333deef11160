"""Concurrent requests in one ingress replica travel to the model deployment together.

A Ray call costs the same few milliseconds of CPU whatever it carries, so the ingress sends the
requests it holds as one call: a list of their ImageBatches, answered by a list of TopKs in the
same order, so each request's rows, k and errors come back as its own by construction.

There is no fixed wait. A request that finds no call in flight goes at once, alone; requests that
arrive while a call is in flight go together as soon as it comes back. A call carries at most
`max_images` images (a single larger request goes alone), and a call that full goes at once even
while others are in flight, so under heavy load calls spread over the model replicas instead of
queueing behind one.

A request that leaves (its deadline passed, its client went away) is dropped from the queue, or,
when its call is already in flight, simply not answered; the others in the call are unaffected.
A failed call fails each of its requests with an error of its own.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from serve_app.wire import ImageBatch, TopK

SendCall = Callable[[list[ImageBatch]], Awaitable[list[TopK]]]


@dataclass
class _Waiting:
    batch: ImageBatch
    answer: asyncio.Future
    sent: bool = False


@dataclass
class CallStats:
    """What this ingress replica sent since it started: requests, model calls, images."""

    requests: int = 0
    calls: int = 0
    images: int = 0
    largest_call: dict = field(default_factory=lambda: {"requests": 0, "images": 0})

    def as_json(self) -> dict:
        return {
            "requests": self.requests,
            "model_calls": self.calls,
            "requests_per_call": round(self.requests / self.calls, 2) if self.calls else None,
            "images_per_call": round(self.images / self.calls, 2) if self.calls else None,
            "largest_call": dict(self.largest_call),
        }


class Coalescer:
    def __init__(self, send: SendCall, max_images: int,
                 on_call: Callable[[int, int], None] = lambda requests, images: None):
        self._send = send
        self._max_images = max_images
        self._on_call = on_call
        self._queue: deque[_Waiting] = deque()
        self._queued_images = 0
        self._in_flight: set[asyncio.Task] = set()
        self.stats = CallStats()

    async def classify(self, batch: ImageBatch) -> TopK:
        """`batch`'s answer, from a model call it shares with the requests queued beside it."""
        waiting = _Waiting(batch, asyncio.get_running_loop().create_future())
        waiting.answer.add_done_callback(lambda _: self._forget(waiting))
        self._queue.append(waiting)
        self._queued_images += len(batch)
        self._send_what_is_due()
        return await waiting.answer

    def _forget(self, waiting: _Waiting) -> None:
        """A request that left before its call was sent no longer counts towards the next one."""
        if waiting.answer.cancelled() and not waiting.sent:
            self._queued_images -= len(waiting.batch)

    def _send_what_is_due(self) -> None:
        while self._queued_images and (not self._in_flight or self._queued_images >= self._max_images):
            call = self._next_call()
            if not call:
                return
            task = asyncio.ensure_future(self._call(call))
            self._in_flight.add(task)
            task.add_done_callback(self._call_returned)

    def _next_call(self) -> list[_Waiting]:
        """The queued requests, oldest first, up to max_images images (at least one request)."""
        call, images = [], 0
        while self._queue:
            waiting = self._queue[0]
            if waiting.answer.done():  # left while queued
                self._queue.popleft()
                continue
            if call and images + len(waiting.batch) > self._max_images:
                break
            self._queue.popleft()
            waiting.sent = True
            self._queued_images -= len(waiting.batch)
            images += len(waiting.batch)
            call.append(waiting)
        return call

    def _call_returned(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self._send_what_is_due()

    async def _call(self, call: list[_Waiting]) -> None:
        images = sum(len(w.batch) for w in call)
        self.stats.requests += len(call)
        self.stats.calls += 1
        self.stats.images += images
        if images > self.stats.largest_call["images"]:
            self.stats.largest_call = {"requests": len(call), "images": images}
        self._on_call(len(call), images)
        try:
            answers = await self._send([w.batch for w in call])
        except Exception as error:  # each request gets its own copy: one exception raised in many tasks tangles tracebacks
            for waiting in call:
                if not waiting.answer.done():
                    waiting.answer.set_exception(copy.copy(error))
            return
        for waiting, answer in zip(call, answers, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(answer)

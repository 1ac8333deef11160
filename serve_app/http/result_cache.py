"""Repeated uploads cost nothing: the ingress answers an image it has seen from a result cache, without
decoding it or calling the model.

An answer is keyed by the sha256 of the upload's bytes and of what decides the answer: the model
replica's answer identity (weights, backend and its artifact, device, how it decodes;
serve_app/model/classifier.py answer_identity) and the ingress's own decoding (preprocessing version,
draft decoding). It holds the image's whole ranking, every class's index and probability, best
first, so a hit answers any top_k exactly as the model would now. Concurrent requests for the same
image wait for one computation (single flight) and count as hits.

`CachingModelClient` wraps the model client the routes use (HTTP and gRPC alike), so the request flow
is unchanged: a request's hits are answered from the store, its misses go to the model as one call.
Raw tensors (`classify_pixels`) are not cached. Where the store is (in process or Redis) is
result_stores.py's business.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from serve_app.errors import ServiceError
from serve_app.http.model_client import ModelClient
from serve_app.http.result_stores import ResultStore, store_for
from serve_app.imaging import PREPROCESSING_VERSION
from serve_app.settings import AppSettings
from serve_app.wire import NUM_CLASSES, TopK

# An image whose computation was abandoned (its request left) is looked up again this many times.
FOLLOW_ATTEMPTS = 3
_RANKING_BYTES = NUM_CLASSES * (2 + 4)  # int16 class indices, then float32 probabilities


@dataclass(frozen=True)
class Ranking:
    """One image's answer as the cache keeps it: every class, best first."""

    indices: np.ndarray  # int16 (NUM_CLASSES,)
    scores: np.ndarray  # float32 (NUM_CLASSES,)

    def encode(self) -> bytes:
        return self.indices.astype("<i2").tobytes() + self.scores.astype("<f4").tobytes()

    @classmethod
    def decode(cls, value: bytes) -> "Ranking | None":
        """The ranking `value` encodes, or None when it is not one (written by something else)."""
        if len(value) != _RANKING_BYTES:
            return None
        indices = np.frombuffer(value, "<i2", NUM_CLASSES)
        return cls(indices, np.frombuffer(value, "<f4", NUM_CLASSES, offset=2 * NUM_CLASSES))


Outcome = Ranking | ServiceError  # what one image gets: its ranking, or why it has none


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0


class CachingModelClient:
    """A ModelClient that answers the images it has seen from `store` and asks `model` for the rest."""

    def __init__(self, model: ModelClient, store: ResultStore, decoding: str,
                 on_lookup: Callable[[str], None] = lambda outcome: None):
        self._model = model
        self._store = store
        self._decoding = decoding  # what of the ingress's own decoding decides an answer
        self._on_lookup = on_lookup
        self._identity: str | None = None  # the model's answer identity: asked once, then from each answer
        self._asking: asyncio.Future | None = None
        self._in_flight: dict[str, asyncio.Future] = {}  # key -> the computation of that image
        self._writes: set[asyncio.Task] = set()
        self.counts = CacheCounts()

    async def classify(self, images: Sequence[bytes], k: int, deadline: float = math.inf) -> TopK:
        if self._identity is None:
            await self._learn_identity(deadline)
        outcomes, cached = await self._outcomes(images, deadline)
        for hit in cached:
            self._count(hit)
        return _top_k(outcomes, k, cached)

    async def classify_pixels(self, pixels: np.ndarray, k: int) -> TopK:
        return await self._model.classify_pixels(pixels, k)

    async def info(self) -> dict[str, Any]:
        return await self._model.info()

    def call_stats(self) -> dict[str, Any]:
        hits, misses = self.counts.hits, self.counts.misses
        cache = {"enabled": True, "hits": hits, "misses": misses,
                 "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None, **self._store.stats()}
        return {**self._model.call_stats(), "cache": cache}

    async def _learn_identity(self, deadline: float) -> None:
        """The model's answer identity, asked of a replica once (concurrent first requests share the
        question), so that a new ingress replica finds what others keep in a shared store before it has
        computed anything itself. Unanswered within the deadline: this request goes uncached."""
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._model.info())
        try:
            timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
            info = await asyncio.wait_for(asyncio.shield(self._asking), timeout)
        except Exception:  # a timeout, or no replica answering: the next request asks again
            if self._asking.done():
                self._asking = None
            return
        self._identity = self._identity or info.get("answer_identity")

    async def _outcomes(self, images: Sequence[bytes], deadline: float,
                        attempt: int = 0) -> tuple[list[Outcome], list[bool]]:
        """Each image's outcome and whether it came without computing it here: from the store, or from
        the computation another request (or an earlier copy in this one) has in flight."""
        keys = [self._key(self._identity, data) for data in images] if self._identity else [None] * len(images)
        leading: dict[int, asyncio.Future] = {}  # the images this request looks up, and computes if missing
        following: dict[int, asyncio.Future] = {}
        for at, key in enumerate(keys):
            if key is not None and key in self._in_flight:
                following[at] = self._in_flight[key]
            else:
                leading[at] = asyncio.get_running_loop().create_future()
                if key is not None:
                    self._in_flight[key] = leading[at]
        outcomes: list[Outcome | None] = [None] * len(images)
        cached = [at in following for at in range(len(images))]
        try:
            await self._lead(images, keys, leading, outcomes, cached, deadline)
        finally:
            for at, future in leading.items():
                if not future.done():
                    future.cancel()  # this request left: its followers look again
                if keys[at] is not None and self._in_flight.get(keys[at]) is future:
                    del self._in_flight[keys[at]]
        abandoned = []
        for at, future in following.items():
            try:
                outcome = await asyncio.shield(future)
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this request was cancelled itself
                abandoned.append(at)
                continue
            except Exception as error:  # the computation this image waited for failed: so does this request
                raise copy.copy(error) from None
            # An error is raised by each request that gets it: each gets its own copy (one exception
            # raised in many tasks tangles their tracebacks).
            outcomes[at] = copy.copy(outcome) if isinstance(outcome, ServiceError) else outcome
        if abandoned:
            again = [images[at] for at in abandoned]
            if attempt + 1 < FOLLOW_ATTEMPTS:
                retried, retried_cached = await self._outcomes(again, deadline, attempt + 1)
            else:
                retried, retried_cached = await self._computed(again, deadline), [False] * len(again)
            for at, outcome, hit in zip(abandoned, retried, retried_cached):
                outcomes[at], cached[at] = outcome, hit
        return outcomes, cached

    async def _lead(self, images: Sequence[bytes], keys: list[str | None], leading: dict[int, asyncio.Future],
                    outcomes: list[Outcome | None], cached: list[bool], deadline: float) -> None:
        """Look up the images this request leads, compute the missing ones in one model call, and hand each
        outcome to whoever follows it."""
        looked_up = [at for at in leading if keys[at] is not None]
        values = await self._store.get([keys[at] for at in looked_up]) if looked_up else []
        for at, value in zip(looked_up, values):
            ranking = Ranking.decode(value) if value is not None else None
            if ranking is not None:
                outcomes[at], cached[at] = ranking, True
                leading[at].set_result(ranking)
        missing = [at for at in leading if outcomes[at] is None]
        if not missing:
            return
        try:
            computed = await self._computed([images[at] for at in missing], deadline)
        except Exception as error:
            for at in missing:
                leading[at].set_exception(copy.copy(error))
                leading[at].exception()  # retrieved: a future nobody follows must not log "never retrieved"
            raise
        for at, outcome in zip(missing, computed):
            outcomes[at] = outcome
            leading[at].set_result(outcome)

    async def _computed(self, images: list[bytes], deadline: float) -> list[Outcome]:
        """The model's ranking of each image (one call), kept in the store under the identity that made it."""
        answer = await self._model.classify(images, NUM_CLASSES, deadline)
        outcomes: list[Outcome] = [
            answer.errors[row] if row in answer.errors else Ranking(answer.indices[row].astype(np.int16),
                                                                     answer.scores[row])
            for row in range(len(images))
        ]
        if answer.identity:
            self._identity = answer.identity  # the newest replica's, through a rolling update
            kept = {self._key(answer.identity, data): outcome.encode()
                    for data, outcome in zip(images, outcomes) if isinstance(outcome, Ranking)}
            if kept:
                self._write(kept)
        return outcomes

    def _write(self, items: dict[str, bytes]) -> None:
        """Store in the background: a request never waits for its answer to be kept."""
        task = asyncio.ensure_future(self._store.put(items))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _key(self, identity: str, data: bytes) -> str:
        digest = hashlib.sha256(f"{identity}|{self._decoding}|".encode())
        digest.update(data)
        return digest.hexdigest()

    def _count(self, hit: bool) -> None:
        if hit:
            self.counts.hits += 1
        else:
            self.counts.misses += 1
        self._on_lookup("hit" if hit else "miss")


def _top_k(outcomes: list[Outcome], k: int, cached: list[bool]) -> TopK:
    """A request's answer from its images' rankings: the first k of each, as the model ranks them."""
    k = min(k, NUM_CLASSES)
    indices = np.zeros((len(outcomes), k), np.int32)
    scores = np.zeros((len(outcomes), k), np.float32)
    errors = {}
    for row, outcome in enumerate(outcomes):
        if isinstance(outcome, ServiceError):
            errors[row] = outcome
        else:
            indices[row], scores[row] = outcome.indices[:k], outcome.scores[:k]
    return TopK(indices, scores, errors, cached=tuple(cached))


def decoding_identity(settings: AppSettings) -> str:
    """What of the ingress's settings decides the pixels an upload becomes (part of every key)."""
    return f"preprocessing={PREPROCESSING_VERSION},draft={settings.ingress.draft_decode}," \
           f"replica_decodes={settings.model.decode_on_replica}"


def with_result_cache(model: ModelClient, settings: AppSettings,
                      on_lookup: Callable[[str], None] = lambda outcome: None,
                      on_store_error: Callable[[], None] = lambda: None) -> ModelClient:
    """`model` behind the result cache the settings describe, or `model` itself where it is off."""
    if not settings.ingress.cache.enabled:
        return model
    store = store_for(settings.ingress.cache, on_store_error)
    return CachingModelClient(model, store, decoding_identity(settings), on_lookup)

"""The model deployment's batching, in process: a call that finds the replica empty is computed at
once, calls that arrive while it computes are batched together by @serve.batch, and forward passes
never overlap (they would share the replica's threads).

The scenario runs in a child interpreter: @serve.batch keeps its queue on the class once used, and a
class holding one can no longer be pickled for a deployment by later tests in this process."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from serve_app.settings import ALLOW_NULL_MODEL_ENV_VAR

pytestmark = pytest.mark.fast

FORWARD_PASS_S = 0.2
BATCH_WAIT_S = 0.1


def scenario() -> dict:
    """One call, then three more while it computes, on a Classifier whose forward passes take
    FORWARD_PASS_S (the null backend, slowed): what came of them."""
    from ray import serve

    from serve_app.model.backends.null import NullBackend
    from serve_app.model.classifier import Classifier
    from serve_app.settings import DecodeLimits, ModelSettings
    from serve_app.wire import ImageBatch

    lock, running, most_at_once, infer = threading.Lock(), [0], [0], NullBackend.infer

    def slow_infer(backend, images):
        with lock:
            running[0] += 1
            most_at_once[0] = max(most_at_once[0], running[0])
        time.sleep(FORWARD_PASS_S)
        with lock:
            running[0] -= 1
        return infer(backend, images)

    NullBackend.infer = slow_infer
    # Outside a replica, @serve.batch's queue reads the deployment's max_ongoing_requests (for a
    # warning only) from a replica context that does not exist: the shipped config's value.
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=8))
    serve.get_replica_context = lambda: context
    classifier = Classifier.func_or_class(ModelSettings(weights="standin", backend="null"),
                                          DecodeLimits(max_image_pixels=10**7, draft=True))
    classifier.reconfigure({"max_batch_size": 16, "max_calls_per_batch": 16, "batch_wait_timeout_s": BATCH_WAIT_S})

    def one_image_call() -> list[ImageBatch]:
        return [ImageBatch((np.zeros((224, 224, 3), np.uint8),), k=3)]

    async def calls():
        started = time.perf_counter()
        lone = asyncio.create_task(classifier.classify(one_image_call()))
        await asyncio.sleep(FORWARD_PASS_S / 4)  # the lone call is computing
        behind = [asyncio.create_task(classifier.classify(one_image_call())) for _ in range(3)]
        await lone
        lone_s = time.perf_counter() - started
        answers = await asyncio.gather(*behind)
        return lone_s, [answer[0].indices.shape for answer in answers]

    lone_s, shapes = asyncio.run(calls())
    return {"lone_s": lone_s, "answer_shapes": shapes, "most_at_once": most_at_once[0],
            "batch_sizes": classifier.info()["batching"]["batch_sizes"]}


def test_a_lone_call_runs_at_once_and_the_calls_behind_it_batch_together():
    code = "import json; from tests.test_classifier_batching import scenario; print(json.dumps(scenario()))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, ALLOW_NULL_MODEL_ENV_VAR: "1"})
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout.splitlines()[-1])
    assert seen["lone_s"] < FORWARD_PASS_S + BATCH_WAIT_S / 2, f"the lone call took {seen['lone_s']:.3f} s: it waited"
    assert seen["answer_shapes"] == [[1, 3]] * 3
    assert seen["batch_sizes"] == {"1": 1, "3": 1}, "the three calls behind the lone one: one batch"
    assert seen["most_at_once"] == 1, "forward passes overlapped"

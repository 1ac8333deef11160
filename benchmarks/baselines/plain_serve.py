"""Baseline 2: one plain Ray Serve deployment with `@serve.batch`, written the way the Ray Serve
documentation's image-classification examples teach it.

    SERVE_APP_WEIGHTS=standin serve run benchmarks.baselines.plain_serve:app
    BASELINE_BACKEND=onnx-int8 ...   # the same deployment running our INT8 model

Decoding, preprocessing and the model all run in the one replica, which gets both cores.
"""

import os

from ray import serve
from starlette.requests import Request

from benchmarks.baselines.common import load_model, top3

os.environ.setdefault("BASELINE_THREADS", "2")


@serve.deployment(ray_actor_options={"num_cpus": 2}, max_ongoing_requests=64)
class ImageClassifier:
    def __init__(self):
        self.model = load_model()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def classify(self, images: list) -> list[list[dict]]:
        return [top3(row) for row in self.model.logits(images)]

    async def __call__(self, request: Request) -> list[dict]:
        form = await request.form()
        image = self.model.preprocess(await form["file"].read())
        return await self.classify(image)


app = ImageClassifier.bind()

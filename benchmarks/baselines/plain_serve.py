"""Baseline 2: one plain Ray Serve deployment with the eager model and `@serve.batch`, written the
way the Ray Serve documentation's image-classification examples teach it.

    SERVE_APP_WEIGHTS=standin serve run benchmarks.baselines.plain_serve:app

Decoding, preprocessing and the model all run in the one replica, which gets both cores.
"""

import torch
from ray import serve
from starlette.requests import Request

from benchmarks.baselines.common import image_tensor, load_eager_model, top3


@serve.deployment(ray_actor_options={"num_cpus": 2}, max_ongoing_requests=64)
class ImageClassifier:
    def __init__(self):
        torch.set_num_threads(2)
        self.model = load_eager_model()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def classify(self, images: list[torch.Tensor]) -> list[list[dict]]:
        with torch.inference_mode():
            logits = self.model(torch.stack(images))
        return [top3(row) for row in logits]

    async def __call__(self, request: Request) -> list[dict]:
        form = await request.form()
        image = image_tensor(await form["file"].read())
        return await self.classify(image)


app = ImageClassifier.bind()

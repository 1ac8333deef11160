"""What a model replica tells its operators through Ray Serve's metrics API: batch sizes and model time."""

from __future__ import annotations

from serve_app.metric_buckets import BATCH_SIZE_BUCKETS, SECONDS_BUCKETS


class ModelMetrics:
    def __init__(self, backend: str):
        from ray.serve import metrics

        self.batch_size = metrics.Histogram(
            "serve_app_batch_size", description="Images per model batch.", boundaries=BATCH_SIZE_BUCKETS
        )
        self.inference_seconds = metrics.Histogram(
            "serve_app_inference_seconds", description="Model time per batch.", boundaries=SECONDS_BUCKETS,
            tag_keys=("backend",),
        )
        self.inference_seconds.set_default_tags({"backend": backend})

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

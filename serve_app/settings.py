"""Typed settings: the `args:` of a Serve config and the model deployment's `user_config`.

Every default and limit of the service lives here, once. Ray-managed knobs (replicas,
autoscaling, resources, `max_ongoing_requests`) stay under the config's `deployments:`.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WEIGHTS_ENV_VAR = "SERVE_APP_WEIGHTS"
ARTIFACTS_ENV_VAR = "SERVE_APP_ARTIFACTS"
MODEL_ENV_OVERRIDES = {WEIGHTS_ENV_VAR: "weights", ARTIFACTS_ENV_VAR: "artifacts_dir"}

BackendName = Literal["auto", "torch", "torchscript", "onnx", "onnx-int8"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Strict):
    weights: str = Field(
        "torchvision",
        description=(
            "'torchvision' (official IMAGENET1K_V1 file from the torch hub cache, downloaded "
            "there if the network allows), 'standin' (deterministic seeded weights for tests "
            "and offline demos), or a path to a ResNet-18 state dict."
        ),
    )
    backend: BackendName = Field(
        "torch",
        description="'torch', 'torchscript', 'onnx', 'onnx-int8', or 'auto' (onnx-int8 on CPU, torch on a GPU).",
    )
    device: DeviceName = Field("auto", description="'auto' picks CUDA, then MPS, then CPU.")
    calibration_images: str | None = Field(
        None,
        description=(
            "Folder of photos the stand-in's batch norm and the INT8 quantization calibrate on. "
            "Default: $SERVE_APP_CALIBRATION_IMAGES, else the shared/images folder beside the repo."
        ),
    )
    cache_dir: str | None = Field(
        None,
        description="Where built stand-ins and artifacts are cached. Default: $SERVE_APP_CACHE or ~/.cache/serve_app.",
    )
    artifacts_dir: str | None = Field(
        None,
        description="Prepared artifacts (`python -m serve_app export --out DIR`); default: build into the cache.",
    )
    onnx_spinning: bool = Field(
        False, description="Let ONNX Runtime's idle threads spin (only pays when the replica owns its cores)."
    )


class IngressSettings(_Strict):
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest request body accepted (413 above).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest width x height decoded (413 above; stops decompression bombs)."
    )
    max_images_per_request: int = Field(32, ge=1, le=1024, description="Most `file` parts in one request.")
    default_top_k: int = Field(3, ge=1, le=1000, description="Classes returned when the request names no top_k.")
    draft_decode: bool = Field(
        True, description="Decode large JPEGs at reduced size (DCT scaling) before the reference resize."
    )
    retry_after_s: int = Field(
        1, ge=0, le=3600, description="Retry-After seconds sent with a 503 (model queue full, or no model replica answering)."
    )


class AppSettings(_Strict):
    model: ModelSettings = ModelSettings()
    ingress: IngressSettings = IngressSettings()

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "AppSettings":
        """Validate a config's `args:`; the environment overrides (MODEL_ENV_OVERRIDES) apply last, so a
        container image can say where its baked-in weights and artifacts are."""
        settings = cls.model_validate(args or {})
        overrides = {field: os.environ[var] for var, field in MODEL_ENV_OVERRIDES.items() if os.environ.get(var)}
        if overrides:
            model = ModelSettings.model_validate({**settings.model.model_dump(), **overrides})
            settings = settings.model_copy(update={"model": model})
        return settings


class BatchSettings(_Strict):
    """The model deployment's `user_config`: applied with the `@serve.batch` setters, live."""

    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=1.0)

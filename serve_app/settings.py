"""Typed settings: the `args:` of a Serve config and the model deployment's `user_config`.

Every default and limit of the service lives here, once: the backend names, how `auto` picks a
device and a backend, and the environment variables the service reads. Ray-managed knobs
(replicas, autoscaling, resources, `max_ongoing_requests`) stay under the config's `deployments:`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

# Environment variables: the weights and artifacts ones override the config (a container image
# says where its baked-in files are), the API keys replace the config's list (a secret store hands
# them over), and the calibration and cache ones are defaults the config can still set.
WEIGHTS_ENV_VAR = "SERVE_APP_WEIGHTS"
ARTIFACTS_ENV_VAR = "SERVE_APP_ARTIFACTS"
MODEL_ENV_OVERRIDES = {WEIGHTS_ENV_VAR: "weights", ARTIFACTS_ENV_VAR: "artifacts_dir"}
API_KEYS_ENV_VAR = "SERVE_APP_API_KEYS"
CALIBRATION_ENV_VAR = "SERVE_APP_CALIBRATION_IMAGES"
CACHE_ENV_VAR = "SERVE_APP_CACHE"
# The 100 ImageNet photos beside the repository (calibration's default folder, tests, benchmarks).
SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
# Test only: model backends fail their first N forward passes (serve_app/model/backends FailingFirst).
FAIL_FIRST_BATCHES_ENV_VAR = "SERVE_APP_TEST_FAIL_FIRST_BATCHES"
# Measurement only: `backend: null` is refused unless this is "1" (benchmarks and tests set it).
ALLOW_NULL_MODEL_ENV_VAR = "SERVE_APP_ALLOW_NULL_MODEL"
# Where `python -m serve_app serve` has Ray export Prometheus metrics (default: Ray's own 8080).
METRICS_PORT_ENV_VAR = "SERVE_APP_METRICS_PORT"
DEFAULT_METRICS_PORT = 8080
# "off" turns the ingress's result cache off whatever the config says (benchmarks set it: their photos repeat).
RESULT_CACHE_ENV_VAR = "SERVE_APP_RESULT_CACHE"
# Every variable the service reads, and those whose values are secrets (never printed).
SERVICE_ENV_VARS = (WEIGHTS_ENV_VAR, ARTIFACTS_ENV_VAR, API_KEYS_ENV_VAR, CALIBRATION_ENV_VAR, CACHE_ENV_VAR,
                    FAIL_FIRST_BATCHES_ENV_VAR, ALLOW_NULL_MODEL_ENV_VAR, METRICS_PORT_ENV_VAR, RESULT_CACHE_ENV_VAR)
SECRET_ENV_VARS = (API_KEYS_ENV_VAR,)


@dataclass(frozen=True)
class BackendSpec:
    description: str
    platform: str  # the Open Inference Protocol's name for what runs the model (GET /v2/models/...)
    artifact: str | None = None  # the file `python -m serve_app export` builds for it; None: loads the weights
    gpu_only: bool = False
    measurement_only: bool = False  # no real answers: refused unless ALLOW_NULL_MODEL_ENV_VAR is set


# Every backend, by name (serve_app/model/backends registers a class for each).
BACKENDS = {
    "torch": BackendSpec("eager PyTorch", "pytorch_torch"),
    "torchscript": BackendSpec("TorchScript", "pytorch_torchscript", "resnet18.torchscript.pt"),
    "onnx": BackendSpec("ONNX Runtime FP32", "onnxruntime_onnx", "resnet18.onnx"),
    "onnx-int8": BackendSpec("ONNX Runtime, static INT8", "onnxruntime_onnx", "resnet18-int8.onnx"),
    "cuda-graphs": BackendSpec("GPU only: half precision, channels-last, CUDA Graphs per batch size",
                               "pytorch_torch", gpu_only=True),
    "null": BackendSpec("measurement only: no inference, the same fixed logits for every image, so the serving "
                        f"path can be timed without the model (refused unless {ALLOW_NULL_MODEL_ENV_VAR}=1)",
                        "null_no_inference", measurement_only=True),
}
CPU_BACKENDS = tuple(name for name, spec in BACKENDS.items() if not spec.gpu_only and not spec.measurement_only)


def measures_only(backend: str) -> bool:
    """Whether `backend` runs no model (the null model): its answers are for measuring, not classifying."""
    return backend in BACKENDS and BACKENDS[backend].measurement_only


# What `backend: auto` runs, by device: the fastest in benchmarks/results/backends.md on CPU.
AUTO_BACKENDS = {"cpu": "onnx-int8", "cuda": "cuda-graphs", "mps": "torch"}

BackendName = Literal[("auto", *BACKENDS)]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
PrecisionName = Literal["fp16", "bf16", "fp32"]


def environment(var: str) -> str | None:
    """One of the service's environment variables, or None when unset or empty."""
    return os.environ.get(var) or None


def result_cache_switched_off() -> bool:
    """Whether $SERVE_APP_RESULT_CACHE turns the result cache off ("off"; "on" or unset: as configured)."""
    value = (environment(RESULT_CACHE_ENV_VAR) or "on").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{RESULT_CACHE_ENV_VAR} must be 'on' or 'off', got {value!r}")
    return value == "off"


def resolve_device(device: DeviceName) -> Literal["cpu", "cuda", "mps"]:
    """`auto` is CUDA where this process has a GPU (Ray's assignment inside a replica; outside Ray,
    an NVIDIA driver showing a GPU), else the CPU. MPS is used only when named: `auto` backends are
    chosen for CUDA. Never imports torch, so ONNX replicas stay without it."""
    if device != "auto":
        return device
    try:
        import ray

        if ray.is_initialized():
            return "cuda" if ray.get_gpu_ids() else "cpu"
    except Exception:
        pass
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return "cpu"
    gpus = Path("/proc/driver/nvidia/gpus")
    return "cuda" if gpus.is_dir() and any(gpus.iterdir()) else "cpu"


@dataclass(frozen=True)
class DecodeLimits:
    """How far decoding may go, wherever it happens: the ingress's settings, handed to model replicas
    that decode (`decode_on_replica`) so that both paths apply the same ones."""

    max_image_pixels: int
    draft: bool


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
    weights_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description=(
            "The weights file's full sha256, where you know it: a file that differs is refused. Without it, "
            "a file named like torchvision's (`resnet18-f37072fd.pth`) must match the hash prefix in its name "
            "(all torch.hub checks), and any file must fit ResNet-18 exactly."
        ),
    )
    backend: BackendName = Field(
        "torch",
        description="; ".join(f"'{name}': {spec.description}" for name, spec in BACKENDS.items())
        + f"; 'auto': {AUTO_BACKENDS['cpu']} on CPU, {AUTO_BACKENDS['cuda']} on a CUDA GPU.",
    )
    device: DeviceName = Field("auto", description="'auto' picks CUDA where the replica has a GPU, else the CPU.")
    calibration_images: str | None = Field(
        None,
        description=(
            "Folder of photos the stand-in's batch norm and the INT8 quantization calibrate on. "
            f"Default: ${CALIBRATION_ENV_VAR}, else the shared/images folder beside the repo."
        ),
    )
    cache_dir: str | None = Field(
        None,
        description=f"Where built stand-ins and artifacts are cached. Default: ${CACHE_ENV_VAR} or ~/.cache/serve_app.",
    )
    artifacts_dir: str | None = Field(
        None,
        description="Prepared artifacts (`python -m serve_app export --out DIR`); default: build into the cache.",
    )
    int8_min_agreement: float = Field(
        0.97,
        ge=0.0,
        le=1.0,
        description=(
            "INT8 proves itself on every build: its top-1 agreement with FP32 on photos it did not calibrate "
            "on is measured and recorded in the artifacts' manifest. Under this share, `backend: auto` serves "
            "ONNX FP32 instead; an explicit `onnx-int8` serves INT8 with a warning."
        ),
    )
    onnx_spinning: bool = Field(
        False, description="Let ONNX Runtime's idle threads spin (only pays when the replica owns its cores)."
    )
    precision: PrecisionName = Field("fp16", description="Arithmetic of the cuda-graphs backend.")
    graph_batch_sizes: list[int] = Field(
        [1, 2, 4, 8, 16, 32, 64, 128, 256],
        min_length=1,
        description=(
            "Batch sizes the cuda-graphs backend captures before the replica reports ready; a partial batch "
            "is padded up to the nearest, a larger one is split."
        ),
    )
    decode_on_replica: bool = Field(
        False,
        description=(
            "Send plain JPEGs (RGB or grey, no EXIF rotation) to the model replica undecoded, to be decoded, "
            "resized and cropped there in batches: with nvJPEG on a GPU. The ingress then only validates "
            "headers; other images, and any nvJPEG refuses, take the CPU path."
        ),
    )

    @model_validator(mode="after")
    def _null_model_only_when_asked(self) -> "ModelSettings":
        if measures_only(self.backend) and environment(ALLOW_NULL_MODEL_ENV_VAR) != "1":
            classifying = ", ".join(["auto", *(name for name in BACKENDS if not measures_only(name))])
            raise ValueError(
                f"backend {self.backend!r} runs no model and answers the same fixed classes for every image: it "
                f"exists to measure the serving path alone. Set {ALLOW_NULL_MODEL_ENV_VAR}=1 where a benchmark or "
                f"test asks for it; to classify, use one of {classifying}")
        return self

    def resolved_backend(self, device: str | None = None) -> str:
        """The backend to run, with `auto` resolved for the configured device, or where that is `auto`
        for `device` (default: this process's device)."""
        if self.backend != "auto":
            return self.backend
        return AUTO_BACKENDS[self.device if self.device != "auto" else (device or resolve_device("auto"))]


class CacheSettings(_Strict):
    """The ingress's result cache: answers to uploads it has seen, keyed by their bytes' sha256 and what
    decides the answer (serve_app/http/result_cache.py)."""

    enabled: bool = Field(
        True, description=f"Answer repeated uploads from the cache. ${RESULT_CACHE_ENV_VAR}=off turns it off "
                          "without editing the config.")
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=0,
        description="In process: the most bytes of answers kept per ingress replica, least recently used "
                    "dropped first (an answer is about 6 KB: every class's rank, so a hit serves any top_k).")
    ttl_s: float = Field(3600.0, gt=0, le=30 * 24 * 3600, description="How long an answer stays in the cache.")
    redis_url: str | None = Field(
        None, pattern=r"^(redis|rediss|unix)://",
        description="Keep answers in this Redis (redis://host:6379/0) instead of in process, so all ingress "
                    "replicas share hits. Redis down or slow never fails a request: it counts a miss.")
    redis_timeout_s: float = Field(
        0.05, gt=0, le=5,
        description="Longest wait for Redis on a request (slower is a miss); after 3 failures in a row Redis "
                    "is skipped for redis_retry_s before it is tried again.")
    redis_retry_s: float = Field(1.0, gt=0, le=600, description="How long Redis is skipped after it failed.")


class IngressSettings(_Strict):
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest request body accepted (413 above).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest width x height decoded (413 above; stops decompression bombs)."
    )
    max_images_per_request: int = Field(32, ge=1, le=1024, description="Most `file` parts in one request.")
    max_images_per_call: int = Field(
        16,
        ge=1,
        le=4096,
        description=(
            "Most images in one call from an ingress replica to the model deployment. Concurrent requests "
            "travel together: one that finds no call in flight goes at once, the rest go together when it "
            "returns, and a call this full goes at once. Keep it near the model's max_batch_size."
        ),
    )
    default_top_k: int = Field(3, ge=1, le=1000, description="Classes returned when the request names no top_k.")
    draft_decode: bool = Field(
        True, description="Decode large JPEGs at reduced size (DCT scaling) before the reference resize."
    )
    retry_after_s: int = Field(
        1, ge=0, le=3600, description="Retry-After seconds sent with a 503 (model queue full, or no model replica answering)."
    )
    request_timeout_s: float = Field(
        20.0,
        gt=0,
        le=3600,
        description=(
            "A request must be answered within this: an upload still arriving after it gets 408, a request "
            "still waiting for the model gets 504. Keep it under http_options.request_timeout_s (Serve's own, "
            "which answers without the JSON error shape)."
        ),
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins whose pages may call the API from a browser (CORS); none by default. '*' allows any.",
    )
    request_log: Literal["errors", "all"] = Field(
        "errors",
        description=(
            "Which requests get a line in the ingress's log, with their request id, route, status and "
            "duration: `errors` (every 4xx and 5xx answer, and a 200 with a refused image; the default, as "
            "gunicorn logs no access by default) or `all` (every request: about 5% of the ingress's Python "
            "time under load on 2 cores). Every request is counted in the metrics either way."
        ),
    )
    cache: CacheSettings = CacheSettings()

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_image_pixels, self.draft_decode)


class AuthSettings(_Strict):
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description=(
            "When not empty, every route the route table does not mark open (GET /openapi.json marks the "
            "others with `security`) needs `Authorization: Bearer <key>`. "
            f"${API_KEYS_ENV_VAR} (comma-separated) replaces this list, so keys can stay out of the config file."
        ),
    )


class AppSettings(_Strict):
    model: ModelSettings = ModelSettings()
    ingress: IngressSettings = IngressSettings()
    auth: AuthSettings = AuthSettings()

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "AppSettings":
        """Validate a config's `args:`; the environment overrides (MODEL_ENV_OVERRIDES) apply last, so a
        container image can say where its baked-in weights and artifacts are, and a secret store can
        hand over the API keys ($SERVE_APP_API_KEYS)."""
        settings = cls.model_validate(args or {})
        overrides = {field: environment(var) for var, field in MODEL_ENV_OVERRIDES.items() if environment(var)}
        if overrides:
            model = ModelSettings.model_validate({**settings.model.model_dump(), **overrides})
            settings = settings.model_copy(update={"model": model})
        if environment(API_KEYS_ENV_VAR):
            keys = [key.strip() for key in environment(API_KEYS_ENV_VAR).split(",") if key.strip()]
            settings = settings.model_copy(update={"auth": AuthSettings(api_keys=keys)})
        if result_cache_switched_off():
            cache = settings.ingress.cache.model_copy(update={"enabled": False})
            settings = settings.model_copy(update={"ingress": settings.ingress.model_copy(update={"cache": cache})})
        return settings


class BatchSettings(_Strict):
    """The model deployment's `user_config`: applied with the `@serve.batch` setters, live."""

    max_batch_size: int = Field(
        16, ge=1, le=1024,
        description="Most images in one forward pass: the images of a batch of calls run in chunks of this many.",
    )
    max_calls_per_batch: int = Field(
        16, ge=1, le=1024,
        description="Most calls from ingress replicas that `@serve.batch` gathers into one batch (each call "
                    "carries up to ingress.max_images_per_call images of several requests).",
    )
    # Only while other requests are in the replica; a request arriving at an idle one runs at once.
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, le=1.0)

"""Stand-in weights: ResNet-18 with seeded weights, made image-dependent, for tests and offline demos.

Plain random init answers one class for every image (its batch-norm layers normalise with
mean 0 / var 1, so activations drift into one direction), which would let a broken pipeline pass
every comparison. So after seeding, the batch-norm statistics are recomputed on real photos and
the classifier is sharpened until its softmax is peaked. Both steps run in float64 so the result
is the same in every process; it is cached on disk, keyed by the seed and the photos' hashes.
The stand-in knows nothing about ImageNet: its labels are meaningless, only its arithmetic is real.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from serve_app.calibration import calibration_batch, calibration_files

STANDIN_VERSION = "standin-v1"
SEED = 0
CALIBRATION_CHUNK = 16
TARGET_LOGIT_STD = 3.0
CACHE_ENV_VAR = "SERVE_APP_CACHE"


def standin_identity(configured_images: str | None = None) -> str:
    digest = hashlib.sha256(f"{STANDIN_VERSION}:{SEED}".encode())
    for path in calibration_files(configured_images):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_folder(configured: str | None = None) -> Path:
    default = Path.home() / ".cache" / "serve_app"
    return Path(configured or os.environ.get(CACHE_ENV_VAR) or default).expanduser()


def standin_state_dict(configured_images: str | None = None, configured_cache: str | None = None) -> dict:
    """The stand-in's state dict, from the cache or built (seconds) and cached."""
    import torch

    identity = standin_identity(configured_images)
    path = cache_folder(configured_cache) / f"resnet18-{STANDIN_VERSION}-{identity[:16]}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    state = build_standin_state_dict(configured_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(state, partial)
    os.replace(partial, path)  # atomic: concurrent replicas never read half a file
    return state


def build_standin_state_dict(configured_images: str | None = None) -> dict:
    import torch
    from torchvision.models import resnet18

    from serve_app.imaging import MEAN, STD

    torch.manual_seed(SEED)
    net = resnet18(weights=None).double()
    photos = calibration_batch(configured_images)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    inputs = (torch.from_numpy(photos).permute(0, 3, 1, 2).double() / 255.0 - mean) / std
    chunks = inputs.split(CALIBRATION_CHUNK)

    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the chunks
    with torch.no_grad():
        net.train()
        for chunk in chunks:
            net(chunk)
        net.eval()
        logits = torch.cat([net(chunk) for chunk in chunks])
        # Pooled ReLU features share one large common direction that makes a few classes win
        # everywhere; centring each class's logit over the photos leaves what differs per image.
        net.fc.bias.sub_(logits.mean(dim=0))
        logits = logits - logits.mean(dim=0)
        sharpen = TARGET_LOGIT_STD / logits.std(dim=1).mean()
        net.fc.weight.mul_(sharpen)
        net.fc.bias.mul_(sharpen)
    return {k: v.float() if v.is_floating_point() else v for k, v in net.state_dict().items()}

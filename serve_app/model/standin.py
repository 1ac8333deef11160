"""Stand-in weights: ResNet-18 with seeded weights, made image-dependent, for tests and offline demos.

Plain random init answers one class for every image (its batch-norm layers normalise with
mean 0 / var 1, so activations drift into one direction), which would let a broken pipeline pass
every comparison. So after seeding, the batch-norm statistics are recomputed on real photos, the
residual branches are damped, and the classifier becomes a nearest-prototype one over those photos
(see `prototype_classifier`). All of it runs in float64 so the result is the same in every process;
it is cached on disk, keyed by the version, the seed and the photos' hashes.
The stand-in knows nothing about ImageNet: its labels are meaningless, only its arithmetic is real.
"""

from __future__ import annotations

import hashlib
import os

from serve_app.model.cache import cache_folder
from serve_app.model.calibration import calibration_batch, calibration_identity
from serve_app.wire import NUM_CLASSES

STANDIN_VERSION = "standin-v2"
SEED = 0
CALIBRATION_CHUNK = 16
TARGET_LOGIT_STD = 1.0
# Damped residual branches, as in trained ResNets: an undamped random ResNet is chaotic enough
# that INT8 rounding alone changes its answers.
RESIDUAL_SCALE = 0.5
OTHER_CLASS_SCALE = 0.3


def standin_identity(configured_images: str | None = None) -> str:
    digest = hashlib.sha256(f"{STANDIN_VERSION}:{SEED}:".encode())
    digest.update(calibration_identity(configured_images).encode())
    return digest.hexdigest()


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


def build_standin_state_dict(configured_images: str | None = None, seed: int = SEED) -> dict:
    """The stand-in built from the first 32 photos of a folder; another seed or folder builds a
    different network the same way (benchmarks/int8_fidelity.py's second network)."""
    import torch
    from torchvision.models import resnet18

    from serve_app.imaging import MEAN, STD

    torch.manual_seed(seed)
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
        for name, module in net.named_modules():
            if name.endswith("bn2"):
                module.weight.mul_(RESIDUAL_SCALE)
                module.bias.mul_(RESIDUAL_SCALE)
        net.fc = torch.nn.Identity()
        features = torch.cat([net(chunk) for chunk in chunks])
    net.fc = prototype_classifier(features, seed)
    return {k: v.float() if v.is_floating_point() else v for k, v in net.state_dict().items()}


def prototype_classifier(features, seed: int = SEED):
    """A linear layer that answers, for each image, the class of the most similar calibration photo.

    Pooled features of a random network share one large common direction, so they are centred on
    the photos' mean first. Rows of PROTOTYPE_CLASSES seeded classes are the photos' centred
    features; the other classes get small random rows, so every class has a probability but the
    top-1 margins are as clear as a trained network's (which is what INT8 quantization needs).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    mean = features.mean(dim=0)
    prototypes = torch.nn.functional.normalize(features - mean, dim=1)
    weight = torch.randn(NUM_CLASSES, features.shape[1], generator=generator, dtype=features.dtype)
    weight *= OTHER_CLASS_SCALE / features.shape[1] ** 0.5
    classes = torch.randperm(NUM_CLASSES, generator=generator)[: len(prototypes)]
    weight[classes] = prototypes
    logits = (features - mean) @ weight.T
    sharpen = TARGET_LOGIT_STD / logits.std(dim=1).mean()
    fc = torch.nn.Linear(features.shape[1], NUM_CLASSES, dtype=features.dtype)
    with torch.no_grad():
        fc.weight.copy_(weight * sharpen)
        fc.bias.copy_(-(weight @ mean) * sharpen)
    return fc

"""Where the weights come from, and proof they are the ones asked for. No torch here.

`resolve_weights` turns the `weights` setting into a `WeightsSource`: a checked file (official or
user-provided) or the stand-in. Loading the tensors is the backends' job (see `network.py`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serve_app.errors import WeightsError

if TYPE_CHECKING:
    from serve_app.settings import ModelSettings

OFFICIAL_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
OFFICIAL_FILENAME = OFFICIAL_URL.rsplit("/", 1)[1]
# torchvision names checkpoints `<name>-<first hex digits of the file's sha256>.pth`.
_HASHED_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "official" | "file" | "standin"
    path: Path | None
    sha256: str
    name: str  # what responses and /healthz report

    @property
    def is_standin(self) -> bool:
        return self.kind == "standin"

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "sha256": self.sha256, "standin": self.is_standin}


def how_to_provide() -> str:
    target = hub_checkpoint_dir() / OFFICIAL_FILENAME
    return (
        "Provide the official ResNet-18 IMAGENET1K_V1 weights in one of these ways:\n"
        f"  1. copy {OFFICIAL_FILENAME} (from {OFFICIAL_URL}) to {target}\n"
        "     (the torch hub cache; set TORCH_HOME to use another cache folder), or\n"
        f"  2. set the `weights` setting (or SERVE_APP_WEIGHTS) to the file's path, or\n"
        "  3. allow this machine to reach download.pytorch.org once.\n"
        "For tests and offline demos only, SERVE_APP_WEIGHTS=standin serves clearly labelled stand-in weights."
    )


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint folder, computed the way torch does, without importing torch."""
    if os.environ.get("TORCH_HOME"):
        torch_home = Path(os.environ["TORCH_HOME"])
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        torch_home = cache / "torch"
    return torch_home.expanduser() / "hub" / "checkpoints"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_file(path: Path, expected_sha256: str | None = None) -> str:
    """sha256 of a weights file. It must equal `expected_sha256` where that is known (the
    `weights_sha256` setting); a torchvision-style name (`resnet18-f37072fd.pth`) must match the hash
    prefix it carries, which is all torch.hub checks too."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist.\n{how_to_provide()}")
    sha256 = file_sha256(path)
    if expected_sha256 and sha256 != expected_sha256.lower():
        raise WeightsError(
            f"weights file {path} is not the expected one: its sha256 is {sha256}, the weights_sha256 "
            f"setting expects {expected_sha256.lower()}."
        )
    match = _HASHED_NAME.search(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise WeightsError(
            f"weights file {path} is corrupt or not what its name says: its sha256 is {sha256}, "
            f"but the name promises a hash starting with {match.group(1)}.\n{how_to_provide()}"
        )
    return sha256


def download(url: str, target: Path, timeout_s: float = 30.0) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".partial") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                shutil.copyfileobj(response, tmp)
            tmp.close()
            os.replace(tmp.name, target)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)


def official_weights(allow_download: bool = True, expected_sha256: str | None = None) -> WeightsSource:
    path = hub_checkpoint_dir() / OFFICIAL_FILENAME
    if not path.is_file():
        if not allow_download:
            raise WeightsError(f"the official weights are not in {path}.\n{how_to_provide()}")
        try:
            download(OFFICIAL_URL, path)
        except Exception as exc:
            raise WeightsError(
                f"the official weights are not in {path} and could not be downloaded "
                f"({type(exc).__name__}: {exc}).\n{how_to_provide()}"
            ) from None
    return WeightsSource("official", path, checked_file(path, expected_sha256), "IMAGENET1K_V1")


def resolve_weights(spec: str, *, allow_download: bool = True, calibration_images: str | None = None,
                    expected_sha256: str | None = None) -> WeightsSource:
    """The `weights` setting -> a checked source. Never loads tensors."""
    if spec == "torchvision":
        return official_weights(allow_download, expected_sha256)
    if spec == "standin":
        from serve_app.model.standin import standin_identity

        return WeightsSource("standin", None, standin_identity(calibration_images), "standin")
    path = Path(spec).expanduser()
    return WeightsSource("file", path, checked_file(path, expected_sha256), path.name)


def weights_for(settings: ModelSettings) -> WeightsSource:
    """The model settings' weights, checked as those settings say."""
    return resolve_weights(settings.weights, calibration_images=settings.calibration_images,
                           expected_sha256=settings.weights_sha256)

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from serve_app.imaging import image_files
from serve_app.launch.processes import process_name, processes
from serve_app.settings import SHARED_IMAGES

# What a Ray node and Serve's HTTP front leave behind when a test does not stop them.
CLUSTER_PROCESSES = ("raylet", "gcs_server", "haproxy")


def cluster_processes() -> set[int]:
    return {process.pid for process in processes()
            if process.state != "Z" and process_name(process.pid) in CLUSTER_PROCESSES}


def pytest_collection_modifyitems(session, config, items):
    """The quickstart's first run goes first: it builds the stand-in and the artifacts from scratch
    (as a user's first `make serve` does) and hands them to the session's cache, so the tests after
    it do not build them again."""
    items.sort(key=lambda item: item.path.name != "test_first_contact.py")


def pytest_sessionstart(session):
    session.config.cluster_processes_before = cluster_processes()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any test left a Ray node or an HAProxy running (and end them)."""
    deadline = time.monotonic() + 10
    while (left := cluster_processes() - session.config.cluster_processes_before) and time.monotonic() < deadline:
        time.sleep(0.5)
    killed = []
    for pid in sorted(left):
        name = process_name(pid)
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(f"{name} (pid {pid})")
        except ProcessLookupError:
            continue
    if killed:
        print(f"\nERROR: the tests left these processes running (now killed): {', '.join(killed)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def shared_images() -> list[Path]:
    images = image_files(SHARED_IMAGES)
    assert len(images) == 100, f"expected the 100 shared ImageNet JPEGs in {SHARED_IMAGES}"
    return images


@pytest.fixture(scope="session")
def standin_reference():
    """torchvision's own pipeline (weights.transforms() + resnet18) on the stand-in weights."""
    import torch
    from PIL import Image, ImageOps
    from torchvision.models import ResNet18_Weights, resnet18

    from serve_app.model.standin import standin_state_dict
    from serve_app.settings import ModelSettings

    settings = ModelSettings(weights="standin")
    model = resnet18()
    model.load_state_dict(standin_state_dict(settings.calibration_images, settings.cache_dir))
    model.eval()
    transforms = ResNet18_Weights.IMAGENET1K_V1.transforms()

    def probabilities(path: Path):
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        with torch.no_grad():
            return torch.softmax(model(transforms(image).unsqueeze(0)), dim=1)[0].numpy()

    return probabilities


@pytest.fixture(scope="session")
def standin_artifacts() -> Path:
    """The folder of TorchScript, ONNX and INT8 ONNX exported from the stand-in: the cache the
    services under test use, built if missing (tests that change artifacts change copies)."""
    from serve_app.model.artifacts import artifact_path
    from serve_app.model.weights import resolve_weights
    from serve_app.settings import ModelSettings

    return artifact_path(ModelSettings(weights="standin"), resolve_weights("standin"), "onnx").parent


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's services through a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (which downloads no browser of its own)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make install` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()

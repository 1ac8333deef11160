import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet34

from serve_app.errors import WeightsError
from serve_app.imaging import load_image
from serve_app.model import weights
from serve_app.model.backends import load_backend
from serve_app.model.network import build_network
from serve_app.model.standin import build_standin_state_dict, standin_state_dict
from serve_app.model.top_k import softmax
from serve_app.model.weights import file_sha256, resolve_weights, weights_for
from serve_app.settings import ModelSettings


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def standin_weights():
    return standin_state_dict()


def save_with_hash_name(state: dict, folder: Path) -> Path:
    draft = folder / "draft.pth"
    torch.save(state, draft)
    named = folder / f"resnet18-{file_sha256(draft)[:8]}.pth"
    draft.rename(named)
    return named


def test_missing_official_weights_say_how_to_provide_them(empty_hub):
    with pytest.raises(WeightsError) as error:
        resolve_weights("torchvision", allow_download=False)
    message = str(error.value)
    assert str(empty_hub / "resnet18-f37072fd.pth") in message
    assert "SERVE_APP_WEIGHTS" in message and "TORCH_HOME" in message


def test_failed_download_is_one_clear_error(empty_hub, monkeypatch):
    monkeypatch.setattr(weights, "OFFICIAL_URL", "http://127.0.0.1:9/resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match="could not be downloaded"):
        resolve_weights("torchvision")
    assert not any(empty_hub.glob("*")), "no partial download may be left behind"


def test_official_file_with_wrong_content_is_refused(empty_hub, standin_weights):
    empty_hub.mkdir(parents=True)
    torch.save(standin_weights, empty_hub / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match="corrupt or not what its name says"):
        resolve_weights("torchvision", allow_download=False)


def test_hash_named_file_is_checked_and_loaded(tmp_path, standin_weights, shared_images):
    path = save_with_hash_name(standin_weights, tmp_path)
    source = resolve_weights(str(path))
    assert source.kind == "file" and source.sha256 == file_sha256(path)
    network = build_network(source, ModelSettings(weights=str(path)))
    assert all(torch.equal(network.resnet.state_dict()[k], v) for k, v in standin_weights.items())


def test_renamed_file_with_mismatched_hash_is_refused(tmp_path, standin_weights):
    path = tmp_path / "resnet18-deadbeef.pth"
    torch.save(standin_weights, path)
    with pytest.raises(WeightsError, match="deadbeef"):
        resolve_weights(str(path))


def test_a_known_full_sha256_is_compared_whole(tmp_path, standin_weights):
    path = tmp_path / "mine.pth"  # no hash in the name: only weights_sha256 can say what it must be
    torch.save(standin_weights, path)
    digest = file_sha256(path)
    settings = ModelSettings(weights=str(path), weights_sha256=digest.upper())
    assert weights_for(settings).sha256 == digest
    other = digest[:8] + ("0" if digest[8] != "0" else "1") + digest[9:]  # same prefix, not the same file
    with pytest.raises(WeightsError, match="weights_sha256 setting expects"):
        weights_for(ModelSettings(weights=str(path), weights_sha256=other))


def test_pickled_objects_are_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"payload": np.dtype}, path)  # not loadable with weights_only=True
    with pytest.raises(WeightsError, match="not a loadable state dict"):
        build_network(resolve_weights(str(path)), ModelSettings(weights=str(path)))


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(resnet34().state_dict(), path)
    with pytest.raises(WeightsError, match="does not hold ResNet-18 weights"):
        build_network(resolve_weights(str(path)), ModelSettings(weights=str(path)))


def test_check_weights_command_prints_one_message_not_a_traceback(empty_hub):
    result = subprocess.run(
        [sys.executable, "-m", "serve_app", "check-weights", "--no-download"],
        capture_output=True, text=True, env={**__import__("os").environ, "SERVE_APP_WEIGHTS": "torchvision"},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: the official weights are not in")
    assert "Traceback" not in result.stderr


def test_standin_is_deterministic():
    """Built here, it equals the cached one (built by another process, usually another run)."""
    built, cached = build_standin_state_dict(), standin_state_dict()
    assert built.keys() == cached.keys() and all(torch.equal(built[k], cached[k]) for k in built)


def test_standin_answers_depend_on_the_image(shared_images):
    backend = load_backend(ModelSettings(weights="standin", device="cpu"), resolve_weights("standin"), threads=2)
    batch = np.stack([load_image(p.read_bytes(), max_pixels=10**8) for p in shared_images])
    probabilities = softmax(backend.infer(batch))
    assert len(set(probabilities.argmax(axis=1).tolist())) >= 30
    assert np.median(probabilities.max(axis=1)) > 0.05, "a sharpened stand-in is confident, not uniform"


def test_standin_is_reported_as_such():
    source = resolve_weights("standin")
    assert source.is_standin and source.describe()["standin"] is True and source.name == "standin"

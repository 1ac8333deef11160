"""Every backend answers like eager torch on the shared images; artifacts are checked before use."""

import json
import subprocess
import sys

import numpy as np
import pytest

from serve_app.imaging import load_image
from serve_app.launch.evaluate import probabilities as backend_probabilities
from serve_app.model.artifacts import ArtifactError, artifact_path
from serve_app.model.weights import resolve_weights
from serve_app.settings import ModelSettings


@pytest.fixture(scope="module")
def artifacts(standin_artifacts):
    return standin_artifacts


@pytest.fixture(scope="module")
def photos(shared_images):
    return np.stack([load_image(p.read_bytes(), max_pixels=10**8) for p in shared_images])


def probabilities(backend_name, photos, artifacts):
    settings = ModelSettings(weights="standin", device="cpu", artifacts_dir=str(artifacts))
    return backend_probabilities(settings, backend_name, photos, threads=2)


@pytest.mark.parametrize("backend_name", ["torchscript", "onnx"])
def test_backend_matches_eager_torch(backend_name, photos, artifacts):
    reference = probabilities("torch", photos, artifacts)
    served = probabilities(backend_name, photos, artifacts)
    assert np.abs(served - reference).max() <= 1e-4
    assert (np.argsort(-served, axis=1)[:, :3] == np.argsort(-reference, axis=1)[:, :3]).all()


def test_int8_agrees_with_eager_torch_on_top1(photos, artifacts):
    reference = probabilities("torch", photos, artifacts)
    served = probabilities("onnx-int8", photos, artifacts)
    agreement = (served.argmax(1) == reference.argmax(1)).mean()
    error = np.abs(served - reference)
    print(f"INT8 vs eager torch: top-1 agreement {agreement:.0%}, mean |dp| {error.mean():.2e}, max {error.max():.2e}")
    assert agreement >= 0.95
    assert error.mean() < 1e-3


def test_onnx_replica_never_imports_torch(artifacts):
    code = (
        "import sys; from serve_app.model.backends import load_backend; from serve_app.settings import ModelSettings;"
        "from serve_app.model.weights import resolve_weights;"
        f"s = ModelSettings(weights='standin', backend='onnx-int8', artifacts_dir={str(artifacts)!r});"
        "load_backend(s, resolve_weights('standin'), 1); sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_artifacts_from_other_weights_are_refused(artifacts, tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    manifest = json.loads((artifacts / "manifest.json").read_text())
    manifest["weights"]["sha256"] = "0" * 64
    (stale / "manifest.json").write_text(json.dumps(manifest))
    settings = ModelSettings(weights="standin", artifacts_dir=str(stale))
    with pytest.raises(ArtifactError, match="export them again"):
        artifact_path(settings, resolve_weights("standin"), "onnx")


def test_tampered_artifact_is_refused(artifacts, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifacts, copy)
    with open(copy / "resnet18.onnx", "ab") as f:
        f.write(b"\0")
    settings = ModelSettings(weights="standin", artifacts_dir=str(copy))
    with pytest.raises(ArtifactError, match="sha256"):
        artifact_path(settings, resolve_weights("standin"), "onnx")

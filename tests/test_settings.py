import os
import subprocess
import sys

import yaml

import pytest
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve_app.launch.harness import deployment, load_config
from serve_app.settings import (
    ALLOW_NULL_MODEL_ENV_VAR,
    AUTO_BACKENDS,
    BACKENDS,
    CPU_BACKENDS,
    AppSettings,
    BatchSettings,
    ModelSettings,
    resolve_device,
)

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_config_is_valid_for_ray_and_for_us(name):
    config = load_config(name)
    ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(config)
    app = config["applications"][0]
    assert app["import_path"] == "serve_app.app:build"
    settings = AppSettings.from_args(app["args"])
    classifier = deployment(config, "Classifier")
    batch = BatchSettings.model_validate(classifier["user_config"])
    assert classifier["max_ongoing_requests"] * settings.ingress.max_images_per_call >= 2 * batch.max_batch_size
    assert {d["name"] for d in app["deployments"]} == {"Ingress", "Classifier"}


def test_gpu_config_asks_for_gpus_and_big_batches():
    config = load_config("gpu.yaml")
    classifier = deployment(config, "Classifier")
    assert classifier["ray_actor_options"]["num_gpus"] > 0
    assert BatchSettings.model_validate(classifier["user_config"]).max_batch_size >= 64
    assert config["applications"][0]["args"]["model"]["device"] == "cuda"


def test_cpu_config_asks_for_no_gpu():
    config = load_config("cpu.yaml")
    assert deployment(config, "Classifier")["ray_actor_options"]["num_gpus"] == 0
    assert config["applications"][0]["args"]["model"]["device"] == "cpu"


def test_unknown_or_out_of_range_settings_are_rejected():
    with pytest.raises(ValidationError):
        AppSettings.from_args({"model": {"wieghts": "standin"}})
    with pytest.raises(ValidationError):
        AppSettings.from_args({"ingress": {"default_top_k": 0}})
    with pytest.raises(ValidationError):
        AppSettings.from_args({"model": {"backend": "tensorflow"}})
    with pytest.raises(ValidationError):
        BatchSettings.model_validate({"max_batch_size": 0})


def test_environment_overrides_the_weights_and_artifacts_settings(monkeypatch):
    monkeypatch.setenv("SERVE_APP_WEIGHTS", "standin")
    monkeypatch.setenv("SERVE_APP_ARTIFACTS", "/opt/serve_app/model/artifacts")
    model = AppSettings.from_args({"model": {"weights": "torchvision", "backend": "onnx-int8"}}).model
    assert (model.weights, model.artifacts_dir, model.backend) == ("standin", "/opt/serve_app/model/artifacts", "onnx-int8")


def test_builder_binds_the_ingress_over_a_classifier_with_the_validated_settings():
    from serve_app.app import build

    args = {"model": {"weights": "standin", "backend": "onnx"}, "ingress": {"max_image_pixels": 1000}}
    ingress = build(args)._bound_deployment
    classifier, settings = ingress.init_args
    assert ingress.name == "Ingress" and classifier._bound_deployment.name == "Classifier"
    assert settings == AppSettings.from_args(args)
    assert classifier._bound_deployment.init_args == (settings.model, settings.ingress.decode_limits), \
        "the replicas decode within the ingress's limits"


def test_ingress_side_never_imports_torch():
    code = "import sys, serve_app.app, serve_app.http.ingress; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_backend_named_in_settings_has_a_class_and_auto_picks_by_device():
    from serve_app.model.backends import REGISTRY, backend_class

    assert REGISTRY.keys() == BACKENDS.keys() and set(CPU_BACKENDS) < BACKENDS.keys()
    auto = ModelSettings(backend="auto")
    assert (auto.resolved_backend("cpu"), auto.resolved_backend("cuda")) == ("onnx-int8", "cuda-graphs")
    assert ModelSettings(backend="onnx").resolved_backend("cuda") == "onnx", "a named backend is kept"
    on_cpu = ModelSettings(backend="auto", device="cpu")
    assert on_cpu.resolved_backend("cuda") == "onnx-int8", "a configured device wins over the node's GPUs"
    assert backend_class(on_cpu.resolved_backend()).name == "onnx-int8"


def test_auto_device_is_cuda_only_with_a_gpu_and_never_mps():
    assert resolve_device("mps") == "mps" and resolve_device("cpu") == "cpu"
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_null_model_is_refused_unless_a_measurement_asks_for_it(monkeypatch):
    monkeypatch.delenv(ALLOW_NULL_MODEL_ENV_VAR, raising=False)
    with pytest.raises(ValidationError, match=f"measure the serving path alone. Set {ALLOW_NULL_MODEL_ENV_VAR}=1"):
        ModelSettings(backend="null")
    monkeypatch.setenv(ALLOW_NULL_MODEL_ENV_VAR, "yes")
    with pytest.raises(ValidationError):
        ModelSettings(backend="null")
    monkeypatch.setenv(ALLOW_NULL_MODEL_ENV_VAR, "1")
    assert ModelSettings(backend="null").resolved_backend("cpu") == "null"


def test_no_device_and_no_cpu_backend_list_picks_the_null_model():
    assert "null" not in CPU_BACKENDS and "null" not in AUTO_BACKENDS.values()
    assert [name for name, spec in BACKENDS.items() if spec.measurement_only] == ["null"]


def test_serving_a_null_model_config_without_the_switch_stops_at_once_saying_why(tmp_path):
    config = load_config("cpu.yaml")
    config["applications"][0]["args"]["model"]["backend"] = "null"
    path = tmp_path / "null.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != ALLOW_NULL_MODEL_ENV_VAR}
    run = subprocess.run([sys.executable, "-m", "serve_app", "serve", "--config", str(path)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"{path}: its args are not valid settings" in run.stderr and ALLOW_NULL_MODEL_ENV_VAR in run.stderr
    assert "Traceback" not in run.stderr and "starting a local Ray" not in run.stdout

"""The files users deploy with: KubeRay manifests rendered from configs/, and the Dockerfile."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version as installed_version

import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.launch.harness import REPO
from serve_app.launch.launcher import RAY_ENV

sys.path.insert(0, str(REPO / "k8s"))
import render  # noqa: E402  (k8s/render.py, a script)

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`

FLAVORS = ("cpu", "gpu")
K8S_VERSION = kubernetes_validate.latest_version()


def manifest(flavor: str) -> dict:
    return yaml.safe_load(render.manifest_path(flavor).read_text())


def pod_templates(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def test_committed_manifests_are_rendered_from_the_configs():
    result = subprocess.run([sys.executable, str(REPO / "k8s" / "render.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for flavor in FLAVORS:
        assert render.manifest_path(flavor).read_text() == render.render(flavor)


def test_a_changed_config_is_detected_as_drift(tmp_path, monkeypatch):
    fake_repo = tmp_path / "repo"
    (fake_repo / "configs").mkdir(parents=True)
    for flavor in FLAVORS:
        text = (REPO / "configs" / f"{flavor}.yaml").read_text()
        (fake_repo / "configs" / f"{flavor}.yaml").write_text(text.replace("max_batch_size: 16", "max_batch_size: 17"))
    monkeypatch.setattr(render, "REPO", fake_repo)
    assert render.render("cpu") != render.manifest_path("cpu").read_text()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_serve_config_in_the_manifest_is_the_config_file_and_valid(flavor):
    serve_config = yaml.safe_load(manifest(flavor)["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((REPO / "configs" / f"{flavor}.yaml").read_text())
    ServeDeploySchema.model_validate(serve_config)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_pod_templates_are_valid_kubernetes(flavor):
    rayservice = manifest(flavor)
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    for i, template in enumerate(pod_templates(rayservice)):
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": template}
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


def test_service_is_valid_kubernetes_and_selects_our_pods():
    service = yaml.safe_load((REPO / "k8s" / "service.yaml").read_text())
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    labels = pod_templates(manifest("cpu"))[0]["metadata"]["labels"]
    selector = {k: v for k, v in service["spec"]["selector"].items() if not k.startswith("ray.io/")}
    assert selector.items() <= labels.items()


def test_the_result_caches_redis_is_valid_kubernetes_and_evicts_as_a_cache_does():
    documents = list(yaml.safe_load_all((REPO / "k8s" / "redis.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    deployment, service = documents
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru" and args[args.index("--save") + 1] == ""
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "redis_url: redis://resnet18-result-cache:6379/0" in (REPO / "k8s" / "redis.yaml").read_text()


def test_invalid_pod_template_is_caught():
    broken = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
              "template": {"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": ["two"]}}}]}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_cluster_shape(flavor):
    cluster = manifest(flavor)["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs no replicas"
    for template in pod_templates(manifest(flavor)):
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        for name, value in RAY_ENV.items():
            assert env[name]["value"] == value, f"{name} is set on every Ray node as `serve_app serve` sets it"
        keys = env["SERVE_APP_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert keys == {"name": "serve-app-api-keys", "key": "keys", "optional": True}, "API keys come from a Secret"
    if flavor == "gpu":
        worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
        assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert worker["tolerations"] and worker["nodeSelector"]


def test_dockerfile_matches_the_package():
    from serve_app.__main__ import main  # noqa: F401  (the CLI the Dockerfile calls)
    from serve_app.settings import ARTIFACTS_ENV_VAR, CACHE_ENV_VAR, CALIBRATION_ENV_VAR

    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"ARG RAY_IMAGE=rayproject/ray:([\d.]+)-", dockerfile).group(1)
    assert base == ray.__version__, "the image's Ray must be the Ray the package pins"
    for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"Dockerfile copies {path}, which is not in the repository"
    for variable in (CACHE_ENV_VAR, CALIBRATION_ENV_VAR, ARTIFACTS_ENV_VAR, "TORCH_HOME", *RAY_ENV):
        assert re.search(rf"\b{variable}=", dockerfile), f"the image must set {variable}"
    commands = set(re.findall(r"python -m serve_app ([a-z-]+)", dockerfile))
    help_text = subprocess.run([sys.executable, "-m", "serve_app", "--help"], capture_output=True, text=True).stdout
    assert commands and all(command in help_text for command in commands)
    images = {c["image"].rsplit(":", 1)[1] for flavor in FLAVORS for t in pod_templates(manifest(flavor))
              for c in t["spec"]["containers"]}
    version = installed_version("serve-app")  # pyproject.toml's, as `make install` installed it
    tags = {f"{version}-{flavor}" for flavor in FLAVORS}
    assert images == tags, "manifests use the package's version as their image tags"
    built = set(re.findall(r"-t REGISTRY/serve-app:(\S+) ", (REPO / "README.md").read_text()))
    assert built == tags, "the README's build commands make those tags"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "serve_app" not in ignored and "pyproject.toml" not in ignored

"""deploy/kubernetes: valid against the Kubernetes API schemas (offline), and the properties the
deployment relies on: non-root, read-only, probes, resources, autoscaling, disruption budgets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelyard.config import Settings
from tests.deploy.sources import (
    KUBERNETES,
    find,
    manifest_files,
    manifests,
    pod_specs,
    yaml_documents,
)

# The oldest Kubernetes these manifests support (the preStop sleep action is on by default from
# 1.30) and the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
DATA_DIR = "/var/lib/modelyard/data"
CONTAINER_TMP = "/tmp"  # noqa: S108 - a mount point inside the container
VALID_SECRETS = {
    "MODELYARD_SECRET_KEY": "k" * 48,
    "MODELYARD_DATABASE_URL": "postgresql://modelyard:pw@db:5432/modelyard",
    "MODELYARD_REDIS_URL": "redis://:pw@redis:6379/0",
    "MODELYARD_S3_ACCESS_KEY_ID": "modelyard",
    "MODELYARD_S3_SECRET_ACCESS_KEY": "s3-secret",
    "MODELYARD_METRICS_TOKEN": "scrape-token",
}


def _ids(items: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    return [f"{path.name}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in items]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("path", "manifest"), manifests(), ids=_ids(manifests()))
def test_every_manifest_validates_against_the_kubernetes_schema(
    path: Path, manifest: dict[str, Any], version: str
) -> None:
    # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
    kubernetes_validate.validate(manifest, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(find("Deployment", "modelyard-serving"))
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_workload_runs_non_root_read_only_and_unprivileged() -> None:
    specs = dict(pod_specs())
    assert set(specs) == {
        "Deployment/modelyard-api",
        "Deployment/modelyard-serving",
        "Deployment/modelyard-worker",
        "Job/modelyard-migrate",
    }
    for where, pod in specs.items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] != 0, where
        assert context["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        # Service links would put MODELYARD_<SERVICE>_PORT=tcp://... into the settings' space.
        assert pod["enableServiceLinks"] is False, where
        for container in _containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where


def test_the_data_folder_and_tmp_are_writable_empty_dirs() -> None:
    for where, pod in pod_specs():
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in _containers(pod):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert env["MODELYARD_DATA_DIR"] == DATA_DIR, where
            assert mounts[DATA_DIR] in empty_dirs, where
            assert mounts[CONTAINER_TMP] in empty_dirs, where
            assert mounts[DATA_DIR] != mounts[CONTAINER_TMP], where


@pytest.mark.parametrize("name", ["modelyard-api", "modelyard-serving"])
def test_servers_are_probed_on_health_and_readiness(name: str) -> None:
    pod = find("Deployment", name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["MODELYARD_PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # /health/ready gives each dependency check 2 s.
    assert container["readinessProbe"]["timeoutSeconds"] > 2


def _quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit() -> None:
    for where, pod in pod_specs():
        for container in _containers(pod):
            resources = container["resources"]
            assert set(resources["requests"]) >= {"cpu", "memory"}, where
            limit = _quantity(resources["limits"]["memory"])
            assert limit >= _quantity(resources["requests"]["memory"]), where


def test_the_model_cache_fits_within_the_memory_limit() -> None:
    for name in ("modelyard-api", "modelyard-serving"):
        (container,) = find("Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        workers = int(env["MODELYARD_WORKERS"])
        cache = int(env["MODELYARD_MODEL_CACHE_MAX_BYTES"])
        assert workers * cache < _quantity(container["resources"]["limits"]["memory"]), name


def test_the_autoscaler_scales_the_serving_deployment_on_cpu() -> None:
    serving = find("Deployment", "modelyard-serving")
    hpa = find("HorizontalPodAutoscaler", "modelyard-serving")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": serving["apiVersion"],
        "kind": "Deployment",
        "name": serving["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] >= 2
    # An applied replica count would reset the autoscaler's on every `kubectl apply`.
    assert "replicas" not in serving["spec"]


@pytest.mark.parametrize("name", ["modelyard-api", "modelyard-serving"])
def test_a_disruption_budget_covers_each_deployment(name: str) -> None:
    deployment = find("Deployment", name)
    budget = find("PodDisruptionBudget", name)
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert _labels_match(selector, deployment["spec"]["template"]["metadata"]["labels"])
    others = [
        d for _, d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] != name
    ]
    assert not [
        d for d in others if _labels_match(selector, d["spec"]["template"]["metadata"]["labels"])
    ]


@pytest.mark.parametrize(
    ("name", "role"), [("modelyard-api", "api"), ("modelyard-serving", "serving")]
)
def test_each_service_selects_only_its_own_role(name: str, role: str) -> None:
    service = find("Service", name)
    deployment = find("Deployment", name)
    pod = deployment["spec"]["template"]
    assert _labels_match(service["spec"]["selector"], pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODELYARD_ROLE"] == role
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_the_worker_runs_batch_jobs_and_is_probed_on_its_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = find("Deployment", "modelyard-worker")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["modelyard", "worker"]
    assert "command" not in container, "keep the image's entrypoint (tini)"
    check = {"exec": {"command": ["modelyard-healthcheck", "worker"]}}
    for probe in ("startupProbe", "livenessProbe"):
        assert {"exec": container[probe]["exec"]} == check, probe
    # Nothing connects to a worker: no port, no readiness, no Service selecting it.
    assert "ports" not in container
    assert "readinessProbe" not in container
    services = [d for _, d in manifests() if d["kind"] == "Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert not [s for s in services if _labels_match(s["spec"]["selector"], labels)]
    # `modelyard worker` refuses to start without Redis.
    assert _settings_from(container, monkeypatch).redis_url
    env = {e["name"]: e["value"] for e in container["env"]}
    cache = int(env["MODELYARD_MODEL_CACHE_MAX_BYTES"])
    assert cache < _quantity(container["resources"]["limits"]["memory"])


def test_the_migrations_job_runs_modelyard_migrate_once() -> None:
    job = find("Job", "modelyard-migrate")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["modelyard", "migrate"]
    assert "command" not in container, "keep the image's entrypoint (tini)"
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1


def _settings_from(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Build Settings from what the container gets: envFrom first, then its own env."""
    config = find("ConfigMap", "modelyard-config")["data"]
    secret = find("Secret", "modelyard-secrets")["stringData"]
    sources = {"modelyard-config": config, "modelyard-secrets": secret}
    env: dict[str, str] = {}
    for ref in container["envFrom"]:
        kind = "configMapRef" if "configMapRef" in ref else "secretRef"
        name = ref[kind]["name"]
        assert name in sources, f"{kind} to {name}, which no manifest defines"
        env.update(sources[name])
    env.update(VALID_SECRETS)  # the example's placeholders, replaced as its header asks
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_every_container_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for where, pod in pod_specs():
        for container in _containers(pod):
            settings = _settings_from(container, monkeypatch)
            assert settings.is_production, where
            assert str(settings.data_dir) == DATA_DIR, where


def test_the_example_secret_holds_placeholders_the_server_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = find("Secret", "modelyard-secrets")
    assert set(secret["stringData"]) == set(VALID_SECRETS)
    for name, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, name
    monkeypatch.setenv("MODELYARD_ENV", "production")
    monkeypatch.setenv("MODELYARD_SECRET_KEY", secret["stringData"]["MODELYARD_SECRET_KEY"])
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings(_env_file=None)


def test_kustomization_applies_the_long_running_part_only() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((KUBERNETES / name).is_file() for name in listed)
    on_their_own = {"migrate-job.yaml", "secret.example.yaml", "ingress.example.yaml"}
    assert listed == {p.name for p in manifest_files()} - on_their_own
    images = {image["name"] for image in kustomization["images"]}
    for name in listed:
        for doc in yaml_documents(KUBERNETES / name):
            if doc["kind"] == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    assert container["image"].partition(":")[0] in images


def test_the_ingress_sends_predictions_to_serving_and_the_rest_to_api() -> None:
    ingress = find("Ingress", "modelyard")
    (rule,) = ingress["spec"]["rules"]
    routes = {
        p["path"]: (p["pathType"], p["backend"]["service"]["name"]) for p in rule["http"]["paths"]
    }
    assert routes == {
        "/api/v1/predict": ("Prefix", "modelyard-serving"),
        "/v2": ("Prefix", "modelyard-serving"),
        "/": ("Prefix", "modelyard-api"),
    }


def test_every_namespaced_manifest_names_the_namespace() -> None:
    (namespace,) = [d for _, d in manifests() if d["kind"] == "Namespace"]
    for path, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], path.name

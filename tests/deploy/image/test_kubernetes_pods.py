"""deploy/kubernetes's workloads run from the built image: the migrations Job, then the api,
serving and worker Deployments' containers with the ConfigMap, a Secret under the example's keys,
their env, args, user and group, read-only root, dropped capabilities, emptyDir volumes, memory
limits and grace periods; their startup, liveness and readiness probes as the kubelet runs them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.image import flow
from tests.deploy.image.helpers import Backends, record_memory, stop_all
from tests.deploy.image.podman import (
    Container,
    Spec,
    exec_argv,
    kubernetes_environment,
    kubernetes_options,
    one_off,
    probe_budget,
    run,
)
from tests.deploy.sources import find
from tests.support.servers import free_port

DEPLOYMENTS = {"api": "modelyard-api", "serving": "modelyard-serving", "worker": "modelyard-worker"}
SERVERS = ("api", "serving")
JOB_TIMEOUT_SECONDS = 300.0


@dataclass
class Pod:
    container: Container
    manifest: dict[str, Any]
    url: str | None

    def probe(self, kind: str) -> dict[str, Any] | None:
        probe: dict[str, Any] | None = self.manifest.get(kind)
        return probe


def _quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor / 2**20
    return float(value) / 2**20


@pytest.fixture(scope="module")
def sources(backends: Backends) -> dict[str, dict[str, str]]:
    """The ConfigMap as written and a Secret with the example's keys, filled in as its header
    asks (the backends' addresses are then set over them, see Backends.addresses)."""
    example = find("Secret", "modelyard-secrets")["stringData"]
    secret = {
        "MODELYARD_SECRET_KEY": backends.secret_key,
        "MODELYARD_DATABASE_URL": backends.database_url,
        "MODELYARD_REDIS_URL": backends.redis_url,
        "MODELYARD_S3_ACCESS_KEY_ID": "modelyard",
        "MODELYARD_S3_SECRET_ACCESS_KEY": secrets.token_urlsafe(24),
        "MODELYARD_METRICS_TOKEN": backends.metrics_token,
    }
    assert set(secret) == set(example)
    return {
        "modelyard-config": find("ConfigMap", "modelyard-config")["data"],
        "modelyard-secrets": secret,
    }


def _spec(
    kind: str, name: str, sources: dict[str, dict[str, str]], backends: Backends, prefix: str
) -> tuple[Spec, dict[str, Any], int | None]:
    pod = find(kind, name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    environment = kubernetes_environment(container, sources)
    ports = container.get("ports", [])
    port = free_port() if ports else None
    if ports:
        (declared,) = ports
        assert declared["containerPort"] == int(environment["MODELYARD_PORT"])
    overrides = backends.addresses(port)
    assert set(overrides) <= set(environment), set(overrides) - set(environment)
    assert "command" not in container, "the image's entrypoint (tini) is kept"
    spec = Spec(
        name=f"{prefix}{container['name']}",
        options=kubernetes_options(pod, container),
        environment={**environment, **overrides},
        command=list(container.get("args", [])),
        health=exec_argv(container.get("livenessProbe", {})),
    )
    return spec, container, port


@pytest.fixture(scope="module")
def migration(
    image: str, sources: dict[str, dict[str, str]], backends: Backends
) -> tuple[int, str]:
    spec, _, _ = _spec("Job", "modelyard-migrate", sources, backends, f"myt-{backends.run_id}-k8s-")
    return one_off(image, spec, JOB_TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def pods(
    image: str,
    migration: tuple[int, str],
    sources: dict[str, dict[str, str]],
    backends: Backends,
) -> Iterator[dict[str, Pod]]:
    assert migration[0] == 0, migration[1][-4000:]
    started: dict[str, Pod] = {}
    try:
        for role, deployment in DEPLOYMENTS.items():
            spec, manifest, port = _spec(
                "Deployment", deployment, sources, backends, f"myt-{backends.run_id}-k8s-"
            )
            url = f"http://127.0.0.1:{port}" if port else None
            started[role] = Pod(run(image, spec), manifest, url)
        for role, pod in started.items():
            _pass_startup_probe(role, pod)
        yield started
    finally:
        stop_all([pod.container for pod in started.values()])


def _pass_startup_probe(role: str, pod: Pod) -> None:
    probe = pod.probe("startupProbe")
    assert probe, role
    budget = probe_budget(probe)
    if "httpGet" in probe:
        assert pod.url
        flow.wait_http_ok(pod.url, probe["httpGet"]["path"], budget)
    else:
        pod.container.wait_healthy(budget)


@pytest.fixture(scope="module")
def account(pods: dict[str, Pod]) -> flow.Account:
    api = pods["api"]
    assert api.url
    return flow.admin(api.container, api.url, "admin@kubernetes.example.com")


@pytest.fixture(scope="module")
def deployed(pods: dict[str, Pod], account: flow.Account, iris_model: Path) -> dict[str, Any]:
    assert pods["api"].url
    return flow.upload_and_promote(pods["api"].url, account, "iris-k8s", iris_model)


def test_the_migrations_job_completes(migration: tuple[int, str]) -> None:
    code, output = migration
    assert code == 0, output


def test_every_pod_runs_as_its_security_context_says(pods: dict[str, Pod]) -> None:
    for role, pod in pods.items():
        deployment = find("Deployment", DEPLOYMENTS[role])
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        container = pod.container
        assert container.exec("id", "-u", check=True).stdout.strip() == str(context["runAsUser"])
        assert container.exec("id", "-g", check=True).stdout.strip() == str(context["runAsGroup"])
        status = container.exec("cat", "/proc/1/status", check=True).stdout
        assert "CapEff:\t0000000000000000" in status, role
        assert "NoNewPrivs:\t1" in status, role
        assert container.exec("touch", "/usr/local/probe").returncode != 0, role
        for mount in pod.manifest["volumeMounts"]:
            probe = f"{mount['mountPath']}/probe"
            assert container.exec("touch", probe).returncode == 0, (role, probe)


def test_every_probe_passes(pods: dict[str, Pod]) -> None:
    for role, pod in pods.items():
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = pod.probe(kind)
            if probe is None:
                continue
            if "httpGet" in probe:
                assert probe["httpGet"]["port"] == "http"
                assert pod.url
                with flow.http(pod.url) as client:
                    answer = client.get(probe["httpGet"]["path"])
                assert answer.status_code == 200, (role, kind, answer.text)
            else:
                result = pod.container.exec(*probe["exec"]["command"])
                assert result.returncode == 0, (role, kind, result.stderr)


def test_a_model_uploaded_through_api_predicts_and_runs_a_batch_job_on_the_worker(
    pods: dict[str, Pod], account: flow.Account, deployed: dict[str, Any]
) -> None:
    api, serving = pods["api"].url, pods["serving"].url
    assert api
    assert serving
    rows = flow.iris_rows(20)
    rest = flow.predict_rest(serving, account, "iris-k8s", rows)
    v2 = flow.predict_v2(serving, account, "iris-k8s", rows)
    labels = flow.batch_job(api, account, "iris-k8s", rows)

    expected = flow.expected_labels(rows)
    assert rest["predictions"] == expected
    assert [int(v) for v in flow.v2_output(v2, "predictions")] == expected
    assert labels == expected


def test_each_pod_under_a_small_load_stays_within_its_memory_request(
    pods: dict[str, Pod], account: flow.Account, deployed: dict[str, Any]
) -> None:
    api, serving = pods["api"].url, pods["serving"].url
    assert api
    assert serving
    rows = {"inputs": flow.iris_rows(1)}
    with flow.http(serving) as client:
        for _ in range(200):
            answer = client.post("/api/v1/predict/iris-k8s", headers=account.headers, json=rows)
            assert answer.status_code == 200
    with flow.http(api) as client:
        for _ in range(50):
            assert client.get("/api/v1/models", headers=account.headers).status_code == 200
    flow.batch_job(api, account, "iris-k8s", flow.iris_rows(150))
    for role, pod in pods.items():
        memory = pod.container.memory()
        resources = pod.manifest["resources"]
        request = _quantity(resources["requests"]["memory"])
        limit = _quantity(resources["limits"]["memory"])
        workers = pod.container.spec.environment.get("MODELYARD_WORKERS", "-")
        record_memory(
            f"kubernetes {role}",
            memory,
            f"workers={workers} request {request:.0f} MiB, limit {limit:.0f} MiB",
        )
        assert memory.rss_mib <= request, (role, memory)

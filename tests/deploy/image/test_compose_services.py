"""deploy/compose.yaml's Modelyard services run from the built image: `migrate` once, then api,
serving and worker with the file's environment, commands, read-only root, tmpfs, volume, security
options, stop grace period and health checks (read from the file, see podman.py)."""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from tests.deploy.image import flow
from tests.deploy.image.helpers import Backends, record_memory, stop_all
from tests.deploy.image.podman import (
    Container,
    Spec,
    compose_health,
    compose_options,
    one_off,
    podman,
    run,
)
from tests.deploy.sources import COMPOSE, Interpolation, dockerfile_stages, service_environment
from tests.support.servers import free_port

SERVERS = ("api", "serving")
MIGRATE_TIMEOUT_SECONDS = 300.0
# Requests in flight while serving is stopped, and the bound on each client's loop.
LOAD_CLIENTS = 4
LOAD_REQUESTS_PER_CLIENT = 150
SIGNAL_AFTER_ANSWERS = 100
CONTAINER_TMP_PROBE = "/tmp/probe"  # noqa: S108 - a file inside the container's tmpfs


@dataclass
class Stack:
    migrate: tuple[int, str]
    containers: dict[str, Container]
    urls: dict[str, str]
    volume_prefix: str


@pytest.fixture(scope="module")
def compose(compose_env: dict[str, str]) -> dict[str, Any]:
    """compose.yaml as `docker compose` reads it with the run's .env."""
    document: dict[str, Any] = Interpolation(compose_env).value(yaml.safe_load(COMPOSE.read_text()))
    return document


def compose_spec(
    compose: dict[str, Any], name: str, backends: Backends, volume_prefix: str, port: int | None
) -> Spec:
    service = compose["services"][name]
    environment = service_environment(service)
    overrides = backends.addresses(port)
    # Only values the file sets are replaced: nothing is added behind its back.
    assert set(overrides) <= set(environment), set(overrides) - set(environment)
    return Spec(
        name=f"{volume_prefix}{name}",
        options=compose_options(service, volume_prefix),
        environment={**environment, **overrides},
        command=list(service.get("command", [])),
        health=compose_health(service),
    )


def _start_budget(service: dict[str, Any]) -> float:
    """start_period plus interval x retries: when compose would call the service unhealthy."""
    check = service["healthcheck"]
    seconds = {k: float(str(check[k]).removesuffix("s")) for k in ("start_period", "interval")}
    return seconds["start_period"] + seconds["interval"] * int(check["retries"])


@pytest.fixture(scope="module")
def stack(image: str, compose: dict[str, Any], backends: Backends) -> Iterator[Stack]:
    prefix = f"myt-{backends.run_id}-compose-"
    migrate = one_off(
        image, compose_spec(compose, "migrate", backends, prefix, None), MIGRATE_TIMEOUT_SECONDS
    )
    assert migrate[0] == 0, f"migrate exited {migrate[0]}:\n{migrate[1][-4000:]}"
    urls: dict[str, str] = {}
    containers: dict[str, Container] = {}
    try:
        for name in (*SERVERS, "worker"):
            port = free_port() if name in SERVERS else None
            containers[name] = run(image, compose_spec(compose, name, backends, prefix, port))
            if port is not None:
                urls[name] = f"http://127.0.0.1:{port}"
        for name, container in containers.items():
            container.wait_healthy(_start_budget(compose["services"][name]))
        yield Stack(migrate, containers, urls, prefix)
    finally:
        stop_all(list(containers.values()))
        for volume in compose.get("volumes", {}):
            podman("volume", "rm", "--force", f"{prefix}{volume}", check=False)


@pytest.fixture(scope="module")
def account(stack: Stack) -> flow.Account:
    return flow.admin(stack.containers["api"], stack.urls["api"], "admin@compose.example.com")


@pytest.fixture(scope="module")
def deployed(stack: Stack, account: flow.Account, iris_model: Path) -> dict[str, Any]:
    return flow.upload_and_promote(stack.urls["api"], account, "iris", iris_model)


def test_migrate_runs_once_and_leaves_the_schema_at_the_newest_revision(
    stack: Stack, backends: Backends
) -> None:
    code, output = stack.migrate
    assert code == 0, output
    version = _query(backends, "SELECT version_num FROM alembic_version")
    assert version == _newest_revision()


def test_the_servers_run_as_the_image_user_on_a_read_only_root(stack: Stack) -> None:
    (user,) = dockerfile_stages()[-1].all("USER")
    uid = user.value[0].partition(":")[0]
    for name, container in stack.containers.items():
        assert container.exec("id", "-u", check=True).stdout.strip() == uid, name
        assert container.exec("touch", "/usr/local/probe").returncode != 0, name
        assert container.exec("touch", CONTAINER_TMP_PROBE).returncode == 0, name
        assert container.exec("touch", "/var/lib/modelyard/data/probe").returncode == 0, name
        status = container.exec("cat", "/proc/1/status", check=True).stdout
        assert "NoNewPrivs:\t1" in status, name


def test_every_health_check_compose_runs_passes(stack: Stack) -> None:
    for name, container in stack.containers.items():
        result = container.healthy()
        assert result.returncode == 0, (name, result.stderr)


def test_serving_answers_predictions_only_and_api_the_whole_api(
    stack: Stack, account: flow.Account, deployed: dict[str, Any]
) -> None:
    rows = {"inputs": flow.iris_rows(1)}
    with flow.http(stack.urls["api"]) as api, flow.http(stack.urls["serving"]) as serving:
        assert api.get("/api/v1/models", headers=account.headers).status_code == 200
        assert (
            api.post("/api/v1/predict/iris", headers=account.headers, json=rows).status_code == 200
        )
        assert serving.get("/api/v1/models", headers=account.headers).status_code == 404
        assert serving.get("/v2/health/ready").status_code == 200


def test_a_model_uploaded_through_api_predicts_through_serving_rest_and_v2(
    stack: Stack, account: flow.Account, deployed: dict[str, Any]
) -> None:
    rows = flow.iris_rows(5)
    rest = flow.predict_rest(stack.urls["serving"], account, "iris", rows)
    v2 = flow.predict_v2(stack.urls["serving"], account, "iris", rows)

    assert deployed["stage"] == "production"
    assert rest["predictions"] == flow.expected_labels(rows)
    assert [int(v) for v in flow.v2_output(v2, "predictions")] == flow.expected_labels(rows)


def test_a_batch_job_runs_on_the_worker_and_the_model_downloads(
    stack: Stack, account: flow.Account, deployed: dict[str, Any], iris_model: Path
) -> None:
    rows = flow.iris_rows(150)
    labels = flow.batch_job(stack.urls["api"], account, "iris", rows)
    downloaded = flow.download_model(stack.urls["api"], account, "iris", deployed["version"])

    assert labels == flow.expected_labels(rows)
    assert downloaded == iris_model.read_bytes()


def test_memory_of_each_service_under_a_small_load(
    stack: Stack, account: flow.Account, deployed: dict[str, Any]
) -> None:
    rows = flow.iris_rows(1)
    with flow.http(stack.urls["serving"]) as serving, flow.http(stack.urls["api"]) as api:
        for _ in range(200):
            answer = serving.post(
                "/api/v1/predict/iris", headers=account.headers, json={"inputs": rows}
            )
            assert answer.status_code == 200
        for _ in range(50):
            assert api.get("/api/v1/models", headers=account.headers).status_code == 200
    for name, container in stack.containers.items():
        memory = container.memory()
        workers = container.spec.environment.get("MODELYARD_WORKERS", "-")
        record_memory(f"compose {name}", memory, f"workers={workers}")
        assert memory.processes >= 1


def test_sigterm_during_load_loses_no_logged_prediction(
    stack: Stack, account: flow.Account, deployed: dict[str, Any], backends: Backends
) -> None:
    serving = stack.containers["serving"]
    answered: list[str] = []
    lock = threading.Lock()
    signalled = threading.Event()

    def client() -> None:
        rows = {"inputs": flow.iris_rows(1)}
        with flow.http(stack.urls["serving"]) as http:
            for _ in range(LOAD_REQUESTS_PER_CLIENT):
                try:
                    answer = http.post("/api/v1/predict/iris", headers=account.headers, json=rows)
                except httpx.TransportError:
                    return  # the server has closed: this client is done
                if answer.status_code != 200:
                    continue  # 503 while shutting down: not a prediction, nothing to log
                with lock:
                    answered.append(answer.json()["prediction_id"])
                    if len(answered) == SIGNAL_AFTER_ANSWERS and not signalled.is_set():
                        signalled.set()
                        serving.signal("TERM")

    with concurrent.futures.ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        for future in [pool.submit(client) for _ in range(LOAD_CLIENTS)]:
            future.result()
    assert signalled.is_set(), f"only {len(answered)} answers before the clients were done"
    code = serving.wait(
        timeout=float(serving.spec.options[serving.spec.options.index("--stop-timeout") + 1]) + 30
    )

    logged = _logged_ids(backends, answered)
    assert code == 0, serving.logs()[-4000:]
    assert sorted(set(answered) - logged) == []
    assert len(answered) >= SIGNAL_AFTER_ANSWERS


# --- the database, read directly -------------------------------------------------------------


def _query(backends: Backends, sql: str) -> Any:
    import asyncio

    async def fetch() -> Any:
        connection = await asyncpg.connect(backends.database_url)
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _logged_ids(backends: Backends, ids: list[str]) -> set[str]:
    import asyncio

    async def fetch() -> set[str]:
        connection = await asyncpg.connect(backends.database_url)
        try:
            rows = await connection.fetch(
                "SELECT id FROM predictions WHERE id = ANY($1::uuid[])",
                [uuid.UUID(i) for i in ids],
            )
        finally:
            await connection.close()
        return {str(row["id"]) for row in rows}

    return asyncio.run(fetch())


def _newest_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import modelyard.db

    migrations = Path(modelyard.db.__file__).parent / "migrations"
    config = Config()
    config.set_main_option("script_location", str(migrations))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head
    return head

"""deploy/compose.yaml: valid against the Compose Specification's JSON schema once interpolated
from deploy/.env.example, and the properties one host relies on: health, order, volumes and no
secret written into the file."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml

from modelyard.config import Settings
from tests.deploy.sources import (
    COMPOSE,
    ENV_EXAMPLE,
    Interpolation,
    MissingVariable,
    read_dotenv,
    service_environment,
)

# The schema of the Compose Specification (compose-spec/compose-spec, schema/compose-spec.json,
# Apache-2.0) as check-jsonschema vendors it for its compose hook: the file `docker compose`
# itself validates against.
COMPOSE_SCHEMA = "check_jsonschema.builtin_schemas.vendor"

SECRETS = {"MODELYARD_SECRET_KEY", "MODELYARD_METRICS_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"}  # fmt: skip
LONG_RUNNING = {"api", "serving", "worker", "postgres", "redis", "minio"}
ONE_SHOTS = {"migrate", "create-bucket"}
MODELYARD_SERVICES = {"api", "serving", "worker", "migrate"}
CONTAINER_TMP = "/tmp"  # noqa: S108 - a mount point inside the container
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b|^MC_HOST_")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """compose.yaml as written (anchors and merge keys resolved, variables not)."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


@pytest.fixture(scope="module")
def filled_env() -> dict[str, str]:
    """.env.example with its empty secrets filled in, as a user is asked to."""
    values = read_dotenv(ENV_EXAMPLE)
    for name in SECRETS:
        values[name] = f"generated-{name.lower()}-0123456789abcdef"
    return values


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], filled_env: dict[str, str]) -> dict[str, Any]:
    """compose.yaml as `docker compose` reads it with that .env."""
    document: dict[str, Any] = Interpolation(filled_env).value(raw)
    return document


def test_compose_file_validates_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = json.loads(resources.files(COMPOSE_SCHEMA).joinpath("compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_misspelt_key(compose: dict[str, Any]) -> None:
    schema = json.loads(resources.files(COMPOSE_SCHEMA).joinpath("compose-spec.json").read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["healthcheck"]["intreval"] = "10s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validators.validator_for(schema)(schema).validate(broken)


def test_compose_refuses_to_start_until_every_secret_is_set(raw: dict[str, Any]) -> None:
    example = read_dotenv(ENV_EXAMPLE)
    for secret in SECRETS:
        assert example[secret] == "", f"{secret} must be left empty in .env.example"
        others = {name: value or "set" for name, value in example.items() if name != secret}
        with pytest.raises(MissingVariable) as refused:
            Interpolation({**others, secret: ""}).value(raw)
        assert refused.value.name == secret


def test_every_variable_compose_reads_is_in_the_env_example(raw: dict[str, Any]) -> None:
    interpolation = Interpolation(dict.fromkeys(read_dotenv(ENV_EXAMPLE), "x"))
    interpolation.value(raw)
    example = set(read_dotenv(ENV_EXAMPLE))
    assert interpolation.read <= example, "document these in .env.example"
    assert example <= interpolation.read, "unused in compose.yaml"


def test_no_secret_is_written_into_the_compose_file(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        for variable, value in service_environment(service).items():
            if SECRET_NAME.search(variable):
                assert re.fullmatch(r".*\$\{[A-Z_]+(:?\?[^}]*)?\}.*", value), (name, variable)
            # Credentials inside URLs come from variables too.
            for userinfo in re.findall(r"://([^@/]*)@", value):
                password = userinfo.partition(":")[2]
                assert re.fullmatch(r"\$\{[^}]+\}", password), (name, variable)


def test_long_running_services_have_healthchecks_and_restart(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOTS
    for name in LONG_RUNNING:
        healthcheck = services[name]["healthcheck"]
        assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert services[name]["restart"] == "unless-stopped", name
    for name in ONE_SHOTS:
        assert services[name]["restart"] == "no", name


def test_servers_wait_for_migrations_the_bucket_and_healthy_backends(
    compose: dict[str, Any],
) -> None:
    for name in ("api", "serving", "worker"):
        depends_on = compose["services"][name]["depends_on"]
        assert depends_on == {
            "migrate": {"condition": "service_completed_successfully"},
            "create-bucket": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "minio": {"condition": "service_healthy"},
        }
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["modelyard", "migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    bucket = compose["services"]["create-bucket"]
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert bucket["command"][:2] == ["mb", "--ignore-existing"]


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    expected = {"postgres": "/var/lib/postgresql/data", "minio": "/data"}
    expected |= dict.fromkeys(("api", "serving", "worker"), "/var/lib/modelyard/data")
    for name, target in expected.items():
        volumes = dict(v.split(":", 1)[::-1] for v in compose["services"][name]["volumes"])
        assert volumes[target] in declared, name
    used = {v.split(":", 1)[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert used == declared


def test_the_servers_match_the_kubernetes_hardening(compose: dict[str, Any]) -> None:
    for name in ("api", "serving", "worker", "migrate"):
        service = compose["services"][name]
        assert service["read_only"] is True, name
        assert any(t.split(":")[0] == CONTAINER_TMP for t in service["tmpfs"]), name
        assert "no-new-privileges:true" in service["security_opt"], name


@pytest.mark.parametrize(("name", "role"), [("api", "api"), ("serving", "serving")])
def test_each_server_serves_its_role_on_its_published_port(
    compose: dict[str, Any], name: str, role: str
) -> None:
    service = compose["services"][name]
    env = service_environment(service)
    assert env["MODELYARD_ROLE"] == role
    (published,) = service["ports"]
    assert published.rsplit(":", 1)[1] == env["MODELYARD_PORT"]
    assert published.startswith("127.0.0.1:"), "listen on loopback unless BIND_ADDRESS says so"


def test_a_worker_runs_batch_jobs_from_redis_and_is_checked_by_its_heartbeat(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    assert worker["command"] == ["modelyard", "worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "modelyard-healthcheck", "worker"]
    assert "ports" not in worker
    # The heartbeat file is the worker's own: on its tmpfs, never on the shared data volume.
    env = service_environment(worker)
    assert "MODELYARD_WORKER_HEARTBEAT_FILE" not in env
    assert any(t.split(":")[0] == CONTAINER_TMP for t in worker["tmpfs"])
    assert env["MODELYARD_REDIS_URL"]  # without Redis a worker refuses to start


@pytest.mark.parametrize("name", sorted(MODELYARD_SERVICES))
def test_each_modelyard_service_environment_is_valid_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in service_environment(compose["services"][name]).items():
        monkeypatch.setenv(variable, value)
    settings = Settings(_env_file=None)
    assert settings.is_production
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.sqlalchemy_url.startswith("postgresql+asyncpg://modelyard:")
    assert settings.storage_url == "s3://modelyard/artifacts"

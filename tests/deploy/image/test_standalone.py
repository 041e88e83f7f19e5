"""The image on its own, as `docker run` starts it: the Dockerfile's command, user, environment
and health check serving the `all` role; and a missing or unusable secret key refused at once,
with a message saying what to set, by every command a deploy file runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.utils import canonicalize_name

from tests.deploy.image import flow
from tests.deploy.image.helpers import Backends, record_memory, stop_all
from tests.deploy.image.podman import Container, Spec, one_off, podman, run
from tests.deploy.locks import REPO, REQUIREMENTS, applicable, read_lock
from tests.deploy.sources import COMPOSE, Interpolation, dockerfile_stages
from tests.support.servers import free_port

REFUSAL_TIMEOUT_SECONDS = 120.0
COMMANDS = {
    "serve (the image's command)": [],
    "worker": ["modelyard", "worker"],
    "migrate": ["modelyard", "migrate"],
}
SECRETS = {
    "missing": (None, "MODELYARD_SECRET_KEY is required in production"),
    "the example's placeholder": ("REPLACE_ME", "MODELYARD_SECRET_KEY must be at least 32 bytes"),
}


@pytest.fixture(scope="module")
def settings(compose_env: dict[str, str], backends: Backends) -> dict[str, str]:
    """The settings every compose service shares (x-modelyard-environment), with the backends'
    addresses: what a user gives `docker run -e`. Role, host, port and workers stay the image's
    defaults (the port aside: the host network is shared here)."""
    raw = yaml.safe_load(COMPOSE.read_text())
    common: dict[str, str] = Interpolation(compose_env).value(raw["x-modelyard-environment"])
    for name in ("MODELYARD_HOST", "MODELYARD_PORT", "MODELYARD_DATA_DIR"):
        common.pop(name, None)
    return {**common, **backends.addresses()}


@pytest.fixture(scope="module")
def all_role(
    image: str, settings: dict[str, str], backends: Backends
) -> Iterator[tuple[Container, str]]:
    # `docker run ... modelyard migrate` first, as docs/operations/deploy.md says (a no-op after other modules).
    migrated = one_off(
        image,
        Spec(
            name=f"myt-{backends.run_id}-migrate",
            environment=settings,
            command=["modelyard", "migrate"],
        ),
        REFUSAL_TIMEOUT_SECONDS,
    )
    assert migrated[0] == 0, migrated[1]
    port = free_port()
    spec = Spec(
        name=f"myt-{backends.run_id}-all",
        environment={**settings, "MODELYARD_PORT": str(port)},
        health=_image_healthcheck(image),
    )
    container = run(image, spec)
    try:
        container.wait_healthy(_start_budget())
        yield container, f"http://127.0.0.1:{port}"
    finally:
        stop_all([container])


def _start_budget() -> float:
    """The Dockerfile HEALTHCHECK's start period + interval x retries, in seconds."""
    (healthcheck,) = dockerfile_stages()[-1].all("HEALTHCHECK")
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in healthcheck.flags)
    seconds = {k: float(flags[k].removesuffix("s")) for k in ("start-period", "interval")}
    return seconds["start-period"] + seconds["interval"] * int(flags["retries"])


def _image_config(image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The image's config and its health check (podman lists it beside the config)."""
    (info,) = json.loads(podman("image", "inspect", "--format", "json", image))
    config: dict[str, Any] = info["Config"]
    healthcheck: dict[str, Any] = info.get("Healthcheck") or config.get("Healthcheck") or {}
    return config, healthcheck


def _image_healthcheck(image: str) -> list[str]:
    test: list[str] = _image_config(image)[1].get("Test") or []
    assert test[:1] == ["CMD"], f"the image records no health check (build --format docker): {test}"
    return test[1:]


def test_the_image_records_the_dockerfiles_health_check_user_and_command(image: str) -> None:
    config, recorded = _image_config(image)
    final = dockerfile_stages()[-1]
    (healthcheck,) = final.all("HEALTHCHECK")
    (user,) = final.all("USER")
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert recorded["Test"] == list(healthcheck.value)
    assert config["User"] == user.value[0]
    assert [*config["Entrypoint"], *config["Cmd"]] == [*entrypoint.value, *cmd.value]


def test_the_all_role_serves_the_registry_and_predictions_from_one_container(
    all_role: tuple[Container, str], iris_model: Path, backends: Backends
) -> None:
    container, url = all_role
    account = flow.admin(container, url, "admin@all.example.com")
    flow.upload_and_promote(url, account, "iris-all", iris_model)
    rows = flow.iris_rows(3)
    rest = flow.predict_rest(url, account, "iris-all", rows)
    v2 = flow.predict_v2(url, account, "iris-all", rows)

    assert rest["predictions"] == flow.expected_labels(rows)
    assert [int(v) for v in flow.v2_output(v2, "predictions")] == flow.expected_labels(rows)
    assert container.exec("id", "-u", check=True).stdout.strip() == "10001"
    assert container.healthy().returncode == 0
    record_memory("docker run (role all)", container.memory(), "workers=1, image defaults")


_DIGEST_SOURCE = """
import hashlib, importlib, json, pathlib, sys
digests = {}
for name in sys.argv[1:]:
    root = pathlib.Path(importlib.import_module(name).__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\\0" + path.read_bytes())
    digests[name] = digest.hexdigest()
print(json.dumps(digests))
"""
PACKAGES = {
    "modelyard": REPO / "src" / "modelyard",
    "modelyard_client": REPO / "client" / "src" / "modelyard_client",
}


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_the_image_holds_this_checkouts_code_and_the_locked_versions(image: str) -> None:
    def inside(*argv: str) -> str:
        return podman("run", "--rm", "--entrypoint", "python3", image, *argv)

    digests = json.loads(inside("-c", _DIGEST_SOURCE, *PACKAGES))
    installed = {
        canonicalize_name(p["name"]): p["version"]
        for p in json.loads(inside("-m", "pip", "list", "--format", "json"))
    }
    locked = applicable(read_lock(REQUIREMENTS / "server.txt"))

    assert digests == {name: _digest(root) for name, root in PACKAGES.items()}, "a stale image"
    assert {n: installed.get(n) for n in locked} == {n: p.version for n, p in locked.items()}


@pytest.mark.parametrize("secret", SECRETS, ids=list(SECRETS))
@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_a_missing_or_unusable_secret_key_is_refused_at_once_with_a_clear_message(
    image: str, settings: dict[str, str], backends: Backends, command: str, secret: str
) -> None:
    value, message = SECRETS[secret]
    environment = {k: v for k, v in settings.items() if k != "MODELYARD_SECRET_KEY"}
    if value is not None:
        environment["MODELYARD_SECRET_KEY"] = value
    slug = "".join(c for c in f"{command}-{secret}" if c.isalnum())[:40]
    spec = Spec(
        name=f"myt-{backends.run_id}-{slug}", environment=environment, command=COMMANDS[command]
    )

    code, output = one_off(image, spec, REFUSAL_TIMEOUT_SECONDS)

    assert code == 2, output
    assert message in output
    assert "Traceback" not in output

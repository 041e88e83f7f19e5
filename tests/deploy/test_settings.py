"""Every `MODELYARD_*` variable the deploy files set or mention is a real setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.sources import (
    COMPOSE,
    DEPLOY,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    dockerfile_stages,
    is_setting,
    manifests,
    pod_specs,
    read_dotenv,
    service_environment,
    yaml_documents,
)

MENTION = re.compile(r"\bMODELYARD_[A-Z0-9_]*[A-Z0-9]")


def _set_by_compose() -> set[str]:
    (document,) = yaml_documents(COMPOSE)
    return {
        name
        for service in document["services"].values()
        for name in service_environment(service)
        if name.startswith("MODELYARD_")
    }


def _set_by_kubernetes() -> set[str]:
    names: set[str] = set()
    for _, doc in manifests():
        if doc["kind"] in {"ConfigMap", "Secret"}:
            names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    for _, pod in pod_specs():
        for container in pod["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
    return {name for name in names if name.startswith("MODELYARD_")}


def _set_by_dockerfile() -> set[str]:
    return {
        name
        for stage in dockerfile_stages()
        for name in stage.env()
        if name.startswith("MODELYARD_")
    }


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ("compose.yaml", _set_by_compose()),
        (".env.example", {n for n in read_dotenv(ENV_EXAMPLE) if n.startswith("MODELYARD_")}),
        ("kubernetes/", _set_by_kubernetes()),
        ("Dockerfile", _set_by_dockerfile()),
    ],
)
def test_every_modelyard_variable_a_deploy_file_sets_is_a_setting(
    where: str, names: set[str]
) -> None:
    assert names, f"found no MODELYARD_* variable in {where}: is the reader broken?"
    assert sorted(n for n in names if not is_setting(n)) == [], where


def _deploy_files() -> list[Path]:
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env")
    return [*files, DOCKERIGNORE]


@pytest.mark.parametrize("path", _deploy_files(), ids=lambda p: p.name)
def test_every_modelyard_variable_a_deploy_file_mentions_is_a_setting(path: Path) -> None:
    mentioned = set(MENTION.findall(path.read_text()))
    assert sorted(n for n in mentioned if not is_setting(n)) == []


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("MODELYARD_ROLE", True),
        ("MODELYARD_S3_ENDPOINT_URL", True),
        ("MODELYARD_S3__ENDPOINT_URL", False),  # the S3 settings are flat fields
        ("MODELYARD_IMAGE", False),
        ("MODELYARD_DATA_DIR__X", False),
        ("DATA_DIR", False),
    ],
)
def test_the_setting_check_knows_prefix_and_nesting(variable: str, expected: bool) -> None:
    assert is_setting(variable) is expected

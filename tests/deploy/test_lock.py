"""requirements/*.txt, the locks every install uses (`make install`, CI, deploy/Dockerfile): each
one pins, with hashes, exactly what its inputs need, so a change to a pyproject.toml without
`make lock` fails here, offline, in a second."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.locks import (
    LOCAL_PROJECTS,
    REQUIREMENTS,
    Check,
    Pin,
    applicable,
    build_requirements,
    read_inputs,
    read_lock,
)

# lock file -> the inputs it is compiled from
LOCKS = {
    "dev.txt": "dev.in",
    "test.txt": "test.in",
    "server.txt": "server.in",
    "client.txt": "client.in",
}
BUILD_LOCK = "build.txt"
# CUDA comes in through these (torch's default Linux wheels pull nvidia-* and triton).
CUDA_PREFIXES = ("nvidia-", "cuda-", "jax-cuda", "cupy-cuda")
CUDA_NAMES = {"triton", "pytorch-triton"}


def _lock(name: str) -> list[Pin]:
    return read_lock(REQUIREMENTS / name)


@pytest.mark.parametrize("name", [*LOCKS, BUILD_LOCK])
def test_every_line_of_a_lock_is_pinned_exactly_with_hashes(name: str) -> None:
    pins = _lock(name)  # refuses a line without ==
    assert pins
    assert [p.line for p in pins if not p.hashes] == []
    assert all(h.startswith("sha256:") for p in pins for h in p.hashes)
    # The projects of this repository are built from their folders, never locked to an index.
    assert not {p.name for p in pins} & set(LOCAL_PROJECTS)


@pytest.mark.parametrize(("lock", "inputs"), LOCKS.items())
def test_a_lock_holds_exactly_what_its_inputs_need_at_versions_they_accept(
    lock: str, inputs: str
) -> None:
    check = Check(applicable(_lock(lock)))
    problems = check.walk(read_inputs(REQUIREMENTS / inputs))
    assert problems == [], f"requirements/{lock} disagrees with pyproject.toml: run `make lock`"


def test_the_check_reports_a_requirement_the_lock_does_not_satisfy(tmp_path: Path) -> None:
    lock = applicable(_lock("server.txt"))
    fastapi = lock.pop(canonicalize_name("fastapi"))
    check = Check(lock)
    problems = check.walk(
        [*read_inputs(REQUIREMENTS / "server.in"), Requirement(f"starlette>{999}")]
    )
    assert any("needs fastapi" in p and "the lock lacks" in p for p in problems)
    assert any("needs starlette>999; the lock has starlette==" in p for p in problems)
    assert fastapi.version  # present before it was taken out


def test_the_check_reports_a_locked_package_nothing_requires() -> None:
    lock = applicable(_lock("client.txt"))
    lock |= applicable(_lock("server.txt"))
    problems = Check(lock).walk(read_inputs(REQUIREMENTS / "client.in"))
    assert "fastapi is locked but nothing requires it" in problems


@pytest.mark.parametrize("lock", ["server.txt", "client.txt"])
def test_the_image_and_client_locks_use_the_versions_ci_tests(lock: str) -> None:
    # Versions, not markers: a package that the image needs on one platform only (colorama, on
    # Windows) may be needed everywhere by a dev tool (mkdocs-material), unmarked in dev.txt.
    dev = {(p.name, p.version) for p in _lock("dev.txt")}
    subset = {(p.name, p.version) for p in _lock(lock)}
    assert subset - dev == set()


def test_the_test_lock_adds_to_the_dev_lock_without_changing_it() -> None:
    dev = {(p.name, p.version, str(p.marker)) for p in _lock("dev.txt")}
    test = {(p.name, p.version, str(p.marker)) for p in _lock("test.txt")}
    assert dev - test == set()


def test_the_build_lock_satisfies_both_projects_build_systems() -> None:
    build = applicable(_lock(BUILD_LOCK))
    for project in LOCAL_PROJECTS.values():
        for requirement in build_requirements(project):
            pin = build[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(pin.version), (project, pin.line)


@pytest.mark.parametrize("name", [*LOCKS, BUILD_LOCK])
def test_no_lock_pulls_a_cuda_build(name: str) -> None:
    for pin in _lock(name):
        assert not pin.name.startswith(CUDA_PREFIXES), pin.line
        assert pin.name not in CUDA_NAMES, pin.line
        if pin.name == "torch":
            assert pin.version.endswith("+cpu"), pin.line

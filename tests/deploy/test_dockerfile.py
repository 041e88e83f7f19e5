"""deploy/Dockerfile, parsed by BuildKit's parser: stages, user, compilers, health, command."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import Settings
from tests.deploy.sources import (
    DEPLOY,
    DOCKERIGNORE,
    REPO,
    Stage,
    dockerfile_stages,
    pod_specs,
    run_worker_healthcheck,
)

# Packages that bring a compiler or headers for building native code.
COMPILER_PACKAGES = {
    "build-essential", "gcc", "g++", "cpp", "cc", "c++", "clang", "make", "cmake", "gfortran",
    "rustc", "cargo", "golang", "libc6-dev", "python3-dev", "musl-dev",
}  # fmt: skip


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages()


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_the_image_is_built_in_stages_and_the_final_one_starts_afresh(
    stages: list[Stage], final: Stage
) -> None:
    assert len(stages) >= 2
    earlier = {stage.name for stage in stages[:-1]}
    assert final.base not in earlier, "the final stage must not inherit the builder's layers"
    assert final.base.startswith("python:3.11-slim")
    # The builder makes wheels; the final stage installs only those, never from an index.
    assert any("pip wheel" in run.value[0] for run in stages[0].all("RUN"))
    installs = [run for run in final.all("RUN") if "pip install" in run.value[0]]
    assert installs
    for run in installs:
        assert "--no-index" in run.value[0]
        assert any(flag.startswith("--mount=type=bind,from=builder") for flag in run.flags)


def test_the_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].value[0].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without the image's /etc/passwd.
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    # Nothing after the USER line switches back.
    assert final.commands.index(users[-1]) > max(
        final.commands.index(c) for c in final.commands if c.cmd in {"RUN", "COPY"}
    )
    for where, pod in pod_specs():
        assert pod["securityContext"]["runAsUser"] == int(uid), where
        assert pod["securityContext"]["runAsGroup"] == int(gid), where


def _apt_packages(run: str) -> set[str]:
    """Return the packages an `apt-get install` / `apk add` in a RUN line names."""
    packages: set[str] = set()
    words = shlex.split(run.replace("\\\n", " "))
    for i, word in enumerate(words):
        if word in {"install", "add"} and i and words[i - 1] in {"apt-get", "apt", "apk"}:
            for arg in words[i + 1 :]:
                if arg in {"&&", ";", "||"}:
                    break
                if not arg.startswith("-"):
                    packages.add(arg)
    return packages


def test_the_final_stage_installs_no_compiler(stages: list[Stage], final: Stage) -> None:
    final_packages = set().union(*(_apt_packages(r.value[0]) for r in final.all("RUN")))
    assert final_packages, "expected the runtime packages (libgomp1, tini) to be installed"
    assert not final_packages & COMPILER_PACKAGES
    assert not {p for p in final_packages if p.endswith("-dev")}
    # The check itself sees the builder's compilers.
    builder_packages = set().union(*(_apt_packages(r.value[0]) for r in stages[0].all("RUN")))
    assert builder_packages & COMPILER_PACKAGES


def test_the_healthcheck_runs_the_health_script_copied_from_deploy(final: Stage) -> None:
    (healthcheck,) = final.all("HEALTHCHECK")
    assert healthcheck.json
    assert healthcheck.value == ("CMD", "modelyard-healthcheck")
    copies = [c for c in final.all("COPY") if c.value[-1] == "/usr/local/bin/modelyard-healthcheck"]
    assert [c.value[0] for c in copies] == ["deploy/healthcheck.py"]
    assert "--chmod=0755" in copies[0].flags
    assert 'f"http://127.0.0.1:{port}/health"' in (DEPLOY / "healthcheck.py").read_text()


def _container_argv(final: Stage) -> list[str]:
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    # Exec form: signals reach the process, no shell of Docker's own in between.
    assert entrypoint.json
    assert cmd.json
    return [*entrypoint.value, *cmd.value]


def test_the_command_runs_modelyard_serve_with_settings_from_the_environment(
    final: Stage, tmp_path: Path
) -> None:
    argv = _container_argv(final)
    assert argv[:2] == ["tini", "--"]
    shell, flag, script = argv[2:]
    assert (shell, flag) == ("sh", "-c")
    assert script.startswith("exec modelyard serve "), "exec: the server replaces the shell"
    # Run the command as the container would, with a stand-in `modelyard` that prints its argv.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "modelyard"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)

    def serve_args(**overrides: str) -> list[str]:
        env = {**final.env(), **overrides, "PATH": f"{bin_dir}:/usr/bin:/bin"}
        done = subprocess.run(  # noqa: S603 - the Dockerfile's own command, a stand-in binary
            ["/bin/sh", flag, script], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.splitlines()

    assert serve_args() == ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]  # noqa: S104 - a container listens on every interface
    assert serve_args(MODELYARD_WORKERS="4", MODELYARD_PORT="9000")[-4:] == [
        "--port",
        "9000",
        "--workers",
        "4",
    ]


def test_the_image_environment_is_valid_settings(
    final: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = final.env()
    assert env["MODELYARD_ENV"] == "production"
    for name, value in env.items():
        if name.startswith("MODELYARD_"):
            monkeypatch.setenv(name, value)
    # Production refuses to start without a real key: the image ships none.
    with pytest.raises(ValueError, match="MODELYARD_SECRET_KEY is required"):
        Settings(_env_file=None)
    monkeypatch.setenv("MODELYARD_SECRET_KEY", "k" * 48)
    settings = Settings(_env_file=None)
    assert (settings.role, settings.port, settings.workers) == ("all", 8000, 1)
    assert str(settings.data_dir) == "/var/lib/modelyard/data"


# --- the health script -----------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []  # noqa: RUF012 - shared with the test through the class

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200, "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()
    thread.join()


def _run_healthcheck(port: int) -> int:
    env = {**os.environ, "MODELYARD_PORT": str(port), "HTTP_PROXY": "http://127.0.0.1:9"}
    return subprocess.run(  # noqa: S603 - our own interpreter and the repository's script
        [sys.executable, str(DEPLOY / "healthcheck.py")], env=env, capture_output=True, check=False
    ).returncode


def test_the_health_script_passes_when_health_answers_200(
    health_server: tuple[int, type[_Health]],
) -> None:
    port, handler = health_server
    assert _run_healthcheck(port) == 0
    assert handler.paths == ["/health"]


def test_the_health_script_fails_when_health_answers_503(
    health_server: tuple[int, type[_Health]],
) -> None:
    port, handler = health_server
    handler.status = 503
    assert _run_healthcheck(port) == 1


def test_the_health_script_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert _run_healthcheck(port) == 1


def test_the_worker_check_passes_on_a_fresh_heartbeat_and_fails_on_a_stale_or_missing_one(
    tmp_path: Path,
) -> None:
    heartbeat = tmp_path / "worker.heartbeat"
    missing = run_worker_healthcheck(heartbeat)
    heartbeat.touch()
    fresh = run_worker_healthcheck(heartbeat)
    two_minutes_ago = time.time() - 120
    os.utime(heartbeat, (two_minutes_ago, two_minutes_ago))
    stale = run_worker_healthcheck(heartbeat)

    assert (missing.returncode, fresh.returncode, stale.returncode) == (1, 0, 1)
    assert "no worker heartbeat" in missing.stderr
    assert "last heartbeat was" in stale.stderr


def test_the_health_script_refuses_an_unknown_mode() -> None:
    result = subprocess.run(  # noqa: S603 - our own interpreter and the repository's script
        [sys.executable, str(DEPLOY / "healthcheck.py"), "serving"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "usage" in result.stderr


# --- the build context -----------------------------------------------------------------------


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """Parse .dockerignore as Docker does: (is_exception, whole-path regex) in file order."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip().lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exception, re.compile(regex + r"\Z")))
    return rules


def _in_build_context(path: str) -> bool:
    """Tell whether Docker sends `path` to the builder: the last rule matching the path or one
    of its parent folders decides (moby's patternmatcher.MatchesOrParentMatches)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for exception, regex in _dockerignore_rules():
        if any(regex.match(prefix) for prefix in prefixes):
            included = exception
    return included


def test_the_build_context_holds_what_the_dockerfile_copies(stages: list[Stage]) -> None:
    for stage in stages:
        for copy in stage.all("COPY"):
            if any(flag.startswith("--from") for flag in copy.flags):
                continue
            for source in copy.value[:-1]:
                found = REPO / source
                if found.is_dir():  # a file inside stands for the folder
                    found = min(found.rglob("*.py"))
                probe = found.relative_to(REPO).as_posix()
                assert (REPO / probe).exists(), probe
                assert _in_build_context(probe), f"{probe} is copied but .dockerignore drops it"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "deploy/.env",
        "src/modelyard/.env",
        ".git/config",
        ".venv/bin/python",
        "data/modelyard.db",
        "data/secret_key",
        "tests/conftest.py",
        "bench/results/latest.md",
        "src/modelyard/__pycache__/app.cpython-311.pyc",
    ],
)
def test_the_build_context_leaves_out_secrets_and_local_state(path: str) -> None:
    assert not _in_build_context(path)

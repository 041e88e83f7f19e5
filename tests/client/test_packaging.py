"""One `modelyard` command from two distributions: the client owns the script, the server adds
its commands through the `modelyard.commands` entry point group."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from modelyard.serving.loader import SKOPS_TRUSTED
from modelyard_client.artifacts import SKOPS_TRUSTED as CLIENT_SKOPS_TRUSTED

REPO = Path(__file__).resolve().parents[2]
CLIENT_SRC = REPO / "client" / "src"
SERVER_ONLY = {"fastapi", "sqlalchemy", "uvicorn", "alembic", "onnxruntime", "asyncpg", "boto3"}


def pyproject(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def test_only_the_client_installs_the_modelyard_script() -> None:
    client, server = (
        pyproject(REPO / "client" / "pyproject.toml"),
        pyproject(REPO / "pyproject.toml"),
    )

    assert client["scripts"] == {"modelyard": "modelyard_client.cli:main"}
    assert "scripts" not in server
    assert server["entry-points"] == {"modelyard.commands": {"server": "modelyard.cli:register"}}
    assert any(str(d).startswith("modelyard-client") for d in server["dependencies"])


def test_the_client_depends_on_nothing_of_the_server() -> None:
    client = pyproject(REPO / "client" / "pyproject.toml")

    names = {
        str(d).split(">")[0].split("[")[0].split("=")[0].strip() for d in client["dependencies"]
    }
    assert names == {"httpx", "typer"}
    assert not names & SERVER_ONLY


def test_the_client_imports_no_deep_learning_library_until_such_a_model_is_logged() -> None:
    code = (
        "import sys, modelyard_client, modelyard_client.exporters; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'tensorflow', 'keras', 'tf2onnx', 'onnx', 'onnxruntime', 'numpy'}))"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(CLIENT_SRC)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert done.stdout.strip() == "[]"


def test_the_client_trusts_exactly_the_servers_skops_types() -> None:
    assert list(CLIENT_SKOPS_TRUSTED) == list(SKOPS_TRUSTED)


def _modelyard(tmp_path: Path, *args: str, plugin: str | None) -> subprocess.CompletedProcess[str]:
    """Run the client's `modelyard` entry function, with a stand-in distribution on the path
    that declares `plugin` as a modelyard.commands entry point."""
    paths = [str(CLIENT_SRC), str(REPO / "src")]
    if plugin is not None:
        dist = tmp_path / "standin-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: standin\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[modelyard.commands]\nstandin = {plugin}\n")
        paths.insert(0, str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", "from modelyard_client.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_an_installed_entry_point_adds_the_server_commands(tmp_path: Path) -> None:
    done = _modelyard(tmp_path, "--help", plugin="modelyard.cli:register")

    assert done.returncode == 0, done.stderr
    for name in ("serve", "migrate", "create-admin", "gc", "push", "predict", "login"):
        assert name in done.stdout
    version = _modelyard(tmp_path / "v", "version", plugin="modelyard.cli:register")
    assert "standin 1.0" in version.stdout


def test_a_broken_plugin_leaves_the_client_commands_working(tmp_path: Path) -> None:
    done = _modelyard(tmp_path, "version", plugin="nowhere.at_all:register")

    assert done.returncode == 0
    assert "warning: commands of nowhere.at_all:register not loaded" in done.stderr
    assert done.stdout.startswith("modelyard-client ")


def test_python_dash_m_modelyard_runs_both_sets_of_commands() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(CLIENT_SRC)])}
    done = subprocess.run(
        [sys.executable, "-m", "modelyard", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout
    assert "push" in done.stdout


def test_python_dash_m_modelyard_serves_even_without_the_client_installed(
    tmp_path: Path,
) -> None:
    # A stand-in package that fails to import, first on the path: a stale environment.
    (tmp_path / "modelyard_client").mkdir()
    (tmp_path / "modelyard_client" / "__init__.py").write_text("raise ImportError('stale')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO / "src")])}
    done = subprocess.run(
        [sys.executable, "-m", "modelyard", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "modelyard-client is not installed" in done.stderr
    assert "serve" in done.stdout


def test_every_extra_the_client_suggests_exists() -> None:
    """An error that says `pip install 'modelyard-client[x]'` names an extra that installs."""
    import re

    extras = set(pyproject(REPO / "client" / "pyproject.toml")["optional-dependencies"])
    source = "\n".join(p.read_text() for p in (CLIENT_SRC / "modelyard_client").rglob("*.py"))
    named = set(re.findall(r"_missing\(\"[\w-]+\", \"(\w+)\"\)", source))
    named |= set(re.findall(r"_require\(\"[\w.-]+\", \"(\w+)\"\)", source))
    named |= set(re.findall(r"modelyard-client\[(\w+)\]", source))
    named.add("ml")  # _missing's default

    assert named, "no suggested extra found: the patterns no longer match the client's code"
    assert named <= extras, f"suggested extras that do not exist: {sorted(named - extras)}"

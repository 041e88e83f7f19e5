"""`pip install ./client` in a fresh virtual environment: the SDK and the commands work there
against a live server, and no server dependency is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live import Login

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_SECONDS = 150

pytestmark = pytest.mark.venv


def _run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the test's own virtual environment and arguments
        args, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with only the client installed (pip's configured index)."""
    folder = tmp_path_factory.mktemp("client-venv")
    made = _run([sys.executable, "-m", "venv", str(folder)], env=dict(os.environ))
    assert made.returncode == 0, made.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    installed = _run(
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO / "client")],
        env=env,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    assert installed.returncode == 0, installed.stderr
    return folder


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MODELYARD_")
    }
    return {**keep, "MODELYARD_CLIENT_CONFIG": str(tmp_path / "credentials.json"), **extra}


def test_the_client_installs_without_any_server_dependency(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u, modelyard_client; "
        "print(modelyard_client.__version__); "
        "print([m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'onnxruntime', 'modelyard') "
        "if u.find_spec(m)])"
    )
    done = _run([str(venv / "bin" / "python"), "-c", probe], env=_env(tmp_path))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "[]"
    blocked = _run([str(venv / "bin" / "python"), "-c", "import fastapi"], env=_env(tmp_path))
    assert "No module named 'fastapi'" in blocked.stderr


def test_the_commands_run_against_a_live_server(
    venv: Path, login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    modelyard = str(venv / "bin" / "modelyard")
    env = _env(tmp_path)

    help_text = _run([modelyard, "--help"], env=env)
    assert help_text.returncode == 0, help_text.stderr
    assert "push" in help_text.stdout
    no_server = _run([modelyard, "serve"], env=env)  # the server is not installed here
    assert no_server.returncode == 2
    assert "No such command 'serve'" in no_server.stderr
    logged_in = _run([modelyard, "login", "--url", login.url, "--api-key", login.api_key], env=env)
    assert logged_in.returncode == 0, logged_in.stderr
    pushed = _run([modelyard, "push", str(iris_skops), "--name", "iris", "--json"], env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["version"] == 1
    rows = tmp_path / "rows.json"
    rows.write_text("[[5.1, 3.5, 1.4, 0.2]]")
    predicted = _run([modelyard, "predict", "iris", "--input", str(rows), "--json"], env=env)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["predictions"] == [0]
    unknown = _run([modelyard, "models", "show", "nope"], env=env)
    assert unknown.returncode == 1
    assert "404 Not Found" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_the_sdk_runs_against_a_live_server(
    venv: Path, login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    script = (
        "import sys; from modelyard_client import Client\n"
        "with Client() as c:\n"
        "    v = c.upload(sys.argv[1], 'iris')\n"
        "    print(c.predict('iris', [[5.1, 3.5, 1.4, 0.2]], version=v.version).predictions)\n"
    )
    env = _env(tmp_path, MODELYARD_URL=login.url, MODELYARD_API_KEY=login.api_key)

    done = _run([str(venv / "bin" / "python"), "-c", script, str(iris_skops)], env=env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0]"

"""The `modelyard` command: version, migrate, create-admin, maintain, and serve end to end."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from alembic.script import ScriptDirectory
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from modelyard import __version__
from modelyard.cli import app
from modelyard.db import migrate
from modelyard.db.tables import Base
from tests.serving import legit
from tests.support.live import make_login
from tests.support.servers import CHEAP_ARGON2, ServerProcess, environment, running, running_server

ADMIN_EMAIL = "a@b.co"
ADMIN_PASSWORD = "admin-password-1"

runner = CliRunner()


@pytest.fixture
def database_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI at a fresh data dir and a SQLite file in it (not created yet)."""
    data_dir = tmp_path / "data"
    path = data_dir / "modelyard.db"
    monkeypatch.setenv("MODELYARD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MODELYARD_DATABASE_URL", f"sqlite:///{path}")
    for name, value in CHEAP_ARGON2.items():
        monkeypatch.setenv(name, value)
    return path


@pytest.fixture
def migrated_database(database_file: Path) -> Path:
    database_file.parent.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(f"sqlite+aiosqlite:///{database_file}")
    return database_file


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def users(path: Path) -> list[tuple[str, int, str]]:
    """Return (email, is_admin, password_hash) of every user."""
    with sqlite3.connect(path) as conn:
        rows: list[tuple[str, int, str]] = conn.execute(
            "SELECT email, is_admin, password_hash FROM users ORDER BY email"
        ).fetchall()
    return rows


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["version"])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == __version__


def test_migrate_creates_the_tables_on_a_fresh_data_dir(database_file: Path) -> None:
    result = runner.invoke(app, ["migrate"])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"created the database schema at revision {migrate.head()}\n"
    assert table_names(database_file) >= set(Base.metadata.tables) | {"alembic_version"}


def test_migrate_says_what_it_did(database_file: Path) -> None:
    url = f"sqlite+aiosqlite:///{database_file}"
    database_file.parent.mkdir(parents=True, exist_ok=True)
    script = ScriptDirectory.from_config(migrate.alembic_config(url))
    head = migrate.head()
    previous = script.get_revision(head).down_revision
    assert isinstance(previous, str)
    migrate.upgrade(url, previous)

    upgraded = runner.invoke(app, ["migrate"])
    again = runner.invoke(app, ["migrate"])

    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout == f"migrated the database from revision {previous} to {head}\n"
    assert again.exit_code == 0, again.output
    assert again.stdout == f"database already at the latest revision {head}: nothing to migrate\n"
    assert migrate.current(url) == (head,)


def test_make_run_migrates_once_through_serve() -> None:
    planned = subprocess.run(
        ["make", "-n", "run"],  # noqa: S607 - make from the PATH, as a developer runs it
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = planned.splitlines()

    assert [line for line in lines if "bin/modelyard migrate" in line] == [], planned
    assert len([line for line in lines if "bin/modelyard serve" in line]) == 1, planned


def test_maintain_deletes_logged_predictions_past_retention(
    migrated_database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_PREDICTION_LOG_RETENTION_DAYS", "10")
    with sqlite3.connect(migrated_database) as conn:
        for days in (30, 11, 1):
            conn.execute(
                "INSERT INTO predictions (id, protocol, status, n_rows, created_at) "
                "VALUES (?, 'rest', 'success', 1, datetime('now', ?))",
                (uuid.uuid4().hex, f"-{days} days"),
            )

    result = runner.invoke(app, ["maintain"])

    assert result.exit_code == 0, result.output
    assert "raw rows deleted: 2" in result.stdout
    with sqlite3.connect(migrated_database) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone() == (1,)


def test_create_admin_creates_an_admin_with_an_argon2id_hash(
    migrated_database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", ADMIN_PASSWORD)

    result = runner.invoke(app, ["create-admin", "--email", ADMIN_EMAIL])

    assert result.exit_code == 0, result.output
    assert f"created admin {ADMIN_EMAIL}" in result.stdout
    [(email, is_admin, password_hash)] = users(migrated_database)
    assert email == ADMIN_EMAIL
    assert is_admin == 1
    assert password_hash.startswith("$argon2id$")
    assert ADMIN_PASSWORD not in password_hash


def test_create_admin_again_on_the_same_email_promotes(
    migrated_database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", ADMIN_PASSWORD)
    first = runner.invoke(app, ["create-admin", "--email", ADMIN_EMAIL])
    assert first.exit_code == 0, first.output

    result = runner.invoke(app, ["create-admin", "--email", ADMIN_EMAIL])

    assert result.exit_code == 0, result.output
    assert f"promoted admin {ADMIN_EMAIL}" in result.stdout
    [(email, is_admin, _)] = users(migrated_database)
    assert email == ADMIN_EMAIL
    assert is_admin == 1


def register(path: Path, email: str) -> None:
    """Register a non-admin account straight in the database, as anyone could through the API."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO users (id, email, password_hash, is_active, is_admin, created_at,"
            " updated_at) VALUES ('0123456789abcdef0123456789abcdef', ?, 'x', 1, 0,"
            " '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            (email,),
        )


def test_create_admin_refuses_to_promote_an_account_someone_registered(
    migrated_database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", ADMIN_PASSWORD)
    register(migrated_database, ADMIN_EMAIL)

    result = runner.invoke(app, ["create-admin", "--email", ADMIN_EMAIL])

    assert result.exit_code == 1
    assert "--promote-existing" in result.stderr
    assert users(migrated_database) == [(ADMIN_EMAIL, 0, "x")]


def test_create_admin_promotes_an_existing_account_when_told_to(
    migrated_database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", ADMIN_PASSWORD)
    register(migrated_database, ADMIN_EMAIL)

    result = runner.invoke(app, ["create-admin", "--email", ADMIN_EMAIL, "--promote-existing"])

    assert result.exit_code == 0, result.output
    assert f"promoted admin {ADMIN_EMAIL}" in result.stdout
    [(_, is_admin, password_hash)] = users(migrated_database)
    assert is_admin == 1
    assert password_hash.startswith("$argon2id$")


def test_create_admin_with_a_short_password_fails_and_creates_nothing(
    migrated_database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_ADMIN_PASSWORD", "abcde")

    result = runner.invoke(app, ["create-admin", "--email", ADMIN_EMAIL])

    assert result.exit_code != 0
    assert "at least 8 characters" in result.stderr
    assert users(migrated_database) == []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`modelyard serve` on a free port, answering /health."""
    with running_server(tmp_path) as server:
        yield server


def test_serve_answers_auth_flow_and_exits_cleanly_on_sigterm(server: ServerProcess) -> None:
    credentials = {"email": "ada@example.com", "password": "correct horse battery"}

    with httpx.Client(base_url=server.url, timeout=10) as client:
        registered = client.post("/api/v1/auth/register", json=credentials)
        tokens = client.post("/api/v1/auth/login", json=credentials)
        me = client.get(
            "/api/v1/auth/me",
            headers={"Authorization": f"Bearer {tokens.json().get('access_token')}"},
        )

    assert registered.status_code == 201, registered.text
    assert tokens.status_code == 200, tokens.text
    assert me.status_code == 200, me.text
    assert me.json()["email"] == credentials["email"]

    returncode = server.stop()

    log = server.log()
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "stopped" in events, log
    assert returncode == 0, log


def test_serve_in_development_logs_text_with_the_urls_and_migrates_once(tmp_path: Path) -> None:
    env = environment(tmp_path)
    del env["MODELYARD_LOG_FORMAT"]  # development's default
    with running(ServerProcess(tmp_path, (), env)) as server:
        server.wait_for("the started line", lambda: " started " in server.log())
        log = server.log()

    assert not [line for line in log.splitlines() if line.startswith("{")], log
    started = next(line for line in log.splitlines() if " started " in line)
    assert f"dashboard={server.url}/ " in started
    assert f"docs={server.url}/docs" in started
    assert log.count("created the database schema") == 1, log
    assert "migrated" not in log


def test_a_model_fitted_on_a_dataframe_predicts_without_a_feature_names_warning(
    server: ServerProcess, tmp_path: Path
) -> None:
    x, y = legit.iris()
    columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    fitted_on_names = LogisticRegression(max_iter=300).fit(pd.DataFrame(x, columns=columns), y)
    path = legit.write_skops(fitted_on_names, tmp_path / "named.skops")
    login = make_login(server.url)
    headers = {"X-API-Key": login.api_key}

    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        with path.open("rb") as file:
            uploaded = client.post(
                "/api/v1/models/upload", data={"name": "named"}, files={"file": file}
            )
        assert uploaded.status_code == 201, uploaded.text
        rows = [dict(zip(columns, row, strict=True)) for row in x[:3].tolist()]
        for body in ({"inputs": x[:3].tolist()}, {"inputs": rows}):
            predicted = client.post("/api/v1/predict/named", json=body)
            assert predicted.status_code == 200, predicted.text

    assert "feature names" not in server.log()

"""A live `modelyard serve` per test module (SQLite; `live_on_each_database` of tests/support/live
for modules that run on PostgreSQL too), an account and an API key on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import legit
from tests.support.live import Login, make_login
from tests.support.servers import ServerProcess, running_server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's tests (each test uses an account of its own)."""
    folder = tmp_path_factory.mktemp("live")
    with running_server(
        folder,
        secret_key="client-tests-secret-key-that-is-long-enough",
        auth_rate_limit_per_minute="0",
        predict_rate_limit_per_minute="0",
        max_upload_bytes=str(3 * 1024 * 1024),
        prediction_log_flush_ms="20",
    ) as server:
        yield server
        server.stop()


@pytest.fixture
def login(live: ServerProcess) -> Login:
    return make_login(live.url)


@pytest.fixture(scope="session")
def iris_skops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An iris logistic regression saved with skops."""
    return legit.write_skops(legit.iris_lr(), tmp_path_factory.mktemp("models") / "iris.skops")


@pytest.fixture(autouse=True)
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the stored login of every client test in its own folder, never the user's."""
    path = tmp_path / "config" / "credentials.json"
    monkeypatch.setenv("MODELYARD_CLIENT_CONFIG", str(path))
    return path

"""Where credentials come from, and the stored login's file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from modelyard_client import credentials
from modelyard_client.credentials import StoredLogin


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_URL", "http://env:1")
    monkeypatch.setenv("MODELYARD_API_KEY", "env-key")

    chosen = credentials.resolve("http://arg:2", api_key="arg-key")

    assert (chosen.url, chosen.api_key) == ("http://arg:2", "arg-key")
    assert chosen.headers == {"X-API-Key": "arg-key"}


def test_the_environment_wins_over_the_stored_login(
    monkeypatch: pytest.MonkeyPatch, config_file: Path
) -> None:
    credentials.save_login(StoredLogin(url="http://stored:3", api_key="stored-key"))
    monkeypatch.setenv("MODELYARD_API_KEY", "env-key")

    chosen = credentials.resolve()

    assert (chosen.url, chosen.api_key) == ("http://stored:3", "env-key")


def test_the_stored_key_goes_only_to_its_own_server(config_file: Path) -> None:
    credentials.save_login(StoredLogin(url="http://stored:3/", api_key="stored-key"))

    assert credentials.resolve().api_key == "stored-key"
    assert credentials.resolve("stored:3").api_key == "stored-key"
    assert credentials.resolve("http://elsewhere:4").api_key is None


def test_a_token_is_sent_as_a_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_TOKEN", "jwt")

    assert credentials.resolve("http://h").headers == {"Authorization": "Bearer jwt"}


def test_the_stored_login_is_0600_even_over_a_wider_file(config_file: Path) -> None:
    config_file.parent.mkdir(parents=True)
    config_file.write_text("{}")
    config_file.chmod(0o644)

    credentials.save_login(StoredLogin(url="http://h", api_key="k"))

    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert credentials.load_login() == StoredLogin(url="http://h", api_key="k")
    assert credentials.delete_login()
    assert credentials.load_login() is None


def test_the_default_folder_is_the_users_config_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODELYARD_CLIENT_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))

    assert credentials.config_path() == tmp_path / "modelyard" / "credentials.json"


def test_client_variables_are_not_server_settings() -> None:
    from modelyard.config import Settings

    for name in ("URL", "API_KEY", "TOKEN", "CLIENT_CONFIG"):
        assert name.lower() not in Settings.model_fields

"""Settings: the production secret key rules, the development key file, URLs and lists."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelyard.config import SECRET_KEY_FILE, Environment, Settings


def production(data_dir: Path, secret_key: str | None) -> Settings:
    return Settings(
        _env_file=None, env=Environment.PRODUCTION, data_dir=data_dir, secret_key=secret_key
    )


def test_production_without_secret_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="required in production"):
        production(tmp_path / "data", None)

    assert not (tmp_path / "data" / SECRET_KEY_FILE).exists()


@pytest.mark.parametrize("placeholder", ["change-me", "CHANGEME", "secret", " your-secret-key "])
def test_production_with_placeholder_secret_key_is_refused(
    tmp_path: Path, placeholder: str
) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        production(tmp_path / "data", placeholder)


def test_production_with_31_byte_secret_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        production(tmp_path / "data", "k" * 31)


def test_production_with_32_byte_secret_key_is_accepted(tmp_path: Path) -> None:
    settings = production(tmp_path / "data", "k" * 32)

    assert settings.is_production
    assert settings.secret == "k" * 32
    assert not (tmp_path / "data" / SECRET_KEY_FILE).exists()


def test_development_without_key_generates_one_into_a_private_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    settings = Settings(_env_file=None, data_dir=data_dir)

    key_file = data_dir / SECRET_KEY_FILE
    assert key_file.read_text() == settings.secret
    assert len(settings.secret.encode()) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in data_dir.iterdir()) == [SECRET_KEY_FILE]


def test_development_key_is_reused_on_the_same_data_dir(tmp_path: Path) -> None:
    first = Settings(_env_file=None, data_dir=tmp_path / "data")

    second = Settings(_env_file=None, data_dir=tmp_path / "data")

    assert second.secret == first.secret


def test_development_keys_differ_between_data_dirs(tmp_path: Path) -> None:
    first = Settings(_env_file=None, data_dir=tmp_path / "one")

    second = Settings(_env_file=None, data_dir=tmp_path / "two")

    assert second.secret != first.secret


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/modelyard", "postgresql+asyncpg://u:p@db:5432/modelyard"),
        ("postgres://u:p@db:5432/modelyard", "postgresql+asyncpg://u:p@db:5432/modelyard"),
        ("postgresql+asyncpg://u@db/modelyard", "postgresql+asyncpg://u@db/modelyard"),
        ("sqlite:////srv/modelyard.db", "sqlite+aiosqlite:////srv/modelyard.db"),
    ],
)
def test_database_url_gets_the_async_driver(tmp_path: Path, given: str, expected: str) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=given)

    assert settings.sqlalchemy_url == expected


def test_default_database_is_sqlite_inside_data_dir(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")

    expected = (tmp_path / "data" / "modelyard.db").resolve()
    assert settings.sqlalchemy_url == f"sqlite+aiosqlite:///{expected}"


def test_cors_origins_from_environment_are_split_on_commas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_CORS_ORIGINS", "http://a, http://b")

    settings = Settings(_env_file=None, data_dir=tmp_path / "data")

    assert settings.cors_origins == ["http://a", "http://b"]


def test_cors_origins_default_to_empty(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")

    assert settings.cors_origins == []


def test_process_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "ROLE": "serving",
        "HOST": "10.0.0.7",
        "PORT": "9000",
        "WORKERS": "3",
    }.items():
        monkeypatch.setenv(f"MODELYARD_{name}", value)

    settings = Settings(_env_file=None, data_dir=tmp_path / "data")

    assert (settings.role, settings.host, settings.port, settings.workers) == (
        "serving",
        "10.0.0.7",
        9000,
        3,
    )


@pytest.mark.parametrize(
    ("name", "value"), [("ROLE", "worker"), ("PORT", "0"), ("PORT", "65536"), ("WORKERS", "0")]
)
def test_process_settings_out_of_range_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"MODELYARD_{name}", value)

    with pytest.raises(ValidationError):
        Settings(_env_file=None, data_dir=tmp_path / "data")

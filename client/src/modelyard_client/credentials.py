"""Where the client's URL and credentials come from: arguments, environment, stored login.

The stored login is a JSON file in the user's config folder (`MODELYARD_CLIENT_CONFIG` names
another file), readable by its owner only: it holds an API key.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from modelyard_client.errors import ConfigurationError

URL_ENV = "MODELYARD_URL"
API_KEY_ENV = "MODELYARD_API_KEY"
TOKEN_ENV = "MODELYARD_TOKEN"  # noqa: S105 - a variable name, not a secret
CONFIG_ENV = "MODELYARD_CLIENT_CONFIG"
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class StoredLogin:
    """What `modelyard login` keeps: the server and an API key for it."""

    url: str
    api_key: str
    email: str | None = None
    api_key_id: str | None = None
    """Set when `login` made the key from an email and password (`logout` revokes it)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    url: str
    api_key: str | None = None
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The authentication header for these credentials (none without any)."""
        if self.api_key:
            return {"X-API-Key": self.api_key}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}


def config_path() -> Path:
    """The stored login's file: $MODELYARD_CLIENT_CONFIG, else the user's config folder."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    return Path(typer.get_app_dir("modelyard")) / "credentials.json"


def load_login(path: Path | None = None) -> StoredLogin | None:
    """Read the stored login, or None when there is none (or it is unreadable)."""
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
        return StoredLogin(
            url=str(data["url"]),
            api_key=str(data["api_key"]),
            email=data.get("email"),
            api_key_id=data.get("api_key_id"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cannot read the stored login {path}: {exc}") from exc


def save_login(login: StoredLogin, path: Path | None = None) -> Path:
    """Store the login, readable and writable by the current user only (0600)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the start (no window where another user could read the key), and
    # chmod-ed in case the file existed with wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(asdict(login), f, indent=2)
    return path


def delete_login(path: Path | None = None) -> bool:
    """Remove the stored login; tell whether there was one."""
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def normalize_url(url: str) -> str:
    """`host:8000` → `http://host:8000`, without a trailing slash."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url


def resolve(
    url: str | None = None, *, api_key: str | None = None, token: str | None = None
) -> Credentials:
    """Pick the URL and credentials: arguments, then MODELYARD_URL / MODELYARD_API_KEY /
    MODELYARD_TOKEN, then the stored login (only for the server it was made for)."""
    if api_key and token:
        raise ConfigurationError("give an API key or a token, not both")
    stored = load_login()
    chosen_url = url or os.environ.get(URL_ENV) or (stored.url if stored else None) or DEFAULT_URL
    chosen_url = normalize_url(chosen_url)
    if not api_key and not token:
        api_key = os.environ.get(API_KEY_ENV) or None
        token = None if api_key else (os.environ.get(TOKEN_ENV) or None)
    if not api_key and not token and stored and normalize_url(stored.url) == chosen_url:
        # Never send the stored key to a server other than the one it was made for.
        api_key = stored.api_key
    return Credentials(chosen_url, api_key=api_key, token=token)

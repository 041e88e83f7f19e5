"""Settings and service addresses of the test run: make_settings builds a test's Settings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from modelyard.config import Settings
from modelyard.serving import probehost

POSTGRES_ADMIN_URL = os.environ.get(
    "MODELYARD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_TEST_URL = os.environ.get("MODELYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256"
# One upload probe process for the run, as one host's workers share one: otherwise each test's
# app (each with its own data folder) would start its own and import scikit-learn in it.
PROBE_SOCKET = Path(tempfile.mkdtemp(prefix="modelyard-test-probe-")) / probehost.SOCKET_NAME

S3_TEST_BUCKET = "modelyard-test"
S3_TEST_CREDENTIALS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing"}


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    """Settings for a test: its own data dir, cheap password hashing, the test database."""
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "secret_key": TEST_SECRET_KEY,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8,
        "argon2_parallelism": 1,
        "log_format": "json",
        # Tests log in far more often than a person; the limit has tests of its own.
        "auth_rate_limit_per_minute": 0,
        "probe_socket": PROBE_SOCKET,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]

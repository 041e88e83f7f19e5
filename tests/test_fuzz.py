"""The whole HTTP API fuzzed: schemathesis against a live server, over every operation of the
OpenAPI document, with a user's credentials, for a bounded time.

Checked: no 5xx; every status code, content type, header and body as documented; unsupported
methods answer 405; operations refuse requests without (or with ignored) credentials. Not
checked: that every schema-valid request is accepted and every invalid one refused — our
validators are stricter than a schema can say (no control characters in file paths, expiries
in the future, cursors that came from `next`), and the path-parameter file routes overlap the
fixed ones (`DELETE /files/{path}` serves `/files/upload` too), so `Allow` can name a method of
another operation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.servers import running_server

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "missing_required_header",
    "ignored_auth",
)
# Operations that end the run's own credential (the rest of the run would be 401s), and the
# one that erases its account (and would leave nothing to fuzz).
ENDING_THE_CREDENTIAL = r"/api/v1/auth/(logout|logout-all|password)"
ERASING_THE_ACCOUNT = "DELETE /api/v1/auth/me"
# An event stream answers for minutes by design (tests/audit/test_live.py drives it).
STREAMS = r"/api/v1/events"
EXCLUDED = f"^({ENDING_THE_CREDENTIAL}|{STREAMS})$"
BUDGET_SECONDS = 75


def test_no_operation_answers_5xx_or_off_its_documented_shape(tmp_path: Path) -> None:
    settings = {"auth_rate_limit_per_minute": "0", "password_failures_per_account": "0"}
    with running_server(tmp_path, **settings) as server:
        credentials = {"email": "fuzz@example.com", "password": "fuzz-password-1"}
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/api/v1/auth/register", json=credentials).status_code == 201
            token = client.post("/api/v1/auth/login", json=credentials).json()["access_token"]
        run = subprocess.run(  # noqa: S603 - our own venv's schemathesis, fixed arguments
            [
                SCHEMATHESIS,
                "run",
                f"{server.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                ",".join(CHECKS),
                "--exclude-path-regex",
                EXCLUDED,
                "--exclude-name",
                ERASING_THE_ACCOUNT,
                "--max-examples",
                "10",
                "--max-time",
                str(BUDGET_SECONDS),
                "--seed",
                "20261129",
            ],
            capture_output=True,
            text=True,
            timeout=BUDGET_SECONDS + 120,
            cwd=tmp_path,
        )
        crashes = [
            line
            for line in server.log().splitlines()
            if line.startswith("{") and json.loads(line).get("event") == "unhandled_error"
        ]

    assert run.returncode == 0, run.stdout[-12_000:] + run.stderr[-2_000:]
    assert "generated" in run.stdout  # it ran operations, not just loaded the schema
    assert crashes == []

"""The HTTP edge: request ids, the X-Process-Time header and the JSON access log."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import factories
from tests.support.settings import make_settings

GENERATED_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def _forget_log_handler() -> Iterator[None]:
    """Drop the app's log handler after the test: it writes to a capture stream that closes."""
    yield
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "modelyard", False)]


def access_lines(stderr: str) -> list[dict[str, Any]]:
    """Return the access-log entries among the JSON log lines in `stderr`."""
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry.get("logger") == "modelyard.access"]


async def test_sane_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    request_id = "req-42_abc.DEF:7"

    response = await client.get("/health", headers={"X-Request-ID": request_id})

    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id


async def test_request_id_is_generated_when_none_is_sent(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert GENERATED_REQUEST_ID.fullmatch(response.headers["x-request-id"])


@pytest.mark.parametrize(
    "insane",
    ["x" * 129, "has space", 'has"quote', "has'quote", "semi;colon", "<script>"],
    ids=["too-long", "space", "double-quote", "single-quote", "semicolon", "angle-brackets"],
)
async def test_insane_request_id_is_replaced_with_a_generated_one(
    client: httpx.AsyncClient, insane: str
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": insane})

    assert response.status_code == 200
    assert response.headers["x-request-id"] != insane
    assert GENERATED_REQUEST_ID.fullmatch(response.headers["x-request-id"])


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/health", None, 200),
        ("GET", "/api/v1/no-such-thing", None, 404),
        ("POST", "/api/v1/auth/register", {}, 422),
    ],
    ids=["ok", "not-found", "invalid"],
)
async def test_process_time_header_is_on_every_response(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None, status: int
) -> None:
    response = await client.request(method, path, json=body)

    assert response.status_code == status
    assert float(response.headers["x-process-time"]) >= 0


@pytest.mark.usefixtures("_forget_log_handler", "engine")
async def test_access_log_line_carries_the_request_fields(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with factories.serve(make_settings(tmp_path, database_url)) as client:
        account = await factories.make_account(client)
        response = await client.get(
            "/api/v1/auth/me", headers={**account.headers, "X-Request-ID": "access-log-1"}
        )
    assert response.status_code == 200

    lines = [e for e in access_lines(capsys.readouterr().err) if e["request_id"] == "access-log-1"]

    assert len(lines) == 1
    (line,) = lines
    assert line["event"] == "request"
    assert line["method"] == "GET"
    assert line["route"] == "/api/v1/auth/me"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], int | float)
    assert line["duration_ms"] >= 0


@pytest.mark.usefixtures("_forget_log_handler")
async def test_access_log_names_the_route_template_not_the_raw_path(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = str(uuid.uuid4())
    async with factories.serve(make_settings(tmp_path, database_url)) as client:
        response = await client.patch(
            f"/api/v1/users/{user_id}", json={}, headers={"X-Request-ID": "access-log-2"}
        )
    assert response.status_code == 401

    lines = [e for e in access_lines(capsys.readouterr().err) if e["request_id"] == "access-log-2"]

    assert len(lines) == 1
    assert lines[0]["route"] == "/api/v1/users/{user_id}"
    assert lines[0]["method"] == "PATCH"
    assert lines[0]["status"] == 401
    assert user_id not in json.dumps(lines[0])


@pytest.mark.usefixtures("_forget_log_handler")
async def test_access_log_marks_an_unknown_path_unmatched(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with factories.serve(make_settings(tmp_path, database_url)) as client:
        response = await client.get("/no/such/path", headers={"X-Request-ID": "access-log-3"})
    assert response.status_code == 404

    lines = [e for e in access_lines(capsys.readouterr().err) if e["request_id"] == "access-log-3"]

    assert len(lines) == 1
    assert lines[0]["route"] == "unmatched"
    assert lines[0]["status"] == 404


async def test_a_client_that_goes_away_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    from starlette.requests import Request
    from starlette.types import Message

    from modelyard.observability.middleware import EdgeMiddleware

    async def reads_body(scope: Any, receive: Any, send: Any) -> None:
        await Request(scope, receive).body()

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    edge = EdgeMiddleware(reads_body, max_request_bytes=1024, max_upload_bytes=1024)
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b""}
    with caplog.at_level("INFO"):
        await edge(scope, receive, send)
    assert sent == []  # nobody to answer
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

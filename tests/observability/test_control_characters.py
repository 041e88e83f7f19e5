"""Control characters (NUL, ESC, line breaks, tab, DEL, C1) in a query string answer 422 at the
HTTP edge, naming the parameter, before any route runs and so before any query (#23, finding 14:
on PostgreSQL `GET /api/v1/events?action=a%00b` answered 200, then failed in the driver with the
SQL and its parameters in the log)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from modelyard.observability.middleware import control_character_parameter
from modelyard.state import AppState
from tests.support.factories import Account
from tests.support.problems import assert_problem


@pytest.fixture
def statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the app sends while the test runs."""
    state: AppState = app.state.modelyard
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(state.engine.sync_engine, "before_cursor_execute", record)
    yield sent
    event.remove(state.engine.sync_engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    ("url", "parameter"),
    [
        ("/api/v1/events?action=a%00b", "action"),
        ("/api/v1/audit?limit=5&action=auth.%00", "action"),
        ("/api/v1/audit?target_id=x%1b%5b31m", "target_id"),
        ("/api/v1/models?search=iris%0D%0AX-Injected:%201", "search"),
        ("/api/v1/experiments?tag=a%09b", "tag"),
        ("/api/v1/files?prefix=a%7Fb", "prefix"),
        ("/api/v1/predictions?model_id=%C2%85", "model_id"),
        ("/api/v1/audit?a%00b=1", "a\\x00b"),
        ("/models?q=a%00b", "q"),
    ],
)
async def test_a_control_character_in_a_query_parameter_answers_422_before_any_query(
    client: httpx.AsyncClient,
    user: Account,
    statements: list[str],
    caplog: pytest.LogCaptureFixture,
    url: str,
    parameter: str,
) -> None:
    with caplog.at_level(logging.INFO):
        response = await client.get(url, headers=user.headers)

    body = assert_problem(response, 422)
    assert body["errors"] == [
        {
            "loc": ["query", parameter],
            "msg": "control characters (NUL, tab, line breaks, ...) are not allowed",
            "type": "control_character",
        }
    ]
    assert statements == []  # not even the credential's check
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_v2_route_refuses_it_in_the_protocols_error_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v2/models/iris?x=%00")

    assert response.status_code == 422
    assert response.json() == {
        "error": "the request is not valid: query.x: control characters (NUL, tab, line "
        "breaks, ...) are not allowed"
    }


async def test_text_without_control_characters_passes(
    client: httpx.AsyncClient, user: Account
) -> None:
    for url in (
        "/api/v1/audit?action=caf%C3%A9",
        "/api/v1/audit?action=a+b",
        "/api/v1/models?search=%E2%80%8Biris",  # a zero-width space is a format character
        "/api/v1/files?prefix=%FF",  # not UTF-8: decoded as U+FFFD, as the routes see it
    ):
        response = await client.get(url, headers=user.headers)
        assert response.status_code == 200, (url, response.text)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        (b"", None),
        (b"action=auth.login&limit=5", None),
        (b"action=a\x00b", "action"),  # raw, as some clients send it
        (b"a=\x85", "a"),  # a raw byte the app decodes as latin-1: U+0085, a C1 control
        (b"a=%C3%A9&b=%0A", "b"),
        (b"a=%E2%80%8B", None),
    ],
)
def test_the_rule_reads_the_query_string_as_the_app_decodes_it(
    query: bytes, parameter: str | None
) -> None:
    assert control_character_parameter(query) == parameter

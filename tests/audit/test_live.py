"""`GET /api/v1/events`: the caller's events as Server-Sent Events, resumable by id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import update

from modelyard.audit import live, service
from modelyard.auth.service import Caller
from modelyard.db.tables import BatchJob, User
from modelyard.state import AppState
from tests.factories import Account, make_version
from tests.jobs.helpers import running_job
from tests.servers import running_server

# A bound, not a measurement: an event that has not arrived by then never will.
WAIT_SECONDS = 20


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.modelyard
    return state


async def caller_of(state: AppState, account: Account) -> Caller:
    async with state.sessions() as db:
        user = await db.get_one(User, uuid.UUID(account.id))
        db.expunge(user)
    return Caller(user, None)


def parse(message: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for line in message.decode().strip().split("\n"):
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields


async def next_event(stream: AsyncIterator[bytes]) -> dict[str, Any]:
    """The next message that is an event (not a retry hint or a keep-alive comment)."""
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            message = parse(await anext(stream))
            if "event" in message:
                message["data"] = orjson.loads(message["data"])
                return message


async def upload(client: httpx.AsyncClient, account: Account, name: str) -> None:
    response = await client.post(
        "/api/v1/files/upload", files={"file": (name, b"x")}, headers=account.headers
    )
    assert response.status_code == 201, response.text


async def test_a_stream_carries_the_callers_events_in_order(
    app: FastAPI, client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    state = state_of(app)
    async with state.sessions() as db:
        start = await service.head(db)
    stream = live.stream(state, await caller_of(state, user), service.AuditFilter(), start)
    assert await anext(stream) == b"retry: 2000\n\n"
    await upload(client, other_user, "theirs.txt")  # not the caller's: never streamed
    await upload(client, user, "a.txt")
    await upload(client, user, "b.txt")
    first, second = await next_event(stream), await next_event(stream)
    assert (first["event"], first["data"]["target_id"]) == ("file.uploaded", "a.txt")
    assert (second["event"], second["data"]["target_id"]) == ("file.uploaded", "b.txt")
    assert int(second["id"]) > int(first["id"]) > start
    assert first["data"]["seq"] == int(first["id"])
    await stream.aclose()

    # Resuming after the first event gives the second again, then what came since.
    resumed = live.stream(
        state, await caller_of(state, user), service.AuditFilter(), int(first["id"])
    )
    await upload(client, user, "c.txt")
    assert [(await next_event(resumed))["data"]["target_id"] for _ in range(2)] == [
        "b.txt",
        "c.txt",
    ]
    await resumed.aclose()


async def test_a_filtered_stream_and_an_admins(
    app: FastAPI, client: httpx.AsyncClient, user: Account, admin: Account
) -> None:
    state = state_of(app)
    stream = live.stream(
        state, await caller_of(state, admin), service.AuditFilter(action="file."), 0
    )
    await anext(stream)
    await client.post("/api/v1/auth/login", json={"email": user.email, "password": "wrong-one-1"})
    await upload(client, user, "seen-by-admin.txt")
    event = await next_event(stream)
    assert (event["event"], event["data"]["owner_id"]) == ("file.uploaded", user.id)
    await stream.aclose()


async def start_running_job(
    state: AppState, owner: Account, version: dict[str, Any], *, rows_total: int
) -> BatchJob:
    job = running_job(owner.id, version, rows_total=rows_total)
    async with state.sessions() as db:
        db.add(job)
        await db.commit()
    return job


async def count_rows(state: AppState, job: BatchJob, rows_done: int) -> None:
    async with state.sessions() as db:
        await db.execute(update(BatchJob).where(BatchJob.id == job.id).values(rows_done=rows_done))
        await db.commit()


async def test_a_stream_carries_the_progress_of_the_callers_running_jobs_only(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    other_user: Account,
    iris_skops: Path,
) -> None:
    state = state_of(app)
    mine = await start_running_job(
        state, user, await make_version(client, user, iris_skops), rows_total=300
    )
    theirs = await start_running_job(
        state, other_user, await make_version(client, other_user, iris_skops), rows_total=50
    )
    async with state.sessions() as db:
        start = await service.head(db)
    stream = live.stream(state, await caller_of(state, user), service.AuditFilter(), start)
    await anext(stream)

    # A running job is reported at once, then each time its row count moves.
    first = await next_event(stream)
    await count_rows(state, theirs, 25)
    await count_rows(state, mine, 100)
    second = await next_event(stream)
    await upload(client, user, "meanwhile.txt")  # audit rows and progress share the stream
    await count_rows(state, mine, 200)
    rest = [await next_event(stream), await next_event(stream)]
    await stream.aclose()

    assert "id" not in first  # not an audit row: Last-Event-ID stays on the log
    assert first["event"] == "batch_job.progress"
    assert first["data"] == {
        "id": str(mine.id),
        "status": "running",
        "model_id": str(mine.model_id),
        "model_name": "iris",
        "version": 1,
        "rows_done": 0,
        "rows_total": 300,
        "updated_at": first["data"]["updated_at"],
    }
    assert (second["event"], second["data"]["rows_done"]) == ("batch_job.progress", 100)
    assert sorted(e["event"] for e in rest) == ["batch_job.progress", "file.uploaded"]
    assert [e["data"]["rows_done"] for e in rest if "id" not in e] == [200]


async def test_progress_follows_the_action_filter_and_an_admin_sees_every_job(
    app: FastAPI, client: httpx.AsyncClient, user: Account, admin: Account, iris_skops: Path
) -> None:
    state = state_of(app)
    job = await start_running_job(
        state, user, await make_version(client, user, iris_skops), rows_total=10
    )
    files_only = live.stream(
        state, await caller_of(state, user), service.AuditFilter(action="file."), 0
    )
    everything = live.stream(
        state, await caller_of(state, admin), service.AuditFilter(action="batch_job."), 0
    )
    await anext(files_only)
    await anext(everything)

    seen_by_admin = await next_event(everything)
    await upload(client, user, "only-this.txt")
    # The file event comes first: a progress message would have come with the first poll.
    seen_by_user = await next_event(files_only)
    await files_only.aclose()
    await everything.aclose()

    assert (seen_by_admin["event"], seen_by_admin["data"]["id"]) == (
        "batch_job.progress",
        str(job.id),
    )
    assert seen_by_user["event"] == "file.uploaded"


def test_the_stream_over_http_resumes_with_last_event_id(tmp_path: Path) -> None:
    with running_server(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        email, password = "live@example.com", "live-password-1"
        assert (
            client.post(
                "/api/v1/auth/register", json={"email": email, "password": password}
            ).status_code
            == 201
        )
        token = client.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        def upload_file(name: str) -> None:
            response = client.post(
                "/api/v1/files/upload", files={"file": (name, b"x")}, headers=headers
            )
            assert response.status_code == 201, response.text

        def events(**extra: str) -> list[dict[str, Any]]:
            """The events of a stream from the start (after=0) or `Last-Event-ID`, until the
            first file upload event."""
            seen = []
            with client.stream(
                "GET", "/api/v1/events", headers={**headers, **extra}, timeout=WAIT_SECONDS
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                block: list[str] = []
                for line in response.iter_lines():
                    if line:
                        block.append(line)
                        continue
                    message = parse("\n".join(block).encode())
                    block = []
                    if "event" in message:
                        seen.append(message)
                        if message["event"] == "file.uploaded":
                            return seen
            return seen

        upload_file("one.txt")
        history = events(**{"Last-Event-ID": "0"})
        assert [e["event"] for e in history] == ["user.registered", "auth.login", "file.uploaded"]
        upload_file("two.txt")
        resumed = events(**{"Last-Event-ID": history[-1]["id"]})
        assert [orjson.loads(e["data"])["target_id"] for e in resumed] == ["two.txt"]
        refused = client.get("/api/v1/events", headers={**headers, "Last-Event-ID": "x"})
        assert refused.status_code == 422
        assert client.get("/api/v1/events").status_code == 401


def test_an_open_stream_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    with running_server(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        email, password = "drain@example.com", "drain-password-1"
        client.post("/api/v1/auth/register", json={"email": email, "password": password})
        token = client.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        ).json()["access_token"]
        with client.stream(
            "GET", "/api/v1/events", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status_code == 200
            # Streams last minutes; shutting down ends them instead of waiting for them (stop
            # fails past its bound otherwise).
            assert server.stop() == 0
            assert list(response.iter_lines()) == ["retry: 2000", ""]

"""`GET /api/v1/events`: the caller's events as Server-Sent Events, resumable by id; one poller
for every stream of a process, a cap per account, and streams that end with their credential."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from modelyard.audit import live, service
from modelyard.auth.service import Caller
from modelyard.changes.events import Action
from modelyard.db.tables import BatchJob, User
from modelyard.state import AppState
from tests.audit.sse import opened, served
from tests.jobs.helpers import running_job
from tests.support.factories import (
    Account,
    lifespan,
    login,
    make_account,
    make_api_key,
    make_version,
)
from tests.support.polling import wait_until
from tests.support.problems import assert_problem
from tests.support.servers import running_server
from tests.support.settings import make_settings
from tests.web.test_pages import PASSWORD, post_form

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


async def open_stream(
    state: AppState, who: Caller, filters: service.AuditFilter, after: int
) -> AsyncGenerator[bytes, None]:
    """A stream of `who` from after row `after`, as the route opens it (without HTTP)."""
    subscription = await state.live.open(
        who, live.Credential.of_account(who.user), filters, after=after, valid_until=None
    )
    return live.stream(state.live, subscription)


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
    stream = await open_stream(state, await caller_of(state, user), service.AuditFilter(), start)
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
    resumed = await open_stream(
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
    stream = await open_stream(
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
    stream = await open_stream(state, await caller_of(state, user), service.AuditFilter(), start)
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
    files_only = await open_stream(
        state, await caller_of(state, user), service.AuditFilter(action="file."), 0
    )
    everything = await open_stream(
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


# --- one poller for every stream of a process (#23, finding 5) ---------------------------------

# The feed's read of the log: every row after its cursor, for all streams (a stream's own read
# of what it missed also names its caller).
FEED_READ = re.compile(r"FROM audit_events\s+WHERE audit_events\.seq > \S+ ORDER BY", re.S)
JOBS_READ = re.compile(r"FROM batch_jobs\s+WHERE batch_jobs\.status = ", re.S)


async def test_one_poll_reads_the_log_and_the_running_jobs_once_for_every_stream(
    app: FastAPI,
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    user: Account,
    other_user: Account,
    admin: Account,
    iris_skops: Path,
) -> None:
    state = state_of(app)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(state.engine.sync_engine, "before_cursor_execute", record)
    job = await start_running_job(
        state, user, await make_version(client, user, iris_skops), rows_total=10
    )
    assert not state.live.running  # nothing polls before a stream opens
    async with state.sessions() as db:
        start = await service.head(db)
    watchers = [user, user, other_user, admin]
    streams = [
        await open_stream(state, await caller_of(state, who), service.AuditFilter(), start)
        for who in watchers
    ]
    for stream in streams:
        await anext(stream)

    await upload(client, user, "seen.txt")
    seen = [
        sorted(
            (e["event"], e["data"].get("target_id") or e["data"].get("id"))
            for e in [await next_event(stream), await next_event(stream)]
        )
        for stream in (streams[0], streams[1], streams[3])
    ]
    await upload(client, other_user, "theirs.txt")
    theirs = await next_event(streams[2])
    await wait_until(lambda: state.live.polls >= 3)
    for stream in streams:
        await stream.aclose()
    await wait_until(lambda: not state.live.running)
    event.remove(state.engine.sync_engine, "before_cursor_execute", record)

    expected = [("batch_job.progress", str(job.id)), ("file.uploaded", "seen.txt")]
    assert seen == [expected, expected, expected]
    assert (theirs["event"], theirs["data"]["target_id"]) == ("file.uploaded", "theirs.txt")
    # One read of the log, and one of the running jobs, per poll for four streams together.
    assert len([s for s in statements if FEED_READ.search(s)]) == state.live.polls
    assert len([s for s in statements if JOBS_READ.search(s)]) == state.live.polls
    assert not state.live.streams
    assert not state.live.per_account


async def test_a_stream_carries_what_its_caller_did_and_what_concerns_its_account(
    app: FastAPI, user: Account, other_user: Account
) -> None:
    state = state_of(app)
    me, them = uuid.UUID(user.id), uuid.UUID(other_user.id)
    async with state.sessions() as db:
        start = await service.head(db)
    mine = await open_stream(state, await caller_of(state, user), service.AuditFilter(), start)
    theirs = await open_stream(
        state, await caller_of(state, other_user), service.AuditFilter(), start
    )
    await anext(mine)
    await anext(theirs)

    for name, owner, actor in [
        ("model.done_by_me", them, me),  # both: one did it, the other's thing
        ("model.nobodys", None, None),  # neither
        ("model.mine", me, None),
        ("model.theirs", them, None),
    ]:
        await state.audit_log.append(
            Action(name=name, target_type="model", owner_id=owner, actor_user_id=actor)
        )
    seen_by_me = [(await next_event(mine))["event"] for _ in range(2)]
    seen_by_them = [(await next_event(theirs))["event"] for _ in range(2)]
    await mine.aclose()
    await theirs.aclose()

    assert seen_by_me == ["model.done_by_me", "model.mine"]
    assert seen_by_them == ["model.done_by_me", "model.theirs"]


async def test_a_key_limited_to_a_model_follows_the_progress_of_that_models_jobs_only(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    state = state_of(app)
    other_model = await start_running_job(
        state, user, await make_version(client, user, iris_skops, name="other"), rows_total=5
    )
    iris = await start_running_job(
        state, user, await make_version(client, user, iris_skops), rows_total=7
    )
    account = await caller_of(state, user)
    limited = Caller(account.user, uuid.uuid4(), None, frozenset({"read"}), frozenset({"iris"}))
    async with state.sessions() as db:
        start = await service.head(db)
    stream = await open_stream(state, limited, service.AuditFilter(), start)
    await anext(stream)

    first = await next_event(stream)
    # The other model's job came with the same poll, had the key seen it: the upload is next.
    await upload(client, user, "after.txt")
    second = await next_event(stream)
    await stream.aclose()

    assert other_model.created_at < iris.created_at  # the other job is the older: first read
    assert (first["event"], first["data"]["id"]) == ("batch_job.progress", str(iris.id))
    assert second["event"] == "file.uploaded"


def test_a_stream_whose_client_does_not_read_ends_instead_of_queueing_without_bound() -> None:
    user = User(id=uuid.uuid4(), email="slow@example.com", password_hash="x", is_admin=False)
    subscription = live.Subscription(
        Caller(user, None),
        live.Credential.of_account(user),
        service.AuditFilter(),
        after=0,
        joined=0,
        valid_until=None,
    )
    for seq in range(1, live.MAX_QUEUED + 1):
        subscription.push(seq, b"data: x\n\n")
    assert subscription.ended is None

    subscription.push(live.MAX_QUEUED + 1, b"data: x\n\n")

    assert subscription.ended == "the client fell behind"
    assert subscription.next() is None  # what waited is dropped; the client resumes by id


# --- a cap on the streams of one account (#23, finding 5) --------------------------------------


@pytest.fixture
async def capped_app(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(tmp_path, database_url, live_events_streams_per_account=2))
    async with lifespan(app):
        yield app


async def test_streams_past_the_accounts_limit_answer_429_and_others_are_not_held_back(
    capped_app: FastAPI,
) -> None:
    async with served(capped_app) as http:
        user, other = await make_account(http), await make_account(http)
        async with opened(http, user.headers), opened(http, user.headers) as second:
            refused = await http.get("/api/v1/events", headers=user.headers)
            async with opened(http, other.headers) as others:
                await upload(http, other, "theirs.txt")
                assert (await others.event("file.uploaded"))["data"]["target_id"] == "theirs.txt"
            # Its streams still carry what happens.
            await upload(http, user, "mine.txt")
            assert (await second.event("file.uploaded"))["data"]["target_id"] == "mine.txt"
        # A closed stream gives its place back.
        await wait_until(lambda: not state_of(capped_app).live.per_account.get(uuid.UUID(user.id)))
        async with opened(http, user.headers):
            pass

    body = assert_problem(refused, 429)
    assert body["type"].endswith("/too-many-event-streams")
    assert int(refused.headers["retry-after"]) >= 1


# --- a stream ends with its credential (#23, finding 9) ----------------------------------------

ME = "/api/v1/auth/me"


async def revoke_key(http: httpx.AsyncClient, account: Account, name: str) -> None:
    listed = (await http.get("/api/v1/api-keys", headers=account.headers)).json()["items"]
    [key_id] = [k["id"] for k in listed if k["name"] == name]
    response = await http.delete(f"/api/v1/api-keys/{key_id}", headers=account.headers)
    assert response.status_code == 204, response.text


async def test_a_stream_ends_when_its_api_key_is_revoked_and_another_keys_goes_on(
    app: FastAPI,
) -> None:
    async with served(app) as http:
        user = await make_account(http)
        revoked = await make_api_key(http, user, "revoked")
        kept = await make_api_key(http, user, "kept")
        async with (
            opened(http, {"X-API-Key": revoked}) as ending,
            opened(http, {"X-API-Key": kept}) as going_on,
        ):
            await revoke_key(http, user, "revoked")

            await ending.end()
            await upload(http, user, "still-heard.txt")
            assert (await going_on.event("file.uploaded"))["data"]["target_id"] == "still-heard.txt"
        assert (await http.get(ME, headers={"X-API-Key": revoked})).status_code == 401


async def test_a_stream_ends_when_its_session_signs_out_and_another_sessions_goes_on(
    app: FastAPI,
) -> None:
    async with served(app) as http:
        user = await make_account(http)
        elsewhere = await second_session(http, user)
        async with (
            opened(http, user.headers) as ending,
            opened(http, elsewhere.headers) as going_on,
        ):
            response = await http.post(
                "/api/v1/auth/logout",
                json={"refresh_token": user.refresh_token},
                headers=user.headers,
            )
            assert response.status_code == 204, response.text

            await ending.end()
            await upload(http, elsewhere, "still-heard.txt")
            assert (await going_on.event("file.uploaded"))["data"]["target_id"] == "still-heard.txt"


async def second_session(http: httpx.AsyncClient, account: Account) -> Account:
    """`account` signed in once more (another device)."""
    tokens = await login(http, account.email, account.password)
    return replace(
        account, access_token=tokens["access_token"], refresh_token=tokens["refresh_token"]
    )


async def test_a_password_change_ends_the_accounts_token_and_key_streams(app: FastAPI) -> None:
    async with served(app) as http:
        user = await make_account(http)
        key = await make_api_key(http, user)
        async with (
            opened(http, user.headers) as by_token,
            opened(http, {"X-API-Key": key}) as by_key,
        ):
            response = await http.patch(
                ME,
                json={"password": "a brand new password", "current_password": user.password},
                headers=user.headers,
            )
            assert response.status_code == 200, response.text

            await by_token.end()
            await by_key.end()


async def test_deactivation_ends_the_accounts_streams(app: FastAPI, admin: Account) -> None:
    async with served(app) as http:
        user = await make_account(http)
        async with opened(http, user.headers) as stream:
            response = await http.patch(
                f"/api/v1/users/{user.id}", json={"is_active": False}, headers=admin.headers
            )
            assert response.status_code == 200, response.text

            await stream.end()


async def test_a_demoted_admins_stream_ends_and_carries_no_other_accounts_row_after(
    app: FastAPI, admin: Account
) -> None:
    async with served(app) as http:
        demoted = await make_account(http, admin_of=app)
        user = await make_account(http)
        async with opened(http, demoted.headers) as stream:
            await upload(http, user, "before.txt")
            assert (await stream.event("file.uploaded"))["data"]["target_id"] == "before.txt"
            response = await http.patch(
                f"/api/v1/users/{demoted.id}", json={"is_admin": False}, headers=admin.headers
            )
            assert response.status_code == 200, response.text
            await upload(http, user, "after.txt")

            events = await stream.end()
        assert [e["data"]["target_id"] for e in events if e["event"] == "file.uploaded"] == []


async def test_a_dashboard_stream_ends_when_the_browser_signs_out(app: FastAPI) -> None:
    async with served(app) as http:
        user = await make_account(http)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
            signed_in = await post_form(
                browser, "/sign-in", "/sign-in", email=user.email, password=PASSWORD
            )
            assert signed_in.status_code == 303, signed_in.text
            cookie = {"Cookie": f"modelyard_session={browser.cookies['modelyard_session']}"}
            async with opened(http, cookie, path="/events") as stream:
                signed_out = await post_form(browser, "/account", "/sign-out")
                assert signed_out.status_code == 303, signed_out.text

                await stream.end()


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def revocation_elsewhere_ends_the_stream(first: FastAPI, second: FastAPI) -> None:
    """A key revoked through `first` ends its stream served by `second`."""
    async with (
        lifespan(first),
        lifespan(second),
        asgi_client(first) as control,
        served(second) as http,
    ):
        user = await make_account(control)
        key = await make_api_key(control, user, "revoked")
        async with opened(http, {"X-API-Key": key}) as stream:
            await revoke_key(control, user, "revoked")

            await stream.end()


async def test_a_revocation_on_another_worker_of_the_host_ends_the_stream(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    # Two workers of one host: one data folder (the counters they share), no Redis.
    settings = make_settings(tmp_path, database_url)
    await revocation_elsewhere_ends_the_stream(create_app(settings), create_app(settings))


async def test_a_revocation_on_another_replica_ends_the_stream_through_redis(
    tmp_path: Path, database_url: str, engine: AsyncEngine, redis_url: str
) -> None:
    # Two hosts: a data folder each, the database and Redis shared.
    await revocation_elsewhere_ends_the_stream(
        create_app(make_settings(tmp_path / "a", database_url, redis_url=redis_url)),
        create_app(make_settings(tmp_path / "b", database_url, redis_url=redis_url)),
    )

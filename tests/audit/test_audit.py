"""The audit log: what is recorded, who sees it, its filters and pages, and its hash chain."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from modelyard.audit import service as audit
from modelyard.changes.events import Action
from modelyard.cli import app as cli
from modelyard.db.tables import AuditEvent
from modelyard.db.types import utcnow
from modelyard.state import AppState
from tests.jobs.helpers import create_job, csv_bytes, finished, put_file, wait_for_job
from tests.support.factories import Account, make_api_key, make_version
from tests.support.problems import assert_problem

AUDIT = "/api/v1/audit"
WAIT_SECONDS = 30.0  # a bound, not a measurement


async def audit_rows(
    client: httpx.AsyncClient, account: Account | dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every row `account` sees with `params`, following the cursor to the last page."""
    headers = account.headers if isinstance(account, Account) else account
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page_params = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(AUDIT, params=page_params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body["items"]
        cursor = body["next"]
        if cursor is None:
            return rows


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.modelyard
    return state


async def test_registry_changes_are_recorded_with_actor_and_request(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops, name="iris")
    await make_version(client, user, iris_skops, name="iris")
    promote = await client.patch(
        "/api/v1/models/iris/versions/1/lifecycle",
        json={"stage": "production"},
        headers={**user.headers, "User-Agent": "release-bot/1.0", "X-Request-ID": "req-42"},
    )
    assert promote.status_code == 200, promote.text
    for body in ({"version": 1}, {"version": 2}):
        response = await client.put(
            "/api/v1/models/iris/aliases/champion", json=body, headers=user.headers
        )
        assert response.status_code == 200, response.text
    assert (
        await client.delete("/api/v1/models/iris/aliases/champion", headers=user.headers)
    ).status_code == 204
    link = await client.get("/api/v1/models/iris/versions/2/download-url", headers=user.headers)
    assert link.status_code == 200, link.text
    assert (await client.delete("/api/v1/models/iris", headers=user.headers)).status_code == 204

    rows = await audit_rows(client, user, model_id=version["model_id"])
    assert [(r["action"], r["details"].get("version")) for r in reversed(rows)] == [
        ("model_version.created", 1),
        ("model_version.created", 2),
        ("model_version.stage_changed", 1),
        ("alias.changed", 1),
        ("alias.changed", 2),
        ("alias.changed", None),
        ("download_link.issued", 2),
        # Deleting the model archives its versions: one row for the model, not one a version.
        ("model.deleted", None),
    ]
    created, _, promoted, first_alias, moved, removed, _, deleted = reversed(rows)
    assert created["target_type"] == "model_version"
    assert created["details"]["framework"] == "sklearn"
    assert created["owner_id"] == user.id
    assert created["model_id"] == version["model_id"]
    assert promoted["details"] | {"model": "iris"} == {
        "model": "iris",
        "version": 1,
        "from": "development",
        "to": "production",
    }
    assert promoted["user_agent"] == "release-bot/1.0"
    assert promoted["request_id"] == "req-42"
    assert promoted["client_address"] == "127.0.0.1"
    assert (first_alias["details"]["previous"], moved["details"]["previous"]) == (None, 1)
    assert removed["details"] == {
        "model": "iris",
        "alias": "champion",
        "version": None,
        "previous": 2,
    }
    assert deleted["target_id"] == version["model_id"]
    assert all(r["actor_user_id"] == user.id and r["outcome"] == "success" for r in rows)
    assert all(r["actor_api_key_id"] is None for r in rows)


WRONG_PASSWORD = "not-the-password-9"


@dataclass(frozen=True)
class Session:
    """What `signed_in_and_used_a_key` did: a key made, used and revoked, and the email of a
    sign-in attempt on no account."""

    key: str
    key_id: str
    stranger: str


@pytest.fixture
async def session(client: httpx.AsyncClient, user: Account) -> Session:
    """The user fails to sign in once, someone tries an unknown email, then the user makes a
    key, uploads a file with it and revokes it."""
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": WRONG_PASSWORD}
    )
    assert wrong.status_code == 401
    stranger = f"nobody-{uuid.uuid4().hex[:6]}@example.com"
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": stranger, "password": "whatever-password-1"}
    )
    assert unknown.status_code == 401
    key = await make_api_key(client, user, "deploy", scopes=["read", "write"])
    key_id = (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"][0]["id"]
    file = await client.post(
        "/api/v1/files/upload",
        files={"file": ("data.csv", b"a,b\n1,2\n")},
        headers={"X-API-Key": key},
    )
    assert file.status_code == 201, file.text
    revoked = await client.delete(f"/api/v1/api-keys/{key_id}", headers=user.headers)
    assert revoked.status_code == 204
    return Session(key, key_id, stranger)


async def test_sign_ins_and_refused_ones_are_recorded_on_the_account(
    client: httpx.AsyncClient, user: Account, session: Session
) -> None:
    mine = list(reversed(await audit_rows(client, user)))
    assert [r["action"] for r in mine] == [
        "user.registered",
        "auth.login",
        "auth.login_failed",
        "api_key.created",
        "file.uploaded",
        "api_key.revoked",
    ]
    registered, login, failed = mine[:3]
    assert registered["actor_user_id"] is None  # nobody was signed in
    assert login["actor_user_id"] == user.id
    assert failed["outcome"] == "failure"
    assert failed["actor_user_id"] is None
    assert failed["target_id"] == user.id
    assert failed["details"] == {"reason": "wrong password"}


async def test_a_keys_life_is_recorded_and_an_action_taken_with_it_names_it(
    client: httpx.AsyncClient, user: Account, session: Session
) -> None:
    created, uploaded, revoked = list(reversed(await audit_rows(client, user)))[3:]
    assert created["target_id"] == session.key_id
    assert created["details"]["scopes"] == ["read", "write"]
    assert created["details"]["prefix"] == session.key[: len(created["details"]["prefix"])]
    assert uploaded["actor_api_key_id"] == session.key_id
    assert uploaded["target_id"] == "data.csv"
    assert revoked["target_id"] == session.key_id


async def test_no_secret_reaches_the_log(
    client: httpx.AsyncClient, user: Account, admin: Account, session: Session
) -> None:
    rows = await audit_rows(client, admin)
    [created] = [r for r in rows if r["action"] == "api_key.created" and r["owner_id"] == user.id]
    everything = json.dumps(rows)
    assert session.key not in everything
    assert session.key[len(created["details"]["prefix"]) :] not in everything  # never shown
    assert user.password not in everything
    assert WRONG_PASSWORD not in everything
    assert session.stranger not in everything


async def test_a_refused_sign_in_on_an_unknown_email_is_seen_by_admins_only(
    client: httpx.AsyncClient, user: Account, admin: Account, session: Session
) -> None:
    failures = await audit_rows(client, admin, action="auth.login_failed")
    assert [(r["target_id"], r["details"]["reason"]) for r in failures] == [
        (None, "unknown email"),
        (user.id, "wrong password"),
    ]
    mine = await audit_rows(client, user, action="auth.login_failed")
    assert [r["details"]["reason"] for r in mine] == ["wrong password"]


async def test_who_sees_what(
    app: FastAPI, client: httpx.AsyncClient, user: Account, other_user: Account, admin: Account
) -> None:
    await client.post("/api/v1/files/upload", files={"file": ("u.txt", b"u")}, headers=user.headers)
    await client.post(
        "/api/v1/files/upload", files={"file": ("o.txt", b"o")}, headers=other_user.headers
    )
    mine = await audit_rows(client, user)
    theirs = await audit_rows(client, other_user)
    assert {r["target_id"] for r in mine if r["action"] == "file.uploaded"} == {"u.txt"}
    assert {r["target_id"] for r in theirs if r["action"] == "file.uploaded"} == {"o.txt"}
    assert all(user.id in (r["owner_id"], r["actor_user_id"]) for r in mine)
    everything = await audit_rows(client, admin)
    assert {r["seq"] for r in mine} | {r["seq"] for r in theirs} < {r["seq"] for r in everything}
    # A user filtering on another account gets nothing of it.
    assert await audit_rows(client, user, owner_id=other_user.id) == []
    # An admin's key without the admin scope sees what the admin's own account concerns.
    read_key = await make_api_key(client, admin, "reader", scopes=["read"])
    admin_key = await make_api_key(client, admin, "auditor", scopes=["read", "admin"])
    seen_with_read = await audit_rows(client, {"X-API-Key": read_key})
    assert all(admin.id in (r["owner_id"], r["actor_user_id"]) for r in seen_with_read)
    assert {
        r["target_id"]
        for r in await audit_rows(client, {"X-API-Key": admin_key}, action="file.uploaded")
    } == {"u.txt", "o.txt"}
    # A key with neither read nor admin scope may not list it.
    predict_key = await make_api_key(client, user, "serving", scopes=["predict"])
    refused = await client.get(AUDIT, headers={"X-API-Key": predict_key})
    assert_problem(refused, 403)
    assert_problem(await client.get(AUDIT), 401)


async def test_filters_and_pages(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    for n in range(7):
        response = await client.post(
            "/api/v1/files/upload", files={"file": (f"f{n}.txt", b"x")}, headers=user.headers
        )
        assert response.status_code == 201
    await client.delete("/api/v1/files/f3.txt", headers=user.headers)
    await client.post("/api/v1/auth/login", json={"email": user.email, "password": "wrong-pass-1"})

    pages: list[list[int]] = []
    cursor = None
    while True:
        response = await client.get(
            AUDIT,
            params={"action": "file.", "limit": 3, **({"cursor": cursor} if cursor else {})},
            headers=user.headers,
        )
        body = response.json()
        pages.append([r["seq"] for r in body["items"]])
        cursor = body["next"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    seqs = [s for p in pages for s in p]
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 8
    deleted = await audit_rows(client, user, action="file.deleted")
    assert [r["target_id"] for r in deleted] == ["f3.txt"]
    assert [r["target_id"] for r in await audit_rows(client, user, target_id="f5.txt")] == [
        "f5.txt"
    ]
    failed = await audit_rows(client, user, outcome="failure")
    assert [r["action"] for r in failed] == ["auth.login_failed"]
    assert await audit_rows(client, user, action="file") == []  # whole names, or a kind with "."
    first = deleted[0]["at"]
    later = await audit_rows(client, user, since=first)
    assert [r["action"] for r in later] == ["auth.login_failed", "file.deleted"]
    assert "file.deleted" not in [r["action"] for r in await audit_rows(client, user, until=first)]

    for params in (
        {"cursor": "abc"},
        {"cursor": "0"},
        {"limit": 0},
        {"outcome": "maybe"},
        {"since": "2026-01-01T00:00:00"},
        {"actor_user_id": "nope"},
    ):
        assert_problem(await client.get(AUDIT, params=params, headers=user.headers), 422)


@pytest.fixture
async def chain(app: FastAPI, client: httpx.AsyncClient, user: Account) -> list[dict[str, Any]]:
    """The user's audit rows, newest first, after four uploads (an intact chain)."""
    for n in range(4):
        await client.post(
            "/api/v1/files/upload", files={"file": (f"c{n}.txt", b"x")}, headers=user.headers
        )
    return await audit_rows(client, user)


async def verified(app: FastAPI) -> audit.Verification:
    async with state_of(app).sessions() as db:
        return await audit.verify(db)


async def test_each_row_follows_the_hash_of_the_one_before(
    app: FastAPI, chain: list[dict[str, Any]]
) -> None:
    result = await verified(app)

    assert result.intact
    assert result.checked == result.head_seq
    assert chain[0]["hash"] == result.head_hash
    assert all(a["prev_hash"] == b["hash"] for a, b in itertools.pairwise(chain))


async def test_a_changed_row_breaks_the_chain_until_it_is_put_back(
    app: FastAPI, engine: AsyncEngine, chain: list[dict[str, Any]]
) -> None:
    target = chain[2]["seq"]
    async with engine.begin() as conn:
        await conn.execute(
            update(AuditEvent)
            .where(AuditEvent.seq == target)
            .values(details={"path": "something-else.txt"})
        )

    result = await verified(app)

    assert not result.intact
    assert (result.broken_seq, result.checked, result.head_seq) == (target, target - 1, target - 1)
    assert result.problem == f"row {target} was changed after it was written"
    async with engine.begin() as conn:
        await conn.execute(
            update(AuditEvent).where(AuditEvent.seq == target).values(details=chain[2]["details"])
        )
    assert (await verified(app)).intact


async def test_a_missing_row_breaks_the_chain_at_the_next(
    app: FastAPI, engine: AsyncEngine, chain: list[dict[str, Any]]
) -> None:
    target = chain[2]["seq"]
    async with engine.begin() as conn:
        await conn.execute(delete(AuditEvent).where(AuditEvent.seq == target))

    result = await verified(app)

    assert (result.broken_seq, result.problem) == (
        target + 1,
        f"row {target} is missing (the next row is {target + 1})",
    )


@pytest.mark.parametrize("seq", [0, -1, -(2**40)])
async def test_a_row_numbered_below_one_breaks_the_chain(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, admin: Account, seq: int
) -> None:
    state = state_of(app)
    assert await audit_rows(client, admin)  # a chain from row 1
    # A forged row, hashed as a writer would hash it, in front of an intact chain.
    forged = AuditEvent(
        seq=seq,
        at=utcnow(),
        action="user.updated",
        outcome="success",
        target_type="user",
        target_id=admin.id,
        owner_id=uuid.UUID(admin.id),
        details={"is_admin": True},
        prev_hash=audit.GENESIS,
    )
    forged.hash = audit.row_digest(forged)
    async with engine.begin() as conn:
        await conn.execute(
            insert(AuditEvent).values(
                {c.key: getattr(forged, c.key) for c in AuditEvent.__table__.columns}
            )
        )
    assert seq in [row["seq"] for row in await audit_rows(client, admin)]  # the API lists it

    async with state.sessions() as db:
        result = await audit.verify(db)

    assert not result.intact
    assert (result.broken_seq, result.checked) == (seq, 0)
    assert result.problem == f"row {seq} is outside the chain (rows are numbered from 1)"


async def test_concurrent_writers_make_one_chain(app: FastAPI) -> None:
    log = audit.AuditLog(state_of(app).sessions)
    owner = uuid.uuid4()
    await asyncio.gather(
        *(
            log.append(
                Action(name="file.uploaded", target_type="file", target_id=f"{n}", owner_id=owner)
            )
            for n in range(30)
        )
    )
    async with state_of(app).sessions() as db:
        result = await audit.verify(db)
    assert result.intact
    assert result.checked == result.head_seq
    assert result.checked >= 30


def test_cli_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from modelyard.db import migrate

    path = tmp_path / "modelyard.db"
    monkeypatch.setenv("MODELYARD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MODELYARD_DATABASE_URL", f"sqlite:///{path}")
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    runner = CliRunner()
    empty = runner.invoke(cli, ["audit", "verify"])
    assert (empty.exit_code, empty.output.strip()) == (0, "audit log is empty")
    for flag in ("--help",):
        assert runner.invoke(cli, ["audit", flag]).exit_code == 0

    async def fill() -> None:
        from modelyard.db.engine import make_engine, make_sessionmaker

        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        log = audit.AuditLog(make_sessionmaker(engine))
        for n in range(3):
            await log.append(Action(name="file.deleted", target_type="file", target_id=str(n)))
        await engine.dispose()

    asyncio.run(fill())
    intact = runner.invoke(cli, ["audit", "verify"])
    assert intact.exit_code == 0, intact.output
    assert intact.output.startswith("audit log intact: 3 row(s); head 3 ")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_events SET target_id = 'x' WHERE seq = 2")
    broken = runner.invoke(cli, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "BROKEN at row 2" in broken.output


def test_cli_verify_checks_rows_numbered_below_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from modelyard.db import migrate

    path = tmp_path / "modelyard.db"
    monkeypatch.setenv("MODELYARD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MODELYARD_DATABASE_URL", f"sqlite:///{path}")
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO audit_events (seq, at, action, outcome, target_type, details, "
            "prev_hash, hash) VALUES (0, '2026-01-01 00:00:00.000000', 'file.deleted', "
            "'success', 'file', '{}', ?, ?)",
            ("0" * 64, "0" * 64),
        )

    broken = CliRunner().invoke(cli, ["audit", "verify"])

    assert broken.exit_code == 1
    assert "BROKEN at row 0: row 0 is outside the chain" in broken.output


async def test_request_values_in_details_are_redacted_when_written(app: FastAPI) -> None:
    owner = uuid.uuid4()
    log = audit.AuditLog(state_of(app).sessions)
    row = await log.append(
        Action(
            name="batch_job.finished",
            target_type="batch_job",
            owner_id=owner,
            outcome="failure",
            details={
                "status": "failed",
                "rows_done": 14,
                "error": "row 15: 'alice@example.com' is not a number",
                "routes": [{"version": 1, "value": "bob@example.com"}],
            },
        )
    )
    ok = await log.append(
        Action(name="batch_job.finished", target_type="batch_job", details={"error": None})
    )

    assert row.details == {
        "status": "failed",
        "rows_done": 14,
        "error": audit.REDACTED,
        "routes": [{"version": 1, "value": audit.REDACTED}],
    }
    assert ok.details == {"error": None}
    async with state_of(app).sessions() as db:
        assert (await audit.verify(db)).intact  # the hash covers what was stored


async def test_a_failed_jobs_error_reaches_the_audit_log_without_the_cell_it_quotes(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops, name="iris")
    await put_file(
        client, user, "in.csv", csv_bytes([[5.1, 3.5, 1.4, 0.2], ["alice@example.com", 1, 1, 1]])
    )
    made = await create_job(client, user)
    assert made.status_code == 202, made.text
    job = await wait_for_job(client, user, made.json()["id"], finished, "the job ends")
    assert job["status"] == "failed"
    # The job's own error names the cell's place, never its value (files.tabular).
    assert job["error"] == "row 2 (line 3), column 1: not a number"

    # The worker records the action just after the job's row says it failed.
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            rows = await audit_rows(client, user, action="batch_job.finished")
            if rows:
                break
            await asyncio.sleep(0.02)
    [row] = rows

    assert row["details"]["error"] == audit.REDACTED
    assert "alice@example.com" not in json.dumps(row)


async def test_an_erasure_is_recorded_without_the_person(
    client: httpx.AsyncClient, user: Account, admin: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops, name="iris")
    erased = await client.delete(f"/api/v1/users/{user.id}", headers=admin.headers)
    assert erased.status_code == 204, erased.text
    (row,) = await audit_rows(client, admin, action="user.deleted")
    assert (row["target_id"], row["actor_user_id"], row["owner_id"]) == (user.id, admin.id, None)
    assert row["details"]["models"] == 1
    assert user.email not in json.dumps(row)
    # What was recorded about the account before stays, and the chain holds.
    assert [r["action"] for r in await audit_rows(client, admin, owner_id=user.id)][-1] == (
        "user.registered"
    )

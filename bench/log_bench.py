"""`make bench-log`: the prediction log at scale, on PostgreSQL (default) or SQLite.

Creates a database of its own and fills it straight in: on PostgreSQL in SQL (generate_series
into daily partitions, rollups rolled up from the rows in SQL), on SQLite from Python (rows and
their rollups inserted in chunks). Then it times every history and analytics endpoint through
the app in-process (httpx over ASGI: the server's own time, no network), at each size asked for
(`--rows 1000000,10000000`: the second fill adds to the first, over the same 30 days; SQLite's
default is 1 M). Then it measures the log writer's sustained insert rate with rollups on, and
checks nothing was lost. Writes bench/results/log-latest.{md,json} (SQLite:
log-sqlite-latest.*); the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.db import migrate
from modelyard.db.engine import make_engine, make_sessionmaker
from modelyard.db.tables import ModelVersion, Prediction, RegisteredModel, prediction_rollups
from modelyard.observability.metrics import Metrics
from modelyard.predictions.log import rollups
from modelyard.predictions.log.record import PredictionRecord
from modelyard.predictions.log.writer import PredictionLog

RESULTS = Path(__file__).resolve().parent / "results"
DAYS = 30
SCHEMA = "prediction_partitions"
API = "/api/v1"
BUCKETS = 90


async def admin(url: str, sql: str) -> None:
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def daily_partitions(url: str, first: datetime, days: int) -> None:
    """Replace the migration's catch-all partition of the (empty) old table by daily ones."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {SCHEMA}.predictions_legacy"))
            for d in range(days):
                start = first + timedelta(days=d)
                name = f"predictions_p{start:%Y%m%d}"
                exists = await conn.scalar(text("SELECT to_regclass(:n)"), {"n": f"{SCHEMA}.{name}"})
                if exists is None:
                    await conn.execute(
                        text(
                            f"CREATE TABLE {SCHEMA}.{name} PARTITION OF predictions FOR VALUES "
                            f"FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
                        )
                    )
    finally:
        await engine.dispose()


async def fill(
    url: str, *, rows: int, start: datetime, end: datetime, owner: uuid.UUID, caller: uuid.UUID,
    versions: list[tuple[uuid.UUID, uuid.UUID, int]], chunk: int = 1_000_000,
) -> float:
    """Insert `rows` predictions spread evenly over [start, end), then their rollups; seconds."""
    engine = make_engine(url)
    span = (end - start).total_seconds()
    began = time.perf_counter()
    cases_model = " ".join(f"WHEN {i} THEN '{m}'::uuid" for i, (m, _, _) in enumerate(versions))
    cases_version = " ".join(f"WHEN {i} THEN '{v}'::uuid" for i, (_, v, _) in enumerate(versions))
    cases_number = " ".join(f"WHEN {i} THEN {n}" for i, (_, _, n) in enumerate(versions))
    k = len(versions)
    try:
        for offset in range(0, rows, chunk):
            n = min(chunk, rows - offset)
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        f"""
                        INSERT INTO predictions (id, model_id, version_id, version, owner_id,
                            user_id, api_key_id, protocol, status, error, inputs, outputs, n_rows,
                            inference_time_ms, created_at)
                        SELECT gen_random_uuid(),
                            CASE g % {k} {cases_model} END,
                            CASE g % {k} {cases_version} END,
                            CASE g % {k} {cases_number} END,
                            CAST(:owner AS uuid),
                            CASE WHEN g % 10 = 0 THEN CAST(:caller AS uuid) ELSE CAST(:owner AS uuid) END,
                            NULL, 'rest',
                            CASE WHEN g % 50 = 0 THEN 'error' ELSE 'success' END,
                            CASE WHEN g % 50 = 0 THEN 'bad input' END,
                            '[[5.1, 3.5, 1.4, 0.2]]'::jsonb, '[0]'::jsonb, 1,
                            CASE WHEN g % 50 = 0 THEN NULL ELSE 0.2 + exp(random() * 4) / 10 END,
                            CAST(:start AS timestamptz) + make_interval(secs => (g::float8 + random()) * CAST(:step AS float8))
                        FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
                        """  # noqa: S608 - constants of this script
                    ),
                    {
                        "owner": owner, "caller": caller, "start": start,
                        "step": span / rows, "lo": offset, "hi": offset + n - 1,
                    },
                )
            print(f"  filled {offset + n:,}/{rows:,}", file=sys.stderr, flush=True)
        inserted = time.perf_counter()
        async with engine.begin() as conn:
            # Rolled up again from every row (what the writer would have kept, row by row):
            # counted per (period, version, bucket) first, then pivoted into the bucket columns.
            await conn.execute(text("TRUNCATE prediction_rollups"))
            columns = ", ".join(f"b{i:02d}" for i in range(BUCKETS))
            pivot = ", ".join(
                f"SUM(CASE WHEN bucket = {i} THEN n ELSE 0 END)" for i in range(BUCKETS)
            )
            for period in rollups.PERIODS:
                await conn.execute(
                    text(
                        f"""
                        INSERT INTO prediction_rollups (period_s, start_at, model_id, version_id,
                            owner_id, version, requests, failures, rows, timed, time_sum_ms,
                            time_min_ms, time_max_ms, last_at, {columns})
                        SELECT {period}, st, model_id, version_id, (array_agg(owner_id))[1],
                            MAX(version), SUM(n), SUM(failures), SUM(n_rows), SUM(timed),
                            SUM(time_sum), MIN(time_min), MAX(time_max), MAX(last_at), {pivot}
                        FROM (
                            SELECT to_timestamp(floor(extract(epoch FROM created_at) / {period}) * {period}) AS st,
                                model_id, version_id, MAX(owner_id::text)::uuid AS owner_id,
                                MAX(version) AS version, COUNT(*) AS n,
                                SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS failures,
                                SUM(n_rows) AS n_rows, COUNT(inference_time_ms) AS timed,
                                COALESCE(SUM(inference_time_ms), 0) AS time_sum,
                                MIN(inference_time_ms) AS time_min, MAX(inference_time_ms) AS time_max,
                                MAX(created_at) AS last_at,
                                CASE WHEN inference_time_ms IS NULL THEN -1
                                    WHEN inference_time_ms >= 0.01 THEN LEAST({BUCKETS - 1},
                                    floor(4 * ln(inference_time_ms / 0.01) / ln(2))::int + 1)
                                    ELSE 0 END AS bucket
                            FROM predictions
                            GROUP BY 1, model_id, version_id, bucket
                        ) AS counted
                        GROUP BY st, model_id, version_id
                        """  # noqa: S608 - constants of this script
                    )
                )
        print(
            f"  insert {inserted - began:.0f} s, rollups {time.perf_counter() - inserted:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        await admin(url, "VACUUM ANALYZE predictions")
        await admin(url, "VACUUM ANALYZE prediction_rollups")
    finally:
        await engine.dispose()
    return time.perf_counter() - began


async def fill_sqlite(
    url: str, *, rows: int, start: datetime, end: datetime, owner: uuid.UUID, caller: uuid.UUID,
    versions: list[tuple[uuid.UUID, uuid.UUID, int]], chunk: int = 20_000,
) -> float:
    """Insert `rows` predictions spread evenly over [start, end) and their rollups (what the
    writer would keep), chunk by chunk, as `fill` does on PostgreSQL; seconds."""
    engine = make_engine(url)
    table = Prediction.metadata.tables[Prediction.__tablename__]
    span = (end - start).total_seconds()
    step = span / rows
    rng = random.Random(rows)
    began = time.perf_counter()
    try:
        for offset in range(0, rows, chunk):
            batch = []
            for g in range(offset, min(rows, offset + chunk)):
                model_id, version_id, number = versions[g % len(versions)]
                failed = g % 50 == 0
                batch.append({
                    "id": uuid.uuid4(), "model_id": model_id, "version_id": version_id,
                    "version": number, "owner_id": owner,
                    "user_id": caller if g % 10 == 0 else owner, "api_key_id": None,
                    "protocol": "rest", "status": "error" if failed else "success",
                    "error": "bad input" if failed else None,
                    "inputs": [[5.1, 3.5, 1.4, 0.2]], "outputs": [0], "n_rows": 1,
                    "inference_time_ms": None if failed else 0.2 + math.exp(rng.random() * 4) / 10,
                    "created_at": start + timedelta(seconds=(g + rng.random()) * step),
                })
            async with make_sessionmaker(engine)() as db:
                await db.execute(table.insert(), batch)
                await rollups.add(db, rollups.aggregate(batch))
                await db.commit()
            if (offset + chunk) % 200_000 == 0 or offset + chunk >= rows:
                print(f"  filled {min(rows, offset + chunk):,}/{rows:,}", file=sys.stderr, flush=True)
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return time.perf_counter() - began


async def time_calls(client: httpx.AsyncClient, path: str, params: dict[str, Any], headers: dict[str, str], repeat: int) -> dict[str, Any]:
    timings = []
    body: Any = None
    for _ in range(repeat):
        began = time.perf_counter()
        response = await client.get(path, params=params, headers=headers)
        timings.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        body = response.json()
    timings.sort()
    return {
        "p50_ms": round(statistics.median(timings), 2),
        "p95_ms": round(timings[max(0, -(-95 * len(timings) // 100) - 1)], 2),
        "body": body,
    }


async def measure_endpoints(
    settings: Settings, token_headers: dict[str, str], model_id: uuid.UUID, repeat: int
) -> dict[str, dict[str, Any]]:
    app = create_app(settings)
    out: dict[str, dict[str, Any]] = {}
    now = datetime.now(UTC)
    day_ago = (now - timedelta(days=1)).isoformat()
    week_ago = (now - timedelta(days=7)).isoformat()
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            h = token_headers
            cases: list[tuple[str, str, dict[str, Any]]] = [
                ("analytics/models", f"{API}/analytics/models", {}),
                ("analytics/models?model_id", f"{API}/analytics/models", {"model_id": str(model_id)}),
                ("analytics/models?since=1 day ago", f"{API}/analytics/models", {"since": day_ago}),
                ("analytics/usage?days=30", f"{API}/analytics/usage", {"days": 30}),
                ("analytics/usage?days=30&model_id", f"{API}/analytics/usage", {"days": 30, "model_id": str(model_id)}),
                ("predictions?limit=50", f"{API}/predictions", {"limit": 50}),
                ("predictions?model_id", f"{API}/predictions", {"limit": 50, "model_id": str(model_id)}),
                ("predictions?status=error", f"{API}/predictions", {"limit": 50, "status": "error"}),
                ("predictions?model_id&status=error", f"{API}/predictions", {"limit": 50, "model_id": str(model_id), "status": "error"}),
                ("predictions?since=7d&until=1d", f"{API}/predictions", {"limit": 50, "since": week_ago, "until": day_ago}),
                ("predictions?offset=1000", f"{API}/predictions", {"limit": 50, "offset": 1000}),
            ]
            for name, path, params in cases:
                result = await time_calls(client, path, params, h, repeat)
                body = result.pop("body")
                if isinstance(body, dict) and "total" in body:
                    result["total"] = body["total"]
                    result["total_is_estimate"] = body.get("total_is_estimate")
                out[name] = result
                print(f"  {name}: {result}", file=sys.stderr, flush=True)
            # Later pages by cursor: page 2 .. 2 + repeat, each timed once, for two filters.
            for name, params in (
                ("predictions by cursor (later pages)", {"limit": 50}),
                ("predictions?status=error by cursor (later pages)", {"limit": 50, "status": "error"}),
            ):
                first = (await client.get(f"{API}/predictions", params=params, headers=h)).json()
                cursor = first["next"]
                timings = []
                for _ in range(repeat):
                    if cursor is None:
                        break
                    began = time.perf_counter()
                    page = (await client.get(f"{API}/predictions", params={**params, "cursor": cursor}, headers=h)).json()
                    timings.append((time.perf_counter() - began) * 1000)
                    cursor = page["next"]
                timings.sort()
                out[name] = {
                    "p50_ms": round(statistics.median(timings), 2) if timings else None,
                    "p95_ms": round(timings[max(0, -(-95 * len(timings) // 100) - 1)], 2) if timings else None,
                    "pages": len(timings) + 1,
                }
                print(f"  {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


async def writer_rate(url: str, spool: Path, versions: list[tuple[uuid.UUID, uuid.UUID, int]], owner: uuid.UUID, rows: int) -> dict[str, Any]:
    """Queue `rows` records at once and time the writer (defaults: 500-row batches) to write them."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    metrics = Metrics()
    log = PredictionLog(
        sessions, spool_dir=spool, batch_size=500, flush_ms=500, queue_size=rows + 1,
        keep_payloads=True, max_payload_bytes=64 * 1024, metrics=metrics,
    )
    r = prediction_rollups.c
    async with engine.connect() as conn:
        before_rows = await conn.scalar(select(func.count()).select_from(Prediction))
        before_rolled = await conn.scalar(select(func.sum(r.requests)).where(r.period_s == 60))
    await log.start()
    now = datetime.now(UTC)
    records = []
    for i in range(rows):
        model_id, version_id, number = versions[i % len(versions)]
        records.append(
            PredictionRecord(
                id=uuid.uuid4(), model_id=model_id, version_id=version_id, version=number,
                owner_id=owner, user_id=owner, api_key_id=None, protocol="rest",
                status="success", error=None, inputs=[[5.1, 3.5, 1.4, 0.2]], outputs=[0],
                n_rows=1, inference_time_ms=0.3 + (i % 97) / 50,
                created_at=now + timedelta(microseconds=i),
            )
        )
    began = time.perf_counter()
    # As requests would: record() on the event loop, the writer in between.
    for start in range(0, rows, 200):
        for rec in records[start : start + 200]:
            log.record(rec)
        await asyncio.sleep(0)
    await log.flush()
    elapsed = time.perf_counter() - began
    await log.aclose()
    async with engine.connect() as conn:
        after_rows = await conn.scalar(select(func.count()).select_from(Prediction))
        after_rolled = await conn.scalar(select(func.sum(r.requests)).where(r.period_s == 60))
    await engine.dispose()
    return {
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rows_per_second": round(rows / elapsed),
        "rows_stored": int(after_rows - before_rows),
        "rows_rolled_up": int((after_rolled or 0) - (before_rolled or 0)),
        "spooled": metrics.registry.get_sample_value("modelyard_prediction_log_rows_spooled_total") or 0,
        "dropped": metrics.registry.get_sample_value("modelyard_prediction_log_rows_dropped_total") or 0,
    }


def write_results(report: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = "log-latest" if report["database"] == "postgresql" else "log-sqlite-latest"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [
        "# Prediction log at scale (`make bench-log`)",
        "",
        f"{report['when']}, {report['database']}, {report['machine']}. In-process calls (httpx over ASGI),"
        f" {report['repeat']} calls each; ms.",
        "",
    ]
    sizes = list(report["sizes"])
    lines.append("| endpoint | " + " | ".join(f"{int(s):,} rows p50 / p95" for s in sizes) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    names = list(report["sizes"][sizes[0]]["endpoints"])
    for name in names:
        cells = []
        for s in sizes:
            e = report["sizes"][s]["endpoints"][name]
            cell = f"{e['p50_ms']} / {e['p95_ms']}"
            if e.get("total_is_estimate"):
                cell += " (total est.)"
            cells.append(cell)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    how = "generate_series + rollups in SQL" if report["database"] == "postgresql" else "from Python, rollups by the writer's code"
    lines += ["", f"Fill ({how}): " + ", ".join(
        f"{int(s):,} rows {report['sizes'][s]['fill_seconds']:.0f} s" for s in sizes)]
    w = report["writer"]
    lines += [
        "",
        f"Writer with rollups on: {w['rows']:,} records queued at once, written in {w['seconds']} s"
        f" = **{w['rows_per_second']:,} rows/s**; stored {w['rows_stored']:,}, rolled up"
        f" {w['rows_rolled_up']:,}, spooled {w['spooled']:.0f}, dropped {w['dropped']:.0f}.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server where this may create and drop a database")
    parser.add_argument("--rows", default=None,
                        help="comma-separated cumulative sizes to measure at (default 1 M then 10 M;"
                        " SQLite: 1 M)")
    parser.add_argument("--repeat", type=int, default=20, help="calls per endpoint")
    parser.add_argument("--writer-rows", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the database (to explain plans)")
    args = parser.parse_args()
    postgres = args.database == "postgresql"
    rows = args.rows or ("1000000,10000000" if postgres else "1000000")
    sizes = [int(x) for x in rows.split(",")]
    admin_url = make_url(args.url)
    name = f"modelyard_bench_log_{uuid.uuid4().hex[:8]}"
    admin_str = admin_url.render_as_string(hide_password=False)
    tmp = Path(f"/tmp/{name}")  # noqa: S108 - a scratch data dir of this run
    tmp.mkdir(parents=True)
    if postgres:
        url = admin_url.set(database=name).render_as_string(hide_password=False)
        await admin(admin_str, f'CREATE DATABASE "{name}"')
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        now = datetime.now(UTC)
        first_day = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=DAYS)
        if postgres:
            await daily_partitions(url, first_day, DAYS + 1)
        settings = Settings(_env_file=None, data_dir=tmp, database_url=url, secret_key="b" * 40,
                            argon2_time_cost=1, argon2_memory_kib=8, argon2_parallelism=1,
                            log_level="WARNING", prediction_log_maintenance_interval_seconds=0)  # type: ignore[call-arg]
        app = create_app(settings)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                creds = {"email": "bench@example.com", "password": "bench-password-1"}
                other = {"email": "other@example.com", "password": "bench-password-1"}
                me = (await client.post(f"{API}/auth/register", json=creds)).json()
                them = (await client.post(f"{API}/auth/register", json=other)).json()
                token = (await client.post(f"{API}/auth/login", json=creds)).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        owner, caller = uuid.UUID(me["id"]), uuid.UUID(them["id"])
        engine = make_engine(url)
        versions: list[tuple[uuid.UUID, uuid.UUID, int]] = []
        async with make_sessionmaker(engine)() as db:
            for m in range(2):
                model = RegisteredModel(owner_id=owner, name=f"bench-{m}", version_count=2)
                db.add(model)
                await db.flush()
                for number in (1, 2):
                    version = ModelVersion(model_id=model.id, version=number, framework="sklearn",
                                           format="skops", storage_key=f"models/{uuid.uuid4().hex}",
                                           file_size=1, sha256="0" * 64)
                    db.add(version)
                    await db.flush()
                    versions.append((model.id, version.id, number))
            await db.commit()
        await engine.dispose()
        report: dict[str, Any] = {
            "when": now.isoformat(timespec="seconds"), "machine": "2 cores shared",
            "database": args.database,
            "repeat": args.repeat, "days": DAYS, "sizes": {},
        }
        done = 0
        for size in sizes:
            fill_s = await (fill if postgres else fill_sqlite)(
                url, rows=size - done, start=first_day, end=now, owner=owner, caller=caller,
                versions=versions,
            )
            done = size
            print(f"{size:,} rows filled in {fill_s:.0f} s", file=sys.stderr, flush=True)
            endpoints = await measure_endpoints(settings, headers, versions[0][0], args.repeat)
            report["sizes"][size] = {"fill_seconds": fill_s, "endpoints": endpoints}
        report["writer"] = await writer_rate(url, tmp / "spool", versions, owner, args.writer_rows)
        print(f"writer: {report['writer']}", file=sys.stderr, flush=True)
        write_results(report)
    finally:
        if args.keep:
            print(f"kept database {name if postgres else url}", file=sys.stderr)
        else:
            if postgres:
                await admin(admin_str, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

"""Server time of each dashboard page with 1,000 models and 10,000 versions in the registry.

    .venv/bin/python bench/dashboard.py                      # SQLite, 200 requests a page
    .venv/bin/python bench/dashboard.py --database postgresql --requests 100

Fills a fresh database (one user owning 1,000 models of 10 versions each, aliases, 50,000 logged
predictions over 30 days, an experiment with 3,000 metric points), starts `modelyard serve` on
it as a user would, signs in through the form and requests every page in turn, reading the
server's own `X-Process-Time` (the time from the request's arrival to its answer's start, so
the client's costs are left out). Prints p50, p95 and max per page in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from modelyard.auth.passwords import PasswordHasher  # noqa: E402
from modelyard.config import Settings  # noqa: E402
from modelyard.db import migrate  # noqa: E402
from modelyard.db.engine import make_engine, make_sessionmaker  # noqa: E402
from modelyard.predictions.log import rollups  # noqa: E402
from modelyard.db.tables import (  # noqa: E402
    Experiment,
    ExperimentMetric,
    ModelAlias,
    ModelVersion,
    Prediction,
    RegisteredModel,
    User,
)

EMAIL = "bench@example.com"
PASSWORD = "bench password 123"
MODELS = 1_000
VERSIONS_PER_MODEL = 10
PREDICTIONS = 50_000
METRIC_POINTS = 3_000
POSTGRES_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CHEAP_ARGON2 = {
    "MODELYARD_ARGON2_MEMORY_KIB": "8",
    "MODELYARD_ARGON2_TIME_COST": "1",
    "MODELYARD_ARGON2_PARALLELISM": "1",
}


async def fill(url: str, n_predictions: int) -> dict[str, str]:
    """Fill the database; return ids the pages need."""
    engine = make_engine(url)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        secret_key="bench-secret-key-long-enough-for-hs256",
        argon2_time_cost=1,
        argon2_memory_kib=8,
        argon2_parallelism=1,
    )
    password_hash = await PasswordHasher(settings).hash(PASSWORD)
    now = datetime.now(UTC)
    rng = random.Random(1)
    user_id = uuid.uuid4()
    models, versions, aliases, predictions = [], [], [], []
    for m in range(MODELS):
        model_id = uuid.uuid4()
        created = now - timedelta(minutes=MODELS - m)
        models.append(
            {
                "id": model_id,
                "owner_id": user_id,
                "name": f"model-{m:04d}",
                "description": f"benchmark model {m}",
                "task_type": "classification",
                "tags": ["bench"],
                "status": "active",
                "version_count": VERSIONS_PER_MODEL,
                "created_at": created,
                "updated_at": created,
            }
        )
        for v in range(1, VERSIONS_PER_MODEL + 1):
            stage = (
                "production"
                if v == VERSIONS_PER_MODEL - 1
                else "staging"
                if v == VERSIONS_PER_MODEL
                else "deprecated"
            )
            version_id = uuid.uuid4()
            versions.append(
                {
                    "id": version_id,
                    "model_id": model_id,
                    "version": v,
                    "stage": stage,
                    "framework": rng.choice(["sklearn", "onnx", "xgboost", "lightgbm"]),
                    "format": "skops",
                    "task_type": "classification",
                    "storage_key": f"models/{uuid.uuid4().hex}",
                    "file_size": 4096,
                    "sha256": "0" * 64,
                    "input_schema": {
                        "features": [{"name": f"f{i}", "type": "float"} for i in range(4)]
                    },
                    "output_schema": None,
                    "metrics": {"accuracy": 0.9},
                    "hyperparameters": {"C": 1.0},
                    "tags": [],
                    "metadata": {},
                    "created_by": user_id,
                    "created_at": created,
                    "updated_at": created,
                }
            )
            if v == VERSIONS_PER_MODEL - 1:
                aliases.append(
                    {
                        "id": uuid.uuid4(),
                        "model_id": model_id,
                        "alias": "champion",
                        "version_id": version_id,
                        "created_at": created,
                        "updated_at": created,
                    }
                )
    hot = models[-1]["id"]  # the newest model gets most of the traffic
    hot_versions = [v for v in versions if v["model_id"] == hot]
    for _ in range(max(n_predictions, 1)):
        target = rng.choice(hot_versions) if rng.random() < 0.5 else rng.choice(versions)
        failed = rng.random() < 0.03
        predictions.append(
            {
                "id": uuid.uuid4(),
                "model_id": target["model_id"],
                "version_id": target["id"],
                "version": target["version"],
                "owner_id": user_id,
                "user_id": user_id,
                "api_key_id": None,
                "protocol": "rest",
                "status": "error" if failed else "success",
                "error": "inputs do not fit" if failed else None,
                "inputs": [[5.1, 3.5, 1.4, 0.2]],
                "outputs": None if failed else {"predictions": [0]},
                "n_rows": 1,
                "inference_time_ms": None if failed else rng.lognormvariate(0, 0.5),
                "created_at": now - timedelta(seconds=rng.uniform(0, 30 * 86400)),
            }
        )
    experiment_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(User).values(
                id=user_id,
                email=EMAIL,
                password_hash=password_hash,
                is_active=True,
                is_admin=True,
                credentials_version=0,
                created_at=now,
                updated_at=now,
            )
        )
        for table, rows in (
            (RegisteredModel, models),
            (ModelVersion, versions),
            (ModelAlias, aliases),
            (Prediction, predictions),
        ):
            for start in range(0, len(rows), 2_000):
                await conn.execute(insert(table), rows[start : start + 2_000])
        await conn.execute(
            insert(Experiment).values(
                id=experiment_id,
                owner_id=user_id,
                name="sweep",
                parameters={"C": [0.1, 1, 10]},
                tags=["bench"],
                status="running",
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(ExperimentMetric),
            [
                {
                    "experiment_id": experiment_id,
                    "key": ("loss", "accuracy", "f1")[i % 3],
                    "value": 1 / (1 + i),
                    "step": i // 3,
                    "timestamp": now,
                }
                for i in range(METRIC_POINTS)
            ],
        )
    # The log writer keeps the rollups analytics read; rows put straight in the table need
    # them made here, as the writer would have.
    async with make_sessionmaker(engine)() as db:
        await rollups.add(db, rollups.aggregate(predictions))
        await db.commit()
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    await engine.dispose()
    one = next(v for v in versions if v["model_id"] == hot and v["stage"] == "production")
    return {
        "model": str(hot),
        "version": str(one["version"]),
        "experiment": str(experiment_id),
        "prediction": str(predictions[0]["id"]),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(p * len(ordered) + 0.5)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--requests", type=int, default=200, help="per page (after 10 warm-ups)")
    parser.add_argument(
        "--predictions", type=int, default=PREDICTIONS, help="logged predictions to fill in"
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="modelyard-bench-dashboard-"))
    pg_name = None
    if args.database == "postgresql":
        pg_name = f"modelyard_bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'CREATE DATABASE "{pg_name}"'],
            check=True,
        )
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    else:
        url = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    try:
        run(folder, url, args.requests, args.predictions)
    finally:
        if pg_name:
            subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-qc",
                    f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)',
                ],
                check=False,
            )


def run(folder: Path, url: str, requests: int, n_predictions: int) -> None:
    started = time.perf_counter()
    migrate.upgrade(url)
    ids = asyncio.run(fill(url, n_predictions))
    print(
        f"filled {MODELS} models, {MODELS * VERSIONS_PER_MODEL} versions, {n_predictions} "
        f"predictions in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    port = free_port()
    env = {
        **os.environ,
        **CHEAP_ARGON2,
        "PYTHONPATH": str(ROOT / "src"),
        "MODELYARD_DATA_DIR": str(folder / "data"),
        "MODELYARD_DATABASE_URL": url,
        "MODELYARD_LOG_LEVEL": "WARNING",
        "MODELYARD_AUTH_RATE_LIMIT_PER_MINUTE": "0",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "--port", str(port)],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(600):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            form = client.get("/sign-in").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
            assert csrf is not None
            signed_in = client.post(
                "/sign-in",
                data={"csrf_token": csrf.group(1), "email": EMAIL, "password": PASSWORD},
            )
            assert signed_in.status_code == 303, signed_in.text
            model, version = ids["model"], ids["version"]
            pages = {
                "models list": "/",
                "models: search + sort": "/?q=model-09&sort=name",
                "models: stage filter": "/?stage=production&framework=onnx",
                "models: last page": f"/?offset={MODELS - 20}",
                "model": f"/models/{model}",
                "version": f"/models/{model}/versions/{version}",
                "stage confirmation": f"/models/{model}/versions/{version}/stage?to=archived",
                "analytics 1 day": f"/models/{model}/analytics?days=1",
                "analytics 7 days": f"/models/{model}/analytics?days=7",
                "analytics 30 days": f"/models/{model}/analytics?days=30",
                "prediction log": "/predictions",
                "prediction log: model": f"/predictions?model_id={model}&status=error",
                "prediction": f"/predictions/{ids['prediction']}",
                "experiments": "/experiments",
                "experiment": f"/experiments/{ids['experiment']}",
                "API keys": "/api-keys",
                "account": "/account",
                "admin users": "/admin/users",
            }
            dialect = url.split("+")[0]
            print(
                f"\nDashboard server time, {dialect}, {n_predictions} logged predictions, "
                f"{requests} requests per page (ms)\n"
            )
            print(f"| {'page':<24} | {'p50':>6} | {'p95':>6} | {'max':>6} |")
            print(f"|{'-' * 26}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
            for name, path in pages.items():
                times = []
                for i in range(10 + requests):
                    response = client.get(path)
                    assert response.status_code == 200, (path, response.status_code)
                    if i >= 10:
                        times.append(float(response.headers["x-process-time"]))
                print(
                    f"| {name:<24} | {percentile(times, 0.5):>6.1f} | "
                    f"{percentile(times, 0.95):>6.1f} | {max(times):>6.1f} |"
                )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

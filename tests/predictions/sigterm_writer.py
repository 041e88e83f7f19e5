"""A test-only process: record N predictions, say "ready", and on SIGTERM close the log the way the
app's lifespan does when uvicorn receives SIGTERM.

Run as `python -m tests.predictions.sigterm_writer SQLITE_URL SPOOL_DIR N`. The batch window is
far longer than the test, so every row it finds was written by `aclose` during the shutdown.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import uuid
from pathlib import Path

from modelyard.db.engine import make_engine, make_sessionmaker
from modelyard.db.types import utcnow
from modelyard.observability.metrics import Metrics
from modelyard.predictions.log.record import PredictionRecord, PredictionStatus
from modelyard.predictions.log.writer import PredictionLog

FLUSH_MS = 600_000


async def main(url: str, spool_dir: Path, n: int) -> None:
    engine = make_engine(url)
    log = PredictionLog(
        make_sessionmaker(engine),
        spool_dir=spool_dir,
        batch_size=n + 1,
        flush_ms=FLUSH_MS,
        queue_size=n + 1,
        keep_payloads=True,
        max_payload_bytes=64 * 1024,
        metrics=Metrics(),
    )
    await log.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    for i in range(n):
        log.record(
            PredictionRecord(
                id=uuid.uuid4(),
                model_id=uuid.uuid4(),
                version_id=uuid.uuid4(),
                version=1,
                owner_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                api_key_id=None,
                protocol="rest",
                status=PredictionStatus.SUCCESS,
                error=None,
                inputs=[[float(i)]],
                outputs=[i],
                n_rows=1,
                inference_time_ms=0.1,
                created_at=utcnow(),
            )
        )
        await asyncio.sleep(0)  # requests arrive one by one
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    await log.aclose()
    await engine.dispose()


def count_rows(path: Path) -> int:
    """Count the rows of the log table in the SQLite file at `path`."""
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM predictions").fetchone()
    return int(count)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))

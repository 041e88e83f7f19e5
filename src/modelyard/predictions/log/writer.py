"""The prediction log writer: records queued in memory, written in batches by a background task,
spooled to disk while the database is unavailable and replayed when it answers again.

Every insert is `INSERT ... ON CONFLICT (id) DO NOTHING`, so writing a row twice is harmless;
that is what makes the spool simple: whenever in doubt (an outage, a timeout after the commit may
have happened, a crash mid-replay) the rows are spooled or replayed again.

Spool files are JSON lines in `spool_dir`, named `<time_ns>-<pid>-<seq>.jsonl` so that sorting by
name replays them in the order they were written. Worker processes of one data dir share the
folder, so a process holds an exclusive `flock` on the file it appends to and a replayer skips
files it cannot lock. A file is renamed `.replaying` before it is replayed: a crash mid-replay
replays it again on the next start. Rows the database refuses one by one without an outage (a
character PostgreSQL cannot store, say) are kept in `spool_dir/rejected/` for an operator and
counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelyard.config import Settings
from modelyard.db.tables import Prediction
from modelyard.errors import is_dependency_down
from modelyard.observability import tracing
from modelyard.observability.metrics import Metrics
from modelyard.predictions.log import rollups, spool
from modelyard.predictions.log.record import PredictionRecord, Row, storable
from modelyard.predictions.log.spool import SPOOL_SUFFIX

log = logging.getLogger(__name__)

REJECTED_DIR = "rejected"
# Bounds what one replay step reads into memory; the writer starts a new file past it.
SPOOL_FILE_MAX_BYTES = 16 * 1024 * 1024
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
# A hung connection must not hold the writer (asyncpg's connect timeout is 60 s): the batch is
# spooled instead, and if the commit did happen after all, the replay's duplicates are ignored.
INSERT_TIMEOUT_SECONDS = 10.0
# Rows per INSERT statement within a batch's transaction.
STATEMENT_ROWS = 100
# SQLSTATE classes of an unavailable server: connection exception, insufficient resources,
# operator intervention (admin shutdown, "the database system is starting up").
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


class PredictionLog:
    """Writes prediction records in the background: batched inserts, spooled to disk while the database is down."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        spool_dir: Path,
        batch_size: int,
        flush_ms: int,
        queue_size: int,
        keep_payloads: bool,
        max_payload_bytes: int,
        metrics: Metrics,
    ) -> None:
        self._sessions = sessions
        self._spool_dir = spool_dir
        self._batch_size = batch_size
        self._flush_seconds = flush_ms / 1000
        self._queue_size = queue_size
        self._keep_payloads = keep_payloads
        self._max_payload_bytes = max_payload_bytes
        self._metrics = metrics
        # Rows to insert, FIFO, so counts of queued and done are positions; `_queued_at` holds
        # each one's monotonic time beside it. A row holds its payloads as serialised JSON and
        # its time apart as a float: the garbage collector walks two objects per queued row,
        # not a dozen, so thousands of them do not slow its full passes (p99 under load).
        self._queue: deque[Row] = deque()
        self._queued_at: deque[float] = deque()
        self._in_flight = 0
        self._enqueued = 0
        self._done = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._spool_file: IO[bytes] | None = None
        self._spool_seq = 0
        self._spool_pending = False
        self._backoff = 0.0
        # Before this monotonic time the database is not tried: batches go straight to the spool.
        self._retry_at = 0.0
        self._depth = metrics.log_queue_depth

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: async_sessionmaker[AsyncSession], metrics: Metrics
    ) -> Self:
        """Build the log the settings describe; its spool is `data_dir/spool/predictions`."""
        return cls(
            sessions,
            spool_dir=settings.data_dir / "spool" / "predictions",
            batch_size=settings.prediction_log_batch_size,
            flush_ms=settings.prediction_log_flush_ms,
            queue_size=settings.prediction_log_queue_size,
            keep_payloads=settings.prediction_log_payloads,
            max_payload_bytes=settings.prediction_log_max_payload_bytes,
            metrics=metrics,
        )

    @property
    def pending(self) -> int:
        """Records held in memory, not yet written or spooled."""
        return len(self._queue) + self._in_flight

    async def start(self) -> None:
        """Start the writer task, and the replay of spool files an earlier run left behind."""
        if self._writer is not None:
            return
        self._spool_pending = True  # the first replay finds out whether there are files
        self._writer = asyncio.create_task(self._run(), name="prediction-log-writer")
        self._kick_replay()

    def record(self, rec: PredictionRecord) -> None:
        """Queue one prediction for the log; never awaits, never raises.

        Call it from the event loop thread. Past `queue_size` queued records (or after `aclose`)
        the record is appended to the spool file at once, so memory stays bounded under overload.
        Inputs, outputs and error longer than `max_payload_bytes` are cut here (see `record.storable`).
        """
        try:
            # Stored as it will be inserted: payloads as JSON within budget, no NUL in text.
            row = storable(rec, payloads=self._keep_payloads, max_bytes=self._max_payload_bytes)
            if self._closed:
                # No writer any more: spool it and close the file, which the next start replays.
                self._spool_rows([row])
                self._close_spool_file()
                return
            if len(self._queue) >= self._queue_size:
                self._spool_rows([row])
                return
            self._queue.append(row)
            self._queued_at.append(time.monotonic())
            self._enqueued += 1
            queued = len(self._queue)
            # The first record starts the flush window; a full batch is written at once.
            if queued == 1 or queued >= self._batch_size:
                self._wakeup.set()
            if queued % self._batch_size == 0:
                # While the writer is stuck (a slow database) the gauge still follows.
                self._publish_depth()
        except Exception:
            self._metrics.log_rows_dropped.inc()
            log.exception("prediction_log_record_dropped", extra={"prediction_id": str(rec.id)})

    async def flush(self) -> None:
        """Wait until every record queued before the call is written or spooled."""
        target = self._enqueued
        if self._done >= target:
            return
        writer = self._writer
        if writer is None or writer.done():
            await self._drain()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._wakeup.set()
        # The writer never ends while open, but if a bug ended it, do not wait forever.
        await asyncio.wait({waiter, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            await self._drain()

    async def aclose(self) -> None:
        """Write what is queued (spool it if the database is down) and stop the writer.

        A replay in progress is cancelled: its file stays on disk and replays on the next start.
        """
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if self._writer is not None:
            await self._writer
        # Records queued while the writer finished its last batch.
        await self._drain()
        self._closed = True
        self._close_spool_file()
        self._notify()

    # --- the writer -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._wait_for_batch()
                if self._queue:
                    await self._write_next_batch()
                elif self._closing:
                    return
                self._kick_replay()
        except asyncio.CancelledError:
            # Cancelled from outside (a loop torn down without aclose): keep what is queued.
            self._spool_rows(list(self._queue))
            self._queue.clear()
            self._queued_at.clear()
            self._publish_depth()
            raise

    async def _wait_for_batch(self) -> None:
        """Return when a batch is due (full, its oldest record `flush_ms` old, a flush asked),
        when closing, or when the spool is due for a retry."""
        while True:
            now = time.monotonic()
            timeout: float | None = None
            if self._queue:
                if len(self._queue) >= self._batch_size or self._waiters or self._closing:
                    return
                timeout = self._queued_at[0] + self._flush_seconds - now
            elif self._closing:
                return
            elif self._spool_pending and not self._replaying:
                timeout = self._retry_at - now
            if timeout is not None and timeout <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    async def _drain(self) -> None:
        while self._queue:
            await self._write_next_batch()

    async def _write_next_batch(self) -> None:
        n = min(len(self._queue), self._batch_size)
        rows = [self._queue.popleft() for _ in range(n)]
        for _ in range(n):
            self._queued_at.popleft()
        self._in_flight = n
        self._publish_depth()
        try:
            if time.monotonic() < self._retry_at:
                self._spool_rows(rows)
            elif await self._traced_write(rows):
                self._metrics.log_rows_written.inc(len(rows))
            else:
                self._spool_rows(rows)
        except asyncio.CancelledError:
            self._spool_rows(rows)
            raise
        except Exception:
            # Never end the loop: whatever went wrong, the batch goes to the spool.
            log.exception("prediction_log_batch_failed", extra={"rows": n})
            self._spool_rows(rows)
        finally:
            self._in_flight = 0
            self._done += n
            self._publish_depth()
            self._notify()

    def _publish_depth(self) -> None:
        """Set the queue depth gauge: when a batch is taken or done, and every `batch_size`
        records queued, never per record (with several workers a gauge write is an mmap write,
        and a scrape cannot ask the other workers for a value: see observability.metrics)."""
        self._depth.set(self.pending)

    def _notify(self) -> None:
        waiting = []
        for target, waiter in self._waiters:
            if target <= self._done or self._closed:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    # --- the database -----------------------------------------------------------------------

    async def _traced_write(self, rows: list[Row]) -> bool:
        with tracing.span("prediction_log.flush", **{"modelyard.rows": len(rows)}) as span:
            written = await self._write(rows)
            if span is not None:
                span.set_attribute("modelyard.written", written)
            return written

    async def _write(self, rows: list[Row]) -> bool:
        """Insert `rows` idempotently; False if the database is unavailable (nothing is kept)."""
        try:
            await self._insert(rows)
        except Exception as exc:
            if not _is_refused_data(exc):
                self._back_off(exc, len(rows))
                return False
            log.warning(
                "prediction_log_batch_refused",
                extra={"rows": len(rows), "error": type(exc).__name__},
            )
            return await self._write_one_by_one(rows)
        self._backoff = 0.0
        self._retry_at = 0.0
        return True

    async def _write_one_by_one(self, rows: list[Row]) -> bool:
        """Isolate the rows the database refuses; store them without payloads, else reject them."""
        for row in rows:
            for attempt in (row, {**row, "inputs": None, "outputs": None}):
                try:
                    await self._insert([attempt])
                except Exception as exc:
                    if not _is_refused_data(exc):
                        self._back_off(exc, len(rows))
                        return False
                    continue
                break
            else:
                self._reject(row)
        return True

    async def _insert(self, rows: list[Row]) -> None:
        async with asyncio.timeout(INSERT_TIMEOUT_SECONDS), self._sessions() as db:
            # The table, not the ORM entity: the ORM's bulk-insert layer cost the event loop
            # more than building the statement's parameters.
            table = Prediction.metadata.tables[Prediction.__tablename__]
            stmt: postgresql.Insert | sqlite.Insert
            if db.get_bind().dialect.name == "postgresql":
                # Partitioned by time: the key is (id, created_at); a replay repeats both.
                stmt = postgresql.insert(table).on_conflict_do_nothing(
                    index_elements=["id", "created_at"]
                )
            else:
                stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])
            # Only the rows inserted now come back: a replayed row is never counted twice.
            returning = stmt.returning(table.c.id)
            inserted: set[int] = set()  # as integers: asyncpg returns its own UUID class
            # One transaction, several statements: building a statement's parameters holds the
            # event loop (~15 us a row), so a batch is built in slices with requests in between.
            for start in range(0, len(rows), STATEMENT_ROWS):
                result = await db.execute(returning, rows[start : start + STATEMENT_ROWS])
                inserted.update(found.int for found in result.scalars())
            # The rollups change in the insert's transaction: both commit or neither does.
            new = [r for r in rows if r["id"].int in inserted]
            await rollups.add(db, rollups.aggregate(new))
            await rollups.add_shadows(db, rollups.aggregate_shadows(new))
            await db.commit()

    def _back_off(self, exc: BaseException, rows: int) -> None:
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS) or BACKOFF_INITIAL_SECONDS
        self._retry_at = time.monotonic() + self._backoff
        log.warning(
            "prediction_log_database_unavailable",
            extra={"error": type(exc).__name__, "rows": rows, "retry_in_seconds": self._backoff},
        )

    # --- the spool --------------------------------------------------------------------------

    def _spool_rows(self, rows: Sequence[Row]) -> None:
        """Append rows to this process's spool file; what cannot be written is counted dropped."""
        if not rows:
            return
        lines = spool.lines(rows, self._metrics)
        try:
            file = self._spool_file or self._open_spool_file()
            file.write(lines)
            file.flush()
        except OSError:
            self._metrics.log_rows_dropped.inc(len(rows))
            log.exception("prediction_log_spool_failed", extra={"rows": len(rows)})
            with contextlib.suppress(OSError):
                self._close_spool_file()
            return
        self._metrics.log_rows_spooled.inc(len(rows))
        self._spool_pending = True
        if file.tell() >= SPOOL_FILE_MAX_BYTES:
            self._close_spool_file()

    def _open_spool_file(self) -> IO[bytes]:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._spool_seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._spool_seq:06d}"
        # Locked under a name replayers ignore, then renamed: no replayer can take the file
        # between its creation and the lock.
        tmp = self._spool_dir / f".{name}.tmp"
        file = tmp.open("ab")
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        tmp.rename(self._spool_dir / f"{name}{SPOOL_SUFFIX}")
        self._spool_file = file
        return file

    def _close_spool_file(self) -> None:
        file, self._spool_file = self._spool_file, None
        if file is not None:
            try:
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()

    def _reject(self, row: Row) -> None:
        self._metrics.log_rows_dropped.inc()
        log.error("prediction_log_row_rejected", extra={"prediction_id": str(row["id"])})
        try:
            folder = self._spool_dir / REJECTED_DIR
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / f"{os.getpid()}{SPOOL_SUFFIX}").open("ab") as file:
                file.write(spool.lines([row], self._metrics))
        except OSError:
            log.exception("prediction_log_reject_failed", extra={"prediction_id": str(row["id"])})

    @property
    def _replaying(self) -> bool:
        return self._replayer is not None and not self._replayer.done()

    def _kick_replay(self) -> None:
        if (
            self._spool_pending
            and not self._closing
            and not self._replaying
            and time.monotonic() >= self._retry_at
        ):
            self._replayer = asyncio.create_task(self._replay(), name="prediction-log-replay")

    async def _replay(self) -> None:
        """Write back every spool file this process can lock, oldest first."""
        try:
            # This process's own file is locked by it: close it so that it can be replayed.
            self._close_spool_file()
            self._spool_pending = False
            for path in spool.spool_files(self._spool_dir):
                if not await self._replay_file(path):
                    self._spool_pending = True
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("prediction_log_replay_failed")
            self._spool_pending = True
            self._back_off_quietly()
        finally:
            self._wakeup.set()

    async def _replay_file(self, path: Path) -> bool:
        """Replay one file and delete it; False if the database went away (the file stays)."""
        # Off the event loop: a file holds up to SPOOL_FILE_MAX_BYTES of JSON to parse.
        claiming = asyncio.ensure_future(asyncio.to_thread(spool.claim, path))
        try:
            claimed = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # The thread goes on regardless: close what it opens, or the lock outlives us.
            late = await claiming
            if late is not None:
                late[0].close()
            raise
        if claimed is None:
            return True  # another process appends to it or replays it
        file, path, rows, bad = claimed
        with file:
            if bad:
                self._metrics.log_rows_dropped.inc(bad)
                log.error("prediction_log_spool_lines_unreadable", extra={"lines": bad})
            for start in range(0, len(rows), self._batch_size):
                chunk = rows[start : start + self._batch_size]
                if not await self._write(chunk):
                    return False
                self._metrics.log_rows_replayed.inc(len(chunk))
            await asyncio.to_thread(path.unlink)
        log.info("prediction_log_spool_replayed", extra={"rows": len(rows), "file": path.name})
        return True

    def _back_off_quietly(self) -> None:
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS) or BACKOFF_INITIAL_SECONDS
        self._retry_at = time.monotonic() + self._backoff


def _is_refused_data(exc: BaseException) -> bool:
    """Tell whether the database answered and refused the rows (rather than being unreachable).

    Only errors known to be about the statement qualify; anything unknown is treated as an
    outage, which spools and retries the rows rather than dropping them.
    """
    if is_dependency_down(exc) or isinstance(exc, OSError | ConnectionError):
        return False
    if not isinstance(exc, sa_exc.StatementError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate[:2] not in _OUTAGE_SQLSTATE_CLASSES

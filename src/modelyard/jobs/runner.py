"""Running one batch job: claim it, stream its input in chunks, score each chunk, store it as a
part object, commit the progress, and assemble the parts into the output file at the end.

Resuming without duplicates: a chunk's part object is stored *before* the UPDATE that counts
it (`rows_done` and `parts_done` together), and parts are numbered. A run that dies between the
two leaves a part nobody counted; the run that takes over skips the `rows_done` rows already
counted, scores the next chunk again and stores it under the same part number, replacing the
orphan with the same bytes. The output file is written once, from the counted parts in order,
when the input is exhausted. Part objects live in the artifact store (`batch-jobs/<id>/`), so
this holds on S3 as on a local folder, and whichever host the next run lands on.

Memory: one chunk of parsed rows and its predictions, plus the store's read and write buffers.
Parsing and predicting run in threads: the event loop (a server's requests) never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelyard.artifacts.store import ArtifactStore, ObjectNotFound, ObjectStream, open_local
from modelyard.changes.events import Events
from modelyard.config import Settings
from modelyard.db.tables import BatchJob, ModelVersion, RegisteredModel
from modelyard.errors import ModelyardError, ServiceUnavailable, is_dependency_down
from modelyard.files import service as files_service
from modelyard.files import tabular
from modelyard.files.service import StorageQuotaExceeded, file_key
from modelyard.jobs import service
from modelyard.jobs.schemas import JobFormat, JobStatus
from modelyard.predictions.inputs import InvalidInput, check_batch, feature_count, to_batch
from modelyard.predictions.log.record import PredictionRecord
from modelyard.predictions.predictor import Predictor
from modelyard.predictions.targets import Target
from modelyard.registry.schemas import ModelStatus, Stage
from modelyard.serving.runtimes import Runtime

log = logging.getLogger(__name__)

PARTS_PREFIX = "batch-jobs"
# Bytes read from the store at a time, and copied into the output file at a time.
READ_BYTES = 1 << 20
# Most names of missing input columns a failure message lists.
LISTED_COLUMNS = 5
# What a job's failure says when the cause is ours, not the input's (the log has the rest).
INTERNAL_FAILURE = "the job failed on the server; see the server log"
# Runs a job gets when a run is cut short by an outage (the database or the store unreachable):
# each later run resumes from the last stored chunk once the interrupted run's lease lapses.
MAX_ATTEMPTS = 5

Heartbeat = Callable[[int, int | None], Awaitable[None]]


class JobFailure(Exception):
    """The job cannot succeed (its input or model is wrong); the message is shown to its owner."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _End(Enum):
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    LOST = "lost"  # the run no longer holds the job: it stops, and writes nothing more


def parts_folder(job_id: uuid.UUID) -> str:
    """Return the store prefix of a job's part objects (with its trailing slash)."""
    return f"{PARTS_PREFIX}/{job_id}/"


def part_key(job_id: uuid.UUID, index: int) -> str:
    """Return the store key of a job's part `index` (0-based, in input order)."""
    return f"{parts_folder(job_id)}part-{index:08d}"


def header_key(job_id: uuid.UUID) -> str:
    return f"{parts_folder(job_id)}header"


@dataclass(slots=True)
class _Run:
    job_id: uuid.UUID
    token: str
    owner_id: uuid.UUID
    api_key_id: uuid.UUID | None
    input_key: str
    output_key: str
    output_path: str
    input_path: str
    rows_done: int
    parts_done: int
    rows_total: int | None
    format: str
    # Bytes the output may take in its owner's storage quota (None: no quota), and those of the
    # parts stored so far.
    room: int | None = None
    output_bytes: int = 0


class Chunks(Protocol):
    """An input read in batches of the model's rows (blocking: called from a thread)."""

    def next_chunk(self) -> np.ndarray | None: ...

    def stop(self) -> None:
        """Make a `next_chunk` in progress end soon (it may need the event loop meanwhile)."""


async def _next_chunk(chunks: Chunks) -> np.ndarray | None:
    """Read the next chunk in a thread (cancelled: once the thread has stopped reading)."""
    return await tabular.read_in_thread(chunks, chunks.next_chunk)


class JobRunner:
    """Runs batch jobs in this process, with the components a server (or a worker) holds."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        store: ArtifactStore,
        predictor: Predictor,
        events: Events,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.predictor = predictor
        self.events = events
        # A chunk is at most what one prediction request may be (the predictor's input limits,
        # the API's): rows, and values over all of them (rows x features) however wide the model.
        self.input_limits = predictor.limits
        self.chunk_rows = min(settings.batch_job_chunk_rows, self.input_limits.max_rows)
        self.limits = tabular.TabularLimits.of(settings, max_rows=settings.batch_job_max_rows)
        self.lease = timedelta(seconds=settings.batch_job_lease_seconds)
        self.max_running = settings.batch_job_max_running_per_account
        self.tmp_dir = settings.data_dir / "tmp" / "batch-jobs"
        self.quota_bytes = settings.storage_quota_bytes

    async def run(self, job_id: uuid.UUID, *, heartbeat: Heartbeat | None = None) -> bool:
        """Run the job if it can be claimed (queued, or its worker's lease lapsed); return
        whether this call ran it. `heartbeat(rows_done, rows_total)` is awaited after every
        chunk (the queue's own liveness record)."""
        token = uuid.uuid4().hex
        async with self.sessions() as db:
            job = await service.claim(
                db, job_id, token=token, lease=self.lease, max_running=self.max_running
            )
            if job is None:
                return False
            run = _Run(
                job_id=job.id,
                token=token,
                owner_id=job.owner_id,
                api_key_id=job.api_key_id,
                input_key=file_key(job.owner_id, job.input_path),
                output_key=file_key(job.owner_id, job.output_path),
                output_path=job.output_path,
                input_path=job.input_path,
                rows_done=job.rows_done,
                parts_done=job.parts_done,
                rows_total=job.rows_total,
                format=job.format,
            )
            cancel_requested = job.cancel_requested
            attempt = job.attempts
            target = await _target(db, job)
            await self.events.record(
                service.action(
                    "batch_job.started", job, attempt=job.attempts, from_row=job.rows_done
                )
            )
        log.info(
            "batch_job_started",
            extra={"job_id": str(job_id), "from_row": run.rows_done, "attempt": job.attempts},
        )
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(run, lost), name=f"batch-job-lease-{job_id}")
        try:
            if cancel_requested:
                end = _End.CANCELLED
            elif isinstance(target, str):
                raise JobFailure(target)
            else:
                end = await self._execute(run, target, lost, heartbeat)
        except JobFailure as exc:
            await self._end(run, JobStatus.FAILED, error=exc.message, target=target)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                # The worker is stopping: let the next one take the job over at once.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release(run))
                raise
            if _is_outage(exc) and attempt < MAX_ATTEMPTS:
                # Not the job's fault: the lease is left to lapse (a pause as long as the lease),
                # then a worker's sweep resumes the job from its last stored chunk.
                log.warning(
                    "batch_job_interrupted",
                    extra={"job_id": str(job_id), "attempt": attempt, "error": type(exc).__name__},
                )
                return True
            log.exception("batch_job_error", extra={"job_id": str(job_id)})
            await self._end(run, JobStatus.FAILED, error=INTERNAL_FAILURE, target=target)
        else:
            if end is _End.SUCCEEDED:
                await self._end(run, JobStatus.SUCCEEDED, target=target)
            elif end is _End.CANCELLED:
                await self._end(run, JobStatus.CANCELLED, target=target)
            else:
                log.warning("batch_job_lost", extra={"job_id": str(job_id)})
                await self._forget_if_erased(run)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        return True

    # --- the run ------------------------------------------------------------------------------

    async def _execute(
        self, run: _Run, target: Target, lost: asyncio.Event, heartbeat: Heartbeat | None
    ) -> _End:
        runtime = await self.predictor.runtime(target)
        await self._measure_room(run)
        async with self._input(run, runtime, target) as chunks:
            return await self._score(run, chunks, runtime, lost, heartbeat)

    @contextlib.asynccontextmanager
    async def _input(self, run: _Run, runtime: Runtime, target: Target) -> AsyncIterator[Chunks]:
        """Open the job's input as chunks, counting its rows first if not yet known."""
        names = target.feature_names or runtime.feature_names
        wanted = tabular.Wanted(
            names=tuple(names) if names else None,
            count=feature_count(runtime, target.feature_names),
            by_position=True,
        )
        is_parquet = run.format == JobFormat.PARQUET
        if not is_parquet and run.rows_total is None:
            await self._set_total(run, await self._count_rows(run))
        stream = await self._open_input(run)
        try:
            async with tabular.open_table(
                stream,
                format=tabular.Format.PARQUET if is_parquet else tabular.Format.CSV,
                wanted=wanted,
                limits=self.limits,
                what="the input file",
                tmp_dir=self.tmp_dir,
            ) as reader:
                if run.rows_total is None and reader.rows_total is not None:
                    await self._set_total(run, reader.rows_total)  # Parquet: from its metadata
                width = len(reader.selection.positions)
                try:
                    # Before any row is scored: a row wider than a request may be never fits.
                    check_batch(
                        1, width, expected=None, limits=self.input_limits, what="the input file"
                    )
                except InvalidInput as exc:
                    raise JobFailure(exc.detail) from exc
                yield InputChunks(
                    reader,
                    runtime=runtime,
                    chunk_rows=chunk_rows(self.chunk_rows, self.input_limits.max_elements, width),
                    skip_rows=run.rows_done,
                )
        except tabular.TabularError as exc:
            raise JobFailure(exc.message) from exc
        finally:
            await stream.aclose()

    async def _set_total(self, run: _Run, rows_total: int) -> None:
        run.rows_total = rows_total
        async with self.sessions() as db:
            await service.set_total(db, run.job_id, token=run.token, rows_total=rows_total)

    async def _open_input(self, run: _Run) -> ObjectStream:
        try:
            return await self.store.open(run.input_key, chunk_size=READ_BYTES)
        except ObjectNotFound as exc:
            raise JobFailure(f"the input file {run.input_path!r} no longer exists") from exc

    async def _score(
        self,
        run: _Run,
        chunks: Chunks,
        runtime: Runtime,
        lost: asyncio.Event,
        heartbeat: Heartbeat | None,
    ) -> _End:
        """Score the chunks left, store each as a part, then assemble the output."""
        while True:
            batch = await _next_chunk(chunks)
            if batch is None:
                break
            if lost.is_set():
                return _End.LOST
            # CPU-bound: off the event loop (a server's requests go on meanwhile).
            started = time.perf_counter()
            try:
                predictions, probabilities = await asyncio.to_thread(runtime.predict, batch)
            except (ValueError, TypeError) as exc:
                raise JobFailure(
                    f"the model could not predict rows {run.rows_done + 1}.."
                    f"{run.rows_done + len(batch)}: {type(exc).__name__}"
                ) from exc
            except ModelyardError as exc:  # a time or memory budget of the runtime
                raise JobFailure(exc.detail) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            _check_finite(predictions, probabilities)
            if run.parts_done == 0:
                header = _header(runtime, predictions, probabilities)
                self._count_output(run, len(header.encode()))
                await self._put_text(header_key(run.job_id), header)
            # Formatting a chunk's lines is CPU work too: off the event loop.
            text = await asyncio.to_thread(_rows_text, run.rows_done, predictions, probabilities)
            self._count_output(run, len(text.encode()))
            await self._put_text(part_key(run.job_id, run.parts_done), text)
            async with self.sessions() as db:
                asked = await service.record_progress(
                    db,
                    run.job_id,
                    token=run.token,
                    rows_done=run.rows_done + len(batch),
                    parts_done=run.parts_done + 1,
                    inference_ms=elapsed_ms,
                    lease=self.lease,
                )
            if asked is None:
                return _End.LOST
            run.rows_done += len(batch)
            run.parts_done += 1
            if asked:
                return _End.CANCELLED
            if heartbeat is not None:
                await heartbeat(run.rows_done, run.rows_total)
        if run.parts_done == 0:
            raise JobFailure(f"the input file {run.input_path!r} has no rows")
        if lost.is_set():
            return _End.LOST
        await self._assemble(run)
        return _End.SUCCEEDED

    async def _count_rows(self, run: _Run) -> int:
        """Count the input's lines (less the header): a fast pass, exact for files without
        quoted line breaks; the final count replaces it when the job succeeds."""
        stream = await self._open_input(run)
        lines, last = 0, b"\n"
        try:
            async for piece in stream:
                lines += piece.count(b"\n")
                last = piece[-1:] or last
        finally:
            await stream.aclose()
        if last != b"\n":
            lines += 1
        return max(lines - 1, 0)

    async def _put_text(self, key: str, text: str) -> None:
        # File system calls leave the event loop: a server's requests go on meanwhile.
        path = await asyncio.to_thread(_write_temp, self.tmp_dir, text)
        try:
            await self.store.put_file(key, path)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _measure_room(self, run: _Run) -> None:
        """Learn how much of the owner's storage quota the output may take (a full quota fails
        the job before it scores a row), and how much the parts stored before took."""
        try:
            async with self.sessions() as db:
                run.room = await files_service.room(
                    db, self.store, run.owner_id, limit=self.quota_bytes, what="the job's output"
                )
        except StorageQuotaExceeded as exc:
            raise JobFailure(exc.detail) from exc
        if run.room is not None and run.parts_done:
            run.output_bytes = sum(
                [info.size async for info in self.store.list(parts_folder(run.job_id))]
            )

    def _count_output(self, run: _Run, size: int) -> None:
        """Count a part's bytes towards the output; fail the job as soon as the output cannot
        fit in the quota (checked again, exactly, when the output is stored)."""
        run.output_bytes += size
        if run.room is not None and run.output_bytes > run.room:
            raise JobFailure(
                StorageQuotaExceeded(
                    used=self.quota_bytes - run.room,
                    limit=self.quota_bytes,
                    needed=run.output_bytes,
                    what="the job's output",
                ).detail
            )

    async def _store_output(self, run: _Run, path: Path) -> None:
        """Store the assembled output at its path, within the owner's storage quota.

        Raises:
            JobFailure: it does not fit; nothing is stored.
        """
        size = (await asyncio.to_thread(path.stat)).st_size
        try:
            async with self.sessions() as db:
                reservation = await files_service.reserve(
                    db,
                    self.store,
                    run.owner_id,
                    size=size,
                    limit=self.quota_bytes,
                    what="the job's output",
                )
        except StorageQuotaExceeded as exc:
            raise JobFailure(exc.detail) from exc
        async with self.sessions() as db:
            try:
                await self.store.put_file(run.output_key, path)
            except BaseException:
                await files_service.release_quietly(db, reservation)
                raise
            await files_service.settle(
                db, reservation, owner_id=run.owner_id, path=run.output_path, size=size
            )

    async def _assemble(self, run: _Run) -> None:
        """Write the header and the counted parts, in order, to the output file."""
        path = await asyncio.to_thread(_write_temp, self.tmp_dir, "")
        try:
            out = await open_local(path, "ab")
            try:
                keys = [header_key(run.job_id)]
                keys += [part_key(run.job_id, i) for i in range(run.parts_done)]
                for key in keys:
                    async with await self.store.open(key, chunk_size=READ_BYTES) as part:
                        async for piece in part:
                            await asyncio.to_thread(out.write, piece)
            finally:
                await asyncio.to_thread(out.close)
            await self._store_output(run, path)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _keep_lease(self, run: _Run, lost: asyncio.Event) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.sessions() as db:
                    holds = await service.renew(db, run.job_id, token=run.token, lease=self.lease)
            except Exception:
                # A database blip: the lease may still hold; the next renewal tells.
                log.warning("batch_job_lease_not_renewed", extra={"job_id": str(run.job_id)})
                continue
            if not holds:
                lost.set()
                return

    async def _forget_if_erased(self, run: _Run) -> None:
        """Delete the parts of a job whose row went with its owner's account: nobody resumes it."""
        async with self.sessions() as db:
            if await service.job_exists(db, run.job_id):
                return  # another run holds it now: the parts are its
        await self._delete_parts(run)

    async def _release(self, run: _Run) -> None:
        async with self.sessions() as db:
            await service.renew(db, run.job_id, token=run.token, lease=timedelta(seconds=-1))

    async def _end(
        self,
        run: _Run,
        status: JobStatus,
        *,
        target: Target | str,
        error: str | None = None,
    ) -> None:
        async with self.sessions() as db:
            job = await service.finish(
                db,
                run.job_id,
                token=run.token,
                status=status,
                error=error,
                rows_total=run.rows_done if status == JobStatus.SUCCEEDED else None,
            )
        if job is None:
            log.warning("batch_job_lost", extra={"job_id": str(run.job_id)})
            await self._forget_if_erased(run)
            return
        log.info(
            "batch_job_finished",
            extra={"job_id": str(run.job_id), "status": str(status), "rows": job.rows_done},
        )
        if isinstance(target, Target) and status != JobStatus.CANCELLED:
            self._log_summary(job, target, error)
        await self.events.record(
            service.action(
                "batch_job.finished",
                job,
                outcome="success" if status == JobStatus.SUCCEEDED else "failure",
                status=str(status),
                rows_done=job.rows_done,
                error=error,
            )
        )
        await self._delete_parts(run)

    def _log_summary(self, job: BatchJob, target: Target, error: str | None) -> None:
        """Log the job as one prediction: its rows and total inference time, not each row."""
        self.predictor.log.record(
            PredictionRecord.of(
                target,
                user_id=job.owner_id,
                api_key_id=job.api_key_id,
                protocol="batch",
                error=error,
                inputs={"batch_job_id": str(job.id), "input_path": job.input_path},
                outputs={"output_path": job.output_path, "rows": job.rows_done}
                if error is None
                else None,
                n_rows=job.rows_done,
                inference_time_ms=job.inference_time_ms,
            )
        )

    async def _delete_parts(self, run: _Run) -> None:
        try:
            async for info in self.store.list(parts_folder(run.job_id)):
                await self.store.delete(info.key)
        except ModelyardError:
            # Left for a later cleanup; the job's outcome stands.
            log.warning("batch_job_parts_not_deleted", extra={"job_id": str(run.job_id)})


async def _target(db: AsyncSession, job: BatchJob) -> Target | str:
    """Return what the job's version serves, or why it no longer can."""
    row = (
        await db.execute(
            select(RegisteredModel, ModelVersion)
            .join(ModelVersion, ModelVersion.model_id == RegisteredModel.id)
            .where(ModelVersion.id == job.version_id)
        )
    ).first()
    if row is None:
        return f"version {job.version} of model {job.model_name!r} no longer exists"
    model, version = row
    if model.status == ModelStatus.ARCHIVED or version.stage == Stage.ARCHIVED:
        return f"version {job.version} of model {job.model_name!r} is archived"
    return Target.of(model, version)


def _write_temp(folder: Path, text: str) -> Path:
    """Write `text` to a new file in `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(name)


def _check_finite(predictions: np.ndarray, probabilities: np.ndarray | None) -> None:
    for values in (predictions, probabilities):
        if values is not None and values.dtype.kind in "fc" and not np.isfinite(values).all():
            raise JobFailure("the model produced a value that is not a finite number")


def _header(runtime: Runtime, predictions: np.ndarray, probabilities: np.ndarray | None) -> str:
    names = ["row"]
    if predictions.ndim == 2:
        names += [f"prediction_{i}" for i in range(predictions.shape[1])]
    else:
        names.append("prediction")
    if probabilities is not None:
        classes = runtime.classes or list(range(probabilities.shape[1]))
        names += [f"proba_{c}" for c in classes]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(names)
    return out.getvalue()


def _rows_text(first_row: int, predictions: np.ndarray, probabilities: np.ndarray | None) -> str:
    """Return a chunk's output lines: the input row number (0-based), predictions, probabilities."""
    columns: list[Any] = [range(first_row, first_row + len(predictions))]
    if predictions.ndim == 2:
        columns += predictions.T.tolist()
    else:
        columns.append(predictions.tolist())
    if probabilities is not None:
        columns += probabilities.T.tolist()
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(zip(*columns, strict=True))
    return out.getvalue()


# --- reading the input in chunks ------------------------------------------------------------


def chunk_rows(rows: int, max_values: int, width: int) -> int:
    """Return how many rows of `width` values a chunk takes: at most `rows`, and at most
    `max_values` values in all (one row at least)."""
    return max(1, min(rows, max_values // max(1, width)))


class InputChunks:
    """A job's input (any `tabular.TableReader`) as the model's batches of at most `chunk_rows`
    rows. Columns are chosen by the reader's rules (`tabular.choose_columns`): by name when the
    file names every feature, else every column in order when there are as many as the model
    takes. Blocking: call it from a thread.
    """

    def __init__(
        self,
        reader: tabular.TableReader,
        *,
        runtime: Runtime,
        chunk_rows: int,
        skip_rows: int = 0,
    ) -> None:
        self._reader = reader
        self._dtype = runtime.input_dtype
        self.chunk_rows = chunk_rows
        self._skip = skip_rows

    def stop(self) -> None:
        self._reader.stop()

    def next_chunk(self) -> np.ndarray | None:
        """Return the next batch, or None at the end of the file.

        Raises:
            JobFailure: a row is ragged or too long, or holds a value that is not a finite
                number (the message names the row and column, never the value).
        """
        # One array of the chunk's size, filled block by block: never the blocks and a copy of
        # them at once. (Pages of rows a short file never fills are never touched.)
        matrix: np.ndarray | None = None
        rows = 0
        first = 0
        try:
            if self._skip:
                self._reader.skip(self._skip)
                self._skip = 0
            while rows < self.chunk_rows:
                block = self._reader.read(self.chunk_rows - rows)
                if block is None:
                    break
                self._check_finite(block)
                if matrix is None:
                    matrix = np.empty((self.chunk_rows, block.values.shape[1]), dtype=np.float64)
                    first = block.first_row
                matrix[rows : rows + block.rows] = block.values
                rows += block.rows
        except tabular.TabularError as exc:
            raise JobFailure(exc.message) from exc
        if matrix is None:
            return None
        try:
            return to_batch(matrix[:rows], self._dtype, is_json=False)
        except InvalidInput as exc:
            raise JobFailure(f"rows {first}..{first + rows - 1}: {exc.detail}") from exc

    def _check_finite(self, block: tabular.Block) -> None:
        finite = np.isfinite(block.values)
        if finite.all():
            return
        offset, slot = (int(i) for i in np.argwhere(~finite)[0])
        label = self._reader.selection.labels[slot]
        raise JobFailure(
            f"{block.where(offset)}, column {label}: the value is missing or not a finite number"
        )


def _is_outage(exc: BaseException) -> bool:
    """Tell whether `exc` means a service the job needs is unreachable (not a bug, not bad
    input): the database, or the store (`StorageUnavailable`)."""
    return isinstance(exc, ServiceUnavailable) or is_dependency_down(exc)

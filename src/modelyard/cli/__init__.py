"""The server's commands: serve, worker, migrate, create-admin, gc (and version).

The `modelyard` command belongs to the client package (modelyard_client.cli); the server adds
these commands to it through the `modelyard.commands` entry point (`register`). `app` alone is
the server's commands, for tests and for `python -m modelyard.cli`.

Each command imports what it uses, so a command's process holds only its own libraries. With
`--workers N`, `serve` imports the serving stack on purpose before it forks its workers, who
share those pages (`modelyard.cli.supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING

import typer
import uvicorn
from pydantic import ValidationError

from modelyard import __version__
from modelyard.cli import supervisor
from modelyard.config import Settings
from modelyard.edge.server import EdgeLimits, EdgeProtocolFactory
from modelyard.errors import ModelyardError
from modelyard.observability import metrics
from modelyard.serving import probehost

if TYPE_CHECKING:  # imported by the command that uses it (see the module docstring)
    from modelyard.audit.service import Verification
    from modelyard.predictions.log.maintenance import MaintenanceReport

app = typer.Typer(help="Modelyard: model registry and serving platform.", no_args_is_help=True)

ADMIN_PASSWORD_ENV = "MODELYARD_ADMIN_PASSWORD"  # noqa: S105 - a variable name, not a secret


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"configuration error: {error['msg']}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def version() -> None:
    """Print the Modelyard version."""
    typer.echo(__version__)


@app.command()
def migrate() -> None:
    """Apply pending database migrations, and say which."""
    from modelyard.db import migrate as migrations

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.sqlalchemy_url
    before = migrations.current(url)
    migrations.upgrade(url)
    after = ", ".join(migrations.current(url))
    if not before:
        typer.echo(f"created the database schema at revision {after}")
    elif ", ".join(before) == after:
        typer.echo(f"database already at the latest revision {after}: nothing to migrate")
    else:
        typer.echo(f"migrated the database from revision {', '.join(before)} to {after}")


@app.command()
def serve(
    host: str | None = typer.Option(
        None,
        help="Address to listen on [default: $MODELYARD_HOST, else 127.0.0.1].",
        show_default=False,
    ),
    port: int | None = typer.Option(
        None, help="Port to listen on [default: $MODELYARD_PORT, else 8000].", show_default=False
    ),
    workers: int | None = typer.Option(
        None,
        min=1,
        help="Worker processes [default: $MODELYARD_WORKERS, else 1].",
        show_default=False,
    ),
) -> None:
    """Serve the API (in development, pending migrations are applied first)."""
    settings = _settings()
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    workers = settings.workers if workers is None else workers
    # The workers read the address they serve on from their settings (the URLs of the
    # "started" line): the options win over the environment there too.
    os.environ["MODELYARD_HOST"], os.environ["MODELYARD_PORT"] = host, str(port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.is_production:
        # In a child process: Alembic and the migrations would stay in this one's memory.
        migrated = subprocess.run([sys.executable, "-m", "modelyard", "migrate"], check=False)
        if migrated.returncode:
            raise typer.Exit(migrated.returncode)
    # Uvicorn handles SIGTERM itself (drain, lifespan shutdown), then restores the previous
    # handler and raises the signal again: make that previous handler a clean exit, status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    # The workers read their settings again: `--workers` too (their share of the cores).
    os.environ["MODELYARD_WORKERS"] = str(workers)
    with _probe_host(settings):
        if workers == 1:
            # One process: its metrics live in memory (an inherited folder would only cost
            # mmap writes on every request).
            os.environ.pop(metrics.MULTIPROC_DIR_ENV, None)
            _run_uvicorn(settings, host, port, workers)
            return
        # Several: each worker writes its values to a file in a fresh folder that any worker's
        # /metrics merges, so one scrape shows the sum over the workers.
        with metrics.multiprocess_dir():
            # Forked from here: what they all import is imported once, and shared.
            supervisor.preload()
            with supervisor.forked_workers():
                _run_uvicorn(settings, host, port, workers)


@contextlib.contextmanager
def _probe_host(settings: Settings) -> Iterator[None]:
    """Start the host's upload probe before the workers, and hold it until they have stopped.

    It imports the model libraries while the workers start, so the first upload finds it warm;
    the workers share it. A `serving` process takes no uploads and starts none.
    """
    if settings.role == "serving":
        yield
        return
    path = probehost.socket_path(settings.data_dir, settings.probe_socket)
    try:
        started = probehost.ensure_running(path)
        lease, _ = probehost.lease(path)
    except (OSError, probehost.ProbeHostUnavailable) as exc:
        # The workers start it themselves when they can; uploads answer 503 until then.
        typer.echo(f"the upload probe did not start: {exc}", err=True)
        yield
        return
    try:
        yield
    finally:
        lease.close()  # the probe process exits once the workers' leases are gone too
        if started is not None:
            try:
                started.wait(timeout=10)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()


def _run_uvicorn(settings: Settings, host: str, port: int, workers: int) -> None:
    uvicorn.run(
        "modelyard.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        # The app believes X-Forwarded-* from MODELYARD_FORWARDED_ALLOW_IPS only; uvicorn's own
        # handling would trust any local peer.
        proxy_headers=False,
        server_header=False,
        # A callable, not a class (hence the ignore): uvicorn calls it per connection (see
        # modelyard.edge.server).
        http=EdgeProtocolFactory(EdgeLimits.from_settings(settings)),  # type: ignore[arg-type]
        ws="none",
        timeout_keep_alive=math.ceil(settings.idle_timeout_seconds),
        limit_concurrency=settings.max_concurrency,
    )


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


@app.command("create-admin")
def create_admin(
    email: str = typer.Option(..., help="The admin's email."),
    password: str | None = typer.Option(
        None,
        help=f"The password; else ${ADMIN_PASSWORD_ENV}, else asked for.",
        show_default=False,
    ),
    promote_existing: bool = typer.Option(
        False,
        "--promote-existing",
        help="Make an existing non-admin account with this email the admin (only if you know "
        "who registered it: anyone can register any address).",
    ),
) -> None:
    """Create an admin account (or reset an admin's password); an existing non-admin account
    is promoted only with --promote-existing, and every credential it held is ended."""
    from modelyard.auth.schemas import MIN_PASSWORD_LENGTH

    settings = _settings()
    password = password or os.environ.get(ADMIN_PASSWORD_ENV)
    if not password:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_LENGTH:
        typer.echo(f"the password needs at least {MIN_PASSWORD_LENGTH} characters", err=True)
        raise typer.Exit(2)
    try:
        created = asyncio.run(_create_admin(settings, email, password, promote_existing))
    except (ModelyardError, ValidationError) as exc:
        typer.echo(f"cannot create the admin: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{'created' if created else 'promoted'} admin {email}")


async def _create_admin(
    settings: Settings, email: str, password: str, promote_existing: bool
) -> bool:
    from modelyard.auth import service as auth_service
    from modelyard.auth.passwords import PasswordHasher
    from modelyard.composition import open_core

    # The running server's workers share the host's epochs (and, with Redis, every replica hears
    # the event): they drop what they remembered of the account's old credentials at once.
    async with open_core(settings) as core, core.sessions() as db:
        _, created = await auth_service.ensure_admin(
            db,
            email,
            password,
            passwords=PasswordHasher(settings),
            events=core.events,
            promote_existing=promote_existing,
        )
        return created


@app.command()
def gc(
    older_than_hours: float = typer.Option(
        24.0, min=0.0, help="Keep unreferenced objects younger than this (uploads in flight)."
    ),
) -> None:
    """Delete stored artifacts that no model version points to, and erased accounts' files."""
    settings = _settings()
    try:
        removed = asyncio.run(_gc(settings, timedelta(hours=older_than_hours)))
    except ModelyardError as exc:
        typer.echo(f"gc failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"removed {removed} unreferenced artifact(s)")


async def _gc(settings: Settings, older_than: timedelta) -> int:
    from modelyard.artifacts.gc import collect_garbage
    from modelyard.composition import open_core
    from modelyard.files import service as files_service
    from modelyard.registry import service as registry_service

    async with open_core(settings) as core:

        async def referenced_artifacts(keys: list[str]) -> set[str]:
            async with core.sessions() as db:
                return await registry_service.referenced_keys(db, keys)

        async def referenced_files(keys: list[str]) -> set[str]:
            async with core.sessions() as db:
                return await files_service.referenced_keys(db, keys)

        removed = await collect_garbage(
            core.store,
            prefix=registry_service.ARTIFACT_PREFIX,
            referenced=referenced_artifacts,
            older_than=older_than,
        )
        # Files have no rows: an area is referenced by its user (gone if an erasure could not
        # empty it).
        return removed + await collect_garbage(
            core.store,
            prefix=files_service.FILES_PREFIX + "/",
            referenced=referenced_files,
            older_than=older_than,
        )


@app.command()
def maintain() -> None:
    """Make the prediction log's coming partitions and drop what is past retention, once."""
    settings = _settings()
    report = asyncio.run(_maintain(settings))
    if not report.ran:
        typer.echo("another process is maintaining the prediction log; nothing done")
        return
    typer.echo(
        f"partitions created: {len(report.partitions_created)}, "
        f"dropped: {len(report.partitions_dropped)}, raw rows deleted: {report.rows_deleted}, "
        f"rollups deleted: {report.rollups_deleted}"
    )


async def _maintain(settings: Settings) -> MaintenanceReport:
    from modelyard.composition import open_core
    from modelyard.predictions.log import maintenance

    async with open_core(settings) as core:
        return await maintenance.maintain(core.engine, settings)


@app.command()
def worker() -> None:
    """Run batch prediction jobs from the Redis queue (needs MODELYARD_REDIS_URL) until
    SIGTERM or SIGINT; without Redis the server runs jobs itself."""
    settings = _settings()
    if not settings.redis_url:
        typer.echo(
            "modelyard worker needs MODELYARD_REDIS_URL: without Redis, every server process "
            "runs batch jobs itself",
            err=True,
        )
        raise typer.Exit(2)
    asyncio.run(_worker(settings))


async def _worker(settings: Settings) -> None:
    from modelyard.composition import open_components
    from modelyard.jobs.queue import RedisJobs, run_worker
    from modelyard.observability.logging import configure_logging

    configure_logging(settings)
    async with open_components(settings, role="worker") as parts:
        assert isinstance(parts.batch_jobs, RedisJobs)  # noqa: S101 - the worker role's queue
        assert parts.job_runner is not None  # noqa: S101 - and its runner
        await run_worker(
            settings, jobs=parts.batch_jobs, runner=parts.job_runner, sessions=parts.sessions
        )


audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every row of the audit log's hash chain; exit 1 at the first broken link."""
    result = asyncio.run(_audit_verify(_settings()))
    if not result.intact:
        typer.echo(
            f"audit log BROKEN at row {result.broken_seq}: {result.problem} "
            f"({result.checked} row(s) before it are intact)",
            err=True,
        )
        raise typer.Exit(1)
    if result.head_seq is None:
        typer.echo("audit log is empty")
        return
    typer.echo(
        f"audit log intact: {result.checked} row(s); head {result.head_seq} {result.head_hash}"
    )


async def _audit_verify(settings: Settings) -> Verification:
    from modelyard.audit import service as audit_service
    from modelyard.composition import open_core

    async with open_core(settings) as core, core.sessions() as db:
        return await audit_service.verify(db)


def register(root: typer.Typer) -> None:
    """Add the server's commands to the `modelyard` command (the client owns `version`)."""
    for command in app.registered_commands:
        if command.callback is not version:
            root.registered_commands.append(command)
    root.registered_groups.extend(app.registered_groups)


def main() -> None:
    """Run `modelyard`, client and server commands, without needing installed entry points
    (`python -m modelyard` in a checkout)."""
    try:
        from modelyard_client.cli import make_app
    except ImportError:
        # modelyard-client is a dependency, but an environment installed before it existed
        # lacks it until reinstalled (`make install`): keep serving meanwhile.
        typer.echo("warning: modelyard-client is not installed; server commands only", err=True)
        app(prog_name="modelyard")
        return
    root = make_app()
    register(root)
    root(prog_name="modelyard")

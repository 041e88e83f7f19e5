"""The client's commands: login, models, push, versions, promote, alias, download, predict,
keys, experiments, files, predictions, analytics, jobs, drift, compare."""

from __future__ import annotations

import json
import platform
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from modelyard_client import __version__, credentials
from modelyard_client import types as t
from modelyard_client.cli import EXIT_REFUSED
from modelyard_client.cli.output import jsonable, print_json, print_record, print_table, say
from modelyard_client.errors import (
    ConfigurationError,
    Forbidden,
    InvalidInput,
    ModelyardClientError,
)
from modelyard_client.inputs import finite, read_input_file
from modelyard_client.sso import browser_sign_in
from modelyard_client.sync import Client
from modelyard_client.transfer import Progress as ProgressCallback

PROGRESS_MIN_BYTES = 1024 * 1024  # smaller transfers finish before a bar would help

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Limit = Annotated[int, typer.Option(min=1, max=100, help="Items per page.")]
Offset = Annotated[int, typer.Option(min=0, help="Items to skip.")]
VersionOpt = Annotated[int | None, typer.Option("--version", "-v", min=1, help="Version number.")]
AliasOpt = Annotated[str | None, typer.Option(help="Alias, e.g. champion.")]
StageOpt = Annotated[str | None, typer.Option(help="Stage, e.g. production or staging.")]

MODEL_COLUMNS = ("name", "latest_version", "production_version", "version_count", "task_type", "status", "updated_at")  # fmt: skip
VERSION_COLUMNS = ("version", "stage", "framework", "format", "task_type", "file_size", "created_at")  # fmt: skip


def _credentials(ctx: typer.Context) -> credentials.Credentials:
    options: dict[str, Any] = ctx.find_root().obj or {}
    return credentials.resolve(options.get("url"), api_key=options.get("api_key"))


def _client(ctx: typer.Context) -> Client:
    """A client with the command's credentials; without any, the user is told to log in
    (rather than seeing a refusal or a connection failure from a server never chosen)."""
    found = _credentials(ctx)
    if not found.headers:
        raise ConfigurationError(
            f"not logged in to {found.url}: run `modelyard login"
            + ("" if found.url == credentials.DEFAULT_URL else f" --url {found.url}")
            + f"` (or set {credentials.API_KEY_ENV})"
        )
    return Client(found.url, api_key=found.api_key, token=found.token)


def _pairs(values: list[str] | None, what: str, *, numbers: bool) -> dict[str, Any] | None:
    """Parse repeated KEY=VALUE options; values as numbers (metrics) or JSON-ish (params)."""
    if not values:
        return None
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {item!r} is not KEY=VALUE")
        if numbers:
            try:
                out[key] = finite(f"{what} {key!r}", raw)
            except InvalidInput as exc:
                raise typer.BadParameter(str(exc)) from exc
        else:
            try:
                out[key] = json.loads(raw)
            except ValueError:
                out[key] = raw
    return out


@contextmanager
def _progress_bar(label: str, size: int, show: bool | None) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr for transfers of `size` bytes (auto: from 1 MiB)."""
    if show is False or (show is None and size < PROGRESS_MIN_BYTES):
        yield None
        return
    columns = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with _bar(label, size, columns) as advance:
        yield advance


@contextmanager
def _bar(
    label: str, total: int | None, columns: tuple[ProgressColumn, ...]
) -> Iterator[ProgressCallback]:
    """A progress bar on stderr: the label, the bar, then `columns`; total 0 or None: unknown."""
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), *columns, console=Console(stderr=True)
    )
    task = bar.add_task(label, total=total or None)
    with bar:

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield advance


# --- root ------------------------------------------------------------------------------------


def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="Server URL (default: $MODELYARD_URL, else the stored login)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key (default: $MODELYARD_API_KEY, else the stored login)."),
    ] = None,
) -> None:
    ctx.obj = {"url": url, "api_key": api_key}


def version(as_json: JsonFlag = False) -> None:
    """Print the client's version (and the server package's, when installed)."""
    from importlib.metadata import entry_points

    from modelyard_client.cli import ENTRY_POINT_GROUP

    versions = {"modelyard-client": __version__}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.dist is not None:
            versions[entry.dist.name] = entry.dist.version
    if as_json:
        print_json(versions)
        return
    for name, number in versions.items():
        typer.echo(f"{name} {number}")


def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Log in with this API key (stored as is).")
    ] = None,
    email: Annotated[
        str | None, typer.Option(help="Log in with an email and password instead.")
    ] = None,
    password: Annotated[str | None, typer.Option(help="The password (default: asked for).")] = None,
    sso: Annotated[
        bool, typer.Option("--sso", help="Sign in with the server's single sign-on, in a browser.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Log in and store the server URL and an API key (file mode 0600).

    With an email and password, or with --sso (a browser signs in at the server's identity
    provider and hands this command a one-time code on 127.0.0.1), an API key named after this
    machine is made and stored, with the scopes read, predict and write (and admin for an admin).
    """
    root: dict[str, Any] = ctx.find_root().obj or {}
    url = credentials.normalize_url(
        url or root.get("url") or typer.prompt("Server URL", default=credentials.DEFAULT_URL)
    )
    api_key = None if sso else api_key or root.get("api_key")
    if not api_key and not email and not sso:
        email = typer.prompt("Email")
    key_id: str | None = None
    if sso:
        code, verifier = browser_sign_in(url, open_browser=_open_browser)
        with Client(url) as client:
            client.login_sso(code, verifier)
            user = client.me()
            created = client.create_api_key(
                f"modelyard cli on {platform.node() or 'host'}",
                scopes=[*CLI_SCOPES, "admin"] if user.is_admin else CLI_SCOPES,
            )
        api_key, key_id = created.key, created.id
    elif api_key:
        with Client(url, api_key=api_key) as client:
            user = client.me()
    else:
        assert email is not None  # noqa: S101 - asked for above
        password = password or typer.prompt("Password", hide_input=True)
        with Client(url) as client:
            client.login(email, password)
            user = client.me()
            # The CLI does everything its user may: upload, promote, and admin things for admins.
            created = client.create_api_key(
                f"modelyard cli on {platform.node() or 'host'}",
                scopes=[*CLI_SCOPES, "admin"] if user.is_admin else CLI_SCOPES,
            )
        api_key, key_id = created.key, created.id
    path = credentials.save_login(
        credentials.StoredLogin(url=url, api_key=api_key, email=user.email, api_key_id=key_id)
    )
    say(f"logged in to {url} as {user.email} (stored in {path})")
    # The stored key cannot make keys (a leaked key must not mint others): say what can.
    say(f"more API keys: modelyard keys create NAME --email {user.email}")
    if as_json:
        print_json({"url": url, "email": user.email, "config": str(path)})


def _open_browser(url: str) -> None:
    say(f"sign in in your browser; if it does not open, open this address:\n  {url}")
    webbrowser.open(url)


def logout(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Forget the stored login (and revoke its API key if `login` made it)."""
    stored = credentials.load_login()
    if stored is None:
        say("not logged in")
        if as_json:
            print_json({"logged_out": False})
        return
    if stored.api_key_id:
        try:
            with Client(stored.url, api_key=stored.api_key) as client:
                client.revoke_api_key(stored.api_key_id)
        except Exception as exc:  # the local login goes whatever the server says
            say(f"warning: could not revoke the stored API key: {exc}")
    credentials.delete_login()
    say(f"logged out of {stored.url}")
    if as_json:
        print_json({"logged_out": True, "url": stored.url})


def whoami(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show who the credentials belong to."""
    with _client(ctx) as client:
        user = client.me()
        print_json(user) if as_json else print_record(
            user, ("email", "full_name", "is_admin", "id")
        )


# --- models ----------------------------------------------------------------------------------

models = typer.Typer(help="List, show and delete models.", no_args_is_help=True)


@models.command("list")
def models_list(
    ctx: typer.Context,
    search: Annotated[str | None, typer.Option(help="Name contains.")] = None,
    stage: StageOpt = None,
    tag: Annotated[str | None, typer.Option(help="Has this tag.")] = None,
    include_archived: Annotated[bool, typer.Option(help="Include archived models.")] = False,
    limit: Limit = 20,
    offset: Offset = 0,
    as_json: JsonFlag = False,
) -> None:
    """List your models."""
    with _client(ctx) as client:
        page = client.list_models(
            search=search,
            stage=stage,
            tag=tag,
            include_archived=include_archived,
            limit=limit,
            offset=offset,
        )
    if as_json:
        print_json(page)
    else:
        print_table(page.items, MODEL_COLUMNS, total=page.total)


@models.command("show")
def models_show(ctx: typer.Context, name: str, as_json: JsonFlag = False) -> None:
    """Show a model and its versions."""
    with _client(ctx) as client:
        model = client.get_model(name)
    if as_json:
        print_json(model)
        return
    print_record(
        model,
        ("name", "id", "description", "task_type", "tags", "status", "latest_version",
         "production_version", "aliases", "created_at", "updated_at"),
    )  # fmt: skip
    print_table(model.versions, ("version", "stage", "framework", "format", "created_at"))


@models.command("delete")
def models_delete(
    ctx: typer.Context,
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Archive a model and all its versions."""
    if not yes:
        typer.confirm(f"Archive model {name!r} and all its versions?", abort=True)
    with _client(ctx) as client:
        client.delete_model(name)
    say(f"archived model {name}")
    if as_json:
        print_json({"archived": name})


# --- versions, push, promote, aliases, download ----------------------------------------------


def versions(
    ctx: typer.Context,
    name: str,
    limit: Limit = 20,
    offset: Offset = 0,
    as_json: JsonFlag = False,
) -> None:
    """List a model's versions, newest first."""
    with _client(ctx) as client:
        page = client.list_versions(name, limit=limit, offset=offset)
    if as_json:
        print_json(page)
    else:
        print_table(page.items, VERSION_COLUMNS, title=name, total=page.total)


def push(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str, typer.Option("--name", "-n", help="The model's name.")],
    description: Annotated[str | None, typer.Option(help="What this version is.")] = None,
    framework: Annotated[str | None, typer.Option(help="sklearn, onnx, xgboost, lightgbm.")] = None,
    task_type: Annotated[str | None, typer.Option(help="classification, regression, ...")] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", "-m", help="KEY=NUMBER, repeatable.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE, repeatable.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Repeatable.")] = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment id.")] = None,
    input_schema: Annotated[
        Path | None, typer.Option(help='JSON file: {"features": [{"name": ...}]}.')
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Show a progress bar (default: from 1 MiB)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a model file as the next version of a model."""
    metrics = _pairs(metric, "metric", numbers=True)
    params = _pairs(param, "param", numbers=False)
    schema = None
    if input_schema is not None:
        try:
            schema = json.loads(input_schema.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the input schema {input_schema}: {exc}") from exc
    with _client(ctx) as client, _progress_bar(file.name, file.stat().st_size, progress) as bar:
        created = client.upload(
            file,
            name,
            description=description,
            framework=framework,
            task_type=task_type,
            input_schema=schema,
            metrics=metrics,
            hyperparameters=params,
            tags=tag,
            experiment_id=experiment,
            progress=bar,
        )
    if as_json:
        print_json(created)
    else:
        say(f"pushed {created.model_name} version {created.version} ({created.framework}, "
            f"{created.format}, stage {created.stage})")  # fmt: skip


def promote(
    ctx: typer.Context,
    name: str,
    version: int,
    stage: Annotated[str, typer.Option(help="The stage to move to.")] = "production",
    as_json: JsonFlag = False,
) -> None:
    """Move a version to a stage (production demotes the previous production version)."""
    with _client(ctx) as client:
        changed = client.set_stage(name, version, stage)
    if as_json:
        print_json(changed)
    else:
        say(f"{changed.model_name} version {changed.version} is now {changed.stage}")


alias = typer.Typer(help="Name versions: champion, challenger, ...", no_args_is_help=True)


@alias.command("set")
def alias_set(
    ctx: typer.Context, name: str, alias_name: str, version: int, as_json: JsonFlag = False
) -> None:
    """Point ALIAS_NAME at VERSION of model NAME."""
    with _client(ctx) as client:
        target = client.set_alias(name, alias_name, version)
    if as_json:
        print_json(target)
    else:
        say(f"{name}@{alias_name} -> version {target.version}")


@alias.command("delete")
def alias_delete(ctx: typer.Context, name: str, alias_name: str, as_json: JsonFlag = False) -> None:
    """Remove an alias."""
    with _client(ctx) as client:
        client.delete_alias(name, alias_name)
    say(f"removed {name}@{alias_name}")
    if as_json:
        print_json({"model": name, "alias": alias_name, "deleted": True})


def download(
    ctx: typer.Context,
    name: str,
    version: VersionOpt = None,
    alias_name: Annotated[str | None, typer.Option("--alias", help="Alias, e.g. champion.")] = None,
    stage: StageOpt = None,
    # Text, not a Path: a trailing "/" (a folder to create) must survive.
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="File, or folder (existing, or ending in /).",
            show_default="here",
        ),
    ] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Download a version's model file (default: what predict would serve)."""
    with _client(ctx) as client:
        found = client.get_version(name, version, alias=alias_name, stage=stage)
        with _progress_bar(name, found.file_size, progress) as bar:
            path = client.download(name, found.version, dest=output, progress=bar)
    say(f"saved {path}")
    if as_json:
        print_json({"path": str(path), "version": found.version, "sha256": found.sha256})
    else:
        typer.echo(str(path))


def predict(
    ctx: typer.Context,
    name: str,
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help='rows.json (rows, records, a network\'s tensors by input name, or {"inputs": ...}) '
            "or data.csv (a header row, columns matched by name); - reads JSON from stdin.",
        ),
    ],
    version: VersionOpt = None,
    alias_name: Annotated[str | None, typer.Option("--alias", help="Alias, e.g. champion.")] = None,
    stage: StageOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Predict on the rows of a JSON or CSV file, or a network on its tensors."""
    rows = read_input_file(input_file)
    with _client(ctx) as client:
        result = client.predict(name, rows, version=version, alias=alias_name, stage=stage)
    if as_json:
        print_json(result)
        return
    if result.outputs:
        # A network: one line per output tensor (--json gives every value).
        tensors = [_tensor_row(key, value) for key, value in result.outputs.items()]
        title = f"{result.model_name} v{result.version}"
        print_table(tensors, ["output", "shape", "values"], title=title)
        return
    table_rows = []
    for i, value in enumerate(result.predictions):
        row: dict[str, Any] = {"row": i, "prediction": value}
        if result.confidence is not None:
            row["confidence"] = result.confidence[i]
        if result.probabilities is not None and result.classes is not None:
            probabilities = zip(result.classes, result.probabilities[i], strict=False)
            row["probabilities"] = {str(c): round(p, 4) for c, p in probabilities}
        table_rows.append(type("Row", (), row)())
    columns = ["row", "prediction"]
    if result.confidence is not None:
        columns.append("confidence")
    if result.probabilities is not None and result.classes is not None:
        columns.append("probabilities")
    print_table(table_rows, columns, title=f"{result.model_name} v{result.version}")


TENSOR_CELL_CHARS = 120


def _tensor_row(name: str, value: Any) -> Any:
    values = jsonable(value)
    shape, inner = [], values
    while isinstance(inner, list):
        shape.append(len(inner))
        inner = inner[0] if inner else None
    text = json.dumps(values)
    if len(text) > TENSOR_CELL_CHARS:
        text = text[: TENSOR_CELL_CHARS - 1] + "…"
    return type("Row", (), {"output": name, "shape": "x".join(map(str, shape)), "values": text})()


# --- API keys --------------------------------------------------------------------------------

keys = typer.Typer(help="API keys for scripts and CI.", no_args_is_help=True)
# What `login` asks for: all the user may do (read, predict, write; admin for admins).
CLI_SCOPES = ["read", "predict", "write"]


@keys.command("create")
def keys_create(
    ctx: typer.Context,
    name: str,
    expires_at: Annotated[
        datetime | None, typer.Option(help="When it stops working (UTC if no offset).")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            "-s",
            help="read, predict, write or admin; repeat for several (default: read and predict).",
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Limit the key to this model; repeat for several."),
    ] = None,
    email: Annotated[
        str | None,
        typer.Option(help="Sign in with this email (and password) to make the key."),
    ] = None,
    password: Annotated[str | None, typer.Option(help="The password (default: asked for).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make an API key; shown once. Keys are made from a signed-in session, never with another
    key: give --email (the password is asked for), or set MODELYARD_TOKEN."""
    secret = None
    if email is not None:
        secret = password or str(typer.prompt("Password", hide_input=True))
        root: dict[str, Any] = ctx.find_root().obj or {}
        client = Client(root.get("url"))
    else:
        client = _client(ctx)
    with client:
        if email is not None and secret is not None:
            client.login(email, secret)
        try:
            created = client.create_api_key(
                name, expires_at=expires_at, scopes=scope or None, models=model or None
            )
        except Forbidden as exc:
            if email is not None or _credentials(ctx).api_key is None:
                raise
            raise ModelyardClientError(
                f"{exc.message}\n  sign in to make one: "
                f"`modelyard keys create {name} --email EMAIL` (the password is asked for)"
            ) from exc
    if as_json:
        print_json(created)
    else:
        say(f"API key {created.name} ({created.id}); it is shown this once only:")
        typer.echo(created.key)


@keys.command("list")
def keys_list(
    ctx: typer.Context, limit: Limit = 20, offset: Offset = 0, as_json: JsonFlag = False
) -> None:
    """List your API keys (prefixes only)."""
    with _client(ctx) as client:
        page = client.list_api_keys(limit=limit, offset=offset)
    if as_json:
        print_json(page)
    else:
        columns = (
            "id",
            "name",
            "prefix",
            "scopes",
            "models",
            "is_active",
            "created_at",
            "last_used_at",
            "expires_at",
        )
        print_table(page.items, columns, total=page.total)


@keys.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str, as_json: JsonFlag = False) -> None:
    """Revoke an API key: it stops working at once."""
    with _client(ctx) as client:
        client.revoke_api_key(key_id)
    say(f"revoked {key_id}")
    if as_json:
        print_json({"revoked": key_id})


# --- experiments -----------------------------------------------------------------------------

experiments = typer.Typer(help="Experiments, their parameters and metrics.", no_args_is_help=True)
EXPERIMENT_COLUMNS = ("id", "name", "status", "latest_metrics", "tags", "created_at")


@experiments.command("list")
def experiments_list(
    ctx: typer.Context,
    search: Annotated[str | None, typer.Option(help="Name contains.")] = None,
    tag: Annotated[str | None, typer.Option(help="Has this tag.")] = None,
    limit: Limit = 20,
    offset: Offset = 0,
    sort: Annotated[
        str | None,
        typer.Option(help="created_at, updated_at, ended_at, name or metrics.KEY."),
    ] = None,
    order: Annotated[str | None, typer.Option(help="desc (default) or asc.")] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", "-f", help="e.g. 'metrics.accuracy>=0.9', repeatable."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List your experiments with their latest metrics."""
    with _client(ctx) as client:
        page = client.list_experiments(
            search=search,
            tag=tag,
            limit=limit,
            offset=offset,
            sort=sort,
            order=order,
            filters=filters or (),
        )
    print_json(page) if as_json else print_table(page.items, EXPERIMENT_COLUMNS, total=page.total)


@experiments.command("create")
def experiments_create(
    ctx: typer.Context,
    name: str,
    description: Annotated[str | None, typer.Option()] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an experiment."""
    params = _pairs(param, "param", numbers=False)
    with _client(ctx) as client:
        created = client.create_experiment(
            name, description=description, parameters=params, tags=tag
        )
    if as_json:
        print_json(created)
    else:
        say(f"created experiment {created.name}")
        typer.echo(created.id)


@experiments.command("show")
def experiments_show(ctx: typer.Context, experiment_id: str, as_json: JsonFlag = False) -> None:
    """Show an experiment, its latest metrics and the versions it produced."""
    with _client(ctx) as client:
        found = client.get_experiment(experiment_id)
    if as_json:
        print_json(found)
        return
    print_record(found, ("name", "id", "description", "status", "parameters", "tags", "created_at"))
    print_table(found.metrics, ("key", "value", "step", "timestamp"), title="metrics")
    print_table(found.model_versions, ("model_name", "version", "stage"), title="versions")


@experiments.command("log")
def experiments_log(
    ctx: typer.Context,
    experiment_id: str,
    metric: Annotated[list[str], typer.Option("--metric", "-m", help="KEY=NUMBER, repeatable.")],
    step: Annotated[int | None, typer.Option(min=0)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Record metric points."""
    points = _pairs(metric, "metric", numbers=True) or {}
    with _client(ctx) as client:
        logged = client.log_metrics(experiment_id, points, step=step)
    print_json(logged) if as_json else say(f"logged {len(logged)} point(s)")


@experiments.command("metrics")
def experiments_metrics(
    ctx: typer.Context,
    experiment_id: str,
    key: Annotated[str | None, typer.Option(help="Only this metric.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show an experiment's metric history."""
    with _client(ctx) as client:
        history = client.get_metrics(experiment_id, key)
    print_json(history) if as_json else print_table(history, ("key", "step", "value", "timestamp"))


@experiments.command("finish")
def experiments_finish(
    ctx: typer.Context,
    experiment_id: str,
    status: Annotated[str, typer.Option(help="completed, failed or killed.")] = "completed",
    as_json: JsonFlag = False,
) -> None:
    """End a run: set its status and its end time."""
    with _client(ctx) as client:
        finished = client.finish_experiment(experiment_id, status)
    if as_json:
        print_json(finished)
    else:
        say(f"experiment {finished.name} {finished.status} at {finished.ended_at}")


@experiments.command("delete")
def experiments_delete(ctx: typer.Context, experiment_id: str, as_json: JsonFlag = False) -> None:
    """Delete an experiment (its versions stay)."""
    with _client(ctx) as client:
        client.delete_experiment(experiment_id)
    say(f"deleted experiment {experiment_id}")
    if as_json:
        print_json({"deleted": experiment_id})


# --- files -----------------------------------------------------------------------------------

files = typer.Typer(
    help="Your file area: datasets, reports, extra artifacts.", no_args_is_help=True
)


@files.command("list")
def files_list(
    ctx: typer.Context,
    prefix: Annotated[str | None, typer.Option()] = None,
    limit: Limit = 20,
    offset: Offset = 0,
    as_json: JsonFlag = False,
) -> None:
    """List your files."""
    with _client(ctx) as client:
        page = client.list_files(prefix=prefix, limit=limit, offset=offset)
    columns = ("path", "size", "modified_at")
    print_json(page) if as_json else print_table(page.items, columns, total=page.total)


@files.command("upload")
def files_upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    path: Annotated[
        str | None, typer.Option(help="Where in your area (default: its name).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a file to your area."""
    with _client(ctx) as client, _progress_bar(file.name, file.stat().st_size, None) as bar:
        stored = client.upload_file(file, path, progress=bar)
    print_json(stored) if as_json else say(f"stored {stored.path} ({stored.size} bytes)")


@files.command("download")
def files_download(
    ctx: typer.Context,
    path: str,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Download a file of your area."""
    with _client(ctx) as client:
        saved = client.download_file(path, output)
    print_json({"path": str(saved)}) if as_json else typer.echo(str(saved))


@files.command("delete")
def files_delete(ctx: typer.Context, path: str, as_json: JsonFlag = False) -> None:
    """Delete a file of your area."""
    with _client(ctx) as client:
        client.delete_file(path)
    say(f"deleted {path}")
    if as_json:
        print_json({"deleted": path})


# --- predictions and analytics ---------------------------------------------------------------

predictions = typer.Typer(help="The prediction log.", no_args_is_help=True)


@predictions.command("list")
def predictions_list(
    ctx: typer.Context,
    model_id: Annotated[str | None, typer.Option(help="Only this model (id).")] = None,
    status: Annotated[str | None, typer.Option(help="success or error.")] = None,
    since: Annotated[datetime | None, typer.Option()] = None,
    until: Annotated[datetime | None, typer.Option()] = None,
    limit: Limit = 20,
    offset: Offset = 0,
    as_json: JsonFlag = False,
) -> None:
    """List logged predictions."""
    with _client(ctx) as client:
        page = client.list_predictions(
            model_id=model_id, status=status, since=since, until=until, limit=limit, offset=offset
        )
    columns = ("id", "model_name", "version", "status", "n_rows", "inference_time_ms", "created_at")
    print_json(page) if as_json else print_table(page.items, columns, total=page.total)


@predictions.command("show")
def predictions_show(ctx: typer.Context, prediction_id: str, as_json: JsonFlag = False) -> None:
    """Show one logged prediction with its inputs and outputs."""
    with _client(ctx) as client:
        found = client.get_prediction(prediction_id)
    print_json(found) if as_json else print_record(found)


analytics = typer.Typer(help="Prediction analytics of your models.", no_args_is_help=True)


@analytics.command("models")
def analytics_models(
    ctx: typer.Context,
    model_id: Annotated[str | None, typer.Option(help="Only this model (id).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Per model version: predictions, failures, inference time percentiles."""
    with _client(ctx) as client:
        stats = client.model_analytics(model_id=model_id)
    columns = ("model_name", "version", "total_predictions", "failed_predictions",
               "avg_inference_time_ms", "p50_inference_time_ms", "p95_inference_time_ms",
               "last_prediction_at")  # fmt: skip
    print_json(stats) if as_json else print_table(stats, columns)


@analytics.command("usage")
def analytics_usage(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, max=366)] = 30,
    model_id: Annotated[str | None, typer.Option(help="Only this model (id).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """One row a day: predictions, failures, average inference time."""
    with _client(ctx) as client:
        rows = client.usage(days=days, model_id=model_id)
    columns = ("date", "prediction_count", "failed_count", "avg_inference_time_ms")
    print_json(rows) if as_json else print_table(rows, columns)


# --- batch jobs and drift ---------------------------------------------------------------------

jobs = typer.Typer(
    help="Batch prediction jobs: score a file of your area in the background.",
    no_args_is_help=True,
)
JOB_COLUMNS = ("id", "model_name", "version", "status", "rows_done", "rows_total", "created_at")
JOB_FIELDS = ("id", "status", "model_name", "version", "input_path", "output_path", "format",
              "rows_done", "rows_total", "error", "cancel_requested", "attempts", "created_at",
              "started_at", "finished_at")  # fmt: skip
VersionRefOpt = Annotated[
    str | None,
    typer.Option("--version", "-v", help="Version number or alias (default: what predict serves)."),
]


# How a wait for a job goes (`jobs create --wait`, `jobs wait`).
WaitTimeout = Annotated[
    float | None, typer.Option(min=0, help="Waiting: give up after this many seconds.")
]
WaitPoll = Annotated[
    float, typer.Option(min=0.01, help="Waiting: seconds between two looks at the job.")
]
WaitProgress = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Waiting: show a progress bar.")
]


def _version_ref(value: str | None) -> int | str | None:
    """A version given on the command line: a number, else an alias."""
    return int(value) if value is not None and value.isdigit() else value


@jobs.command("create")
def jobs_create(
    ctx: typer.Context,
    model: str,
    input_path: Annotated[
        str, typer.Option("--input", "-i", help="A CSV (or Parquet) file of your area.")
    ],
    output_path: Annotated[
        str, typer.Option("--output", "-o", help="Where the results go in your area.")
    ],
    version: VersionRefOpt = None,
    file_format: Annotated[
        t.JobFormat, typer.Option("--format", help="The input file's format.")
    ] = t.JobFormat.CSV,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the job to end; exit 1 unless it succeeds.")
    ] = False,
    timeout: WaitTimeout = None,
    poll: WaitPoll = 1.0,
    progress: WaitProgress = True,
    as_json: JsonFlag = False,
) -> None:
    """Score a file of your area with a model version, in the background."""
    with _client(ctx) as client:
        job = client.create_batch_job(
            model, input_path, output_path, version=_version_ref(version), format=file_format
        )
        if not wait:
            if as_json:
                print_json(job)
            else:
                say(f"queued job {job.id} ({job.model_name} v{job.version})")
                typer.echo(job.id)
            return
        job = _wait_for(client, job, timeout=timeout, poll=poll, progress=progress)
    _print_finished(job, as_json=as_json)


@jobs.command("wait")
def jobs_wait(
    ctx: typer.Context,
    job_id: str,
    timeout: WaitTimeout = None,
    poll: WaitPoll = 1.0,
    progress: WaitProgress = True,
    as_json: JsonFlag = False,
) -> None:
    """Wait for a batch job to end (again after a Ctrl-C); exit 1 unless it succeeds."""
    with _client(ctx) as client:
        job = _wait_for(
            client, client.get_batch_job(job_id), timeout=timeout, poll=poll, progress=progress
        )
    _print_finished(job, as_json=as_json)


def _wait_for(
    client: Client, job: t.BatchJob, *, timeout: float | None, poll: float, progress: bool
) -> t.BatchJob:
    say(f"waiting for job {job.id} (Ctrl-C stops the wait, not the job)")
    with (
        _bar(job.model_name, None, (MofNCompleteColumn(), TextColumn("rows")))
        if progress
        else nullcontext()
    ) as bar:
        return client.wait_for_batch_job(job.id, timeout=timeout, poll=poll, progress=bar)


def _print_finished(job: t.BatchJob, *, as_json: bool) -> None:
    """Print a finished job; exit 1 unless it succeeded."""
    if as_json:
        print_json(job)
    elif job.status == t.JobStatus.SUCCEEDED:
        say(f"job {job.id} succeeded: {job.rows_done} rows scored into {job.output_path}")
        typer.echo(job.id)
    # Unwrapped like every other error line (see cli._Root): scripts and people grep for them.
    if job.status == t.JobStatus.FAILED:
        typer.echo(f"error: job {job.id} failed: {job.error}", err=True)
    elif job.status == t.JobStatus.CANCELLED:
        typer.echo(f"error: job {job.id} was cancelled after {job.rows_done} rows", err=True)
    if job.status != t.JobStatus.SUCCEEDED:
        raise typer.Exit(EXIT_REFUSED)


@jobs.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[t.JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Limit = 20,
    offset: Offset = 0,
    as_json: JsonFlag = False,
) -> None:
    """List your batch jobs, newest first."""
    with _client(ctx) as client:
        page = client.list_batch_jobs(status=status, limit=limit, offset=offset)
    print_json(page) if as_json else print_table(page.items, JOB_COLUMNS, total=page.total)


@jobs.command("show")
def jobs_show(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Show a batch job: status, rows done and in all, error."""
    with _client(ctx) as client:
        job = client.get_batch_job(job_id)
    print_json(job) if as_json else print_record(job, JOB_FIELDS)


@jobs.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a batch job: a queued one at once, a running one after its current chunk."""
    with _client(ctx) as client:
        job = client.cancel_batch_job(job_id)
    if as_json:
        print_json(job)
    elif job.status == t.JobStatus.CANCELLED:
        say(f"cancelled job {job.id}")
    else:
        say(f"cancelling job {job.id}: it stops after its current chunk, writing no output")


traffic = typer.Typer(
    help="Canary and shadow traffic: split the requests that name no version.",
    no_args_is_help=True,
)


def _routes(values: list[str]) -> list[t.TrafficRoute]:
    routes = []
    for item in values:
        target, sep, weight = item.rpartition("=")
        if not sep or not target or not weight.isdigit():
            raise typer.BadParameter(f"route {item!r} is not TARGET=WEIGHT (e.g. production=90)")
        routes.append(t.TrafficRoute(target, int(weight)))
    return routes


def _shadow(value: str | None) -> t.ShadowRoute | None:
    if value is None:
        return None
    target, sep, rate = value.rpartition("@")
    try:
        sample_rate = float(rate)
    except ValueError:
        sep = ""
    if not sep or not target:
        raise typer.BadParameter(f"shadow {value!r} is not TARGET@RATE (e.g. v4@0.1)")
    return t.ShadowRoute(target, sample_rate)


def _print_policy(policy: t.TrafficPolicy, *, as_json: bool) -> None:
    if as_json:
        print_json(policy)
        return
    print_table(policy.routes, ("target", "weight", "version"), title=f"{policy.model_name} routes")
    if policy.shadow is not None:
        print_record(policy.shadow, ("target", "sample_rate", "version"))


@traffic.command("set")
def traffic_set(
    ctx: typer.Context,
    model: str,
    routes: Annotated[
        list[str],
        typer.Argument(help="TARGET=WEIGHT for each route: v<N>, latest, a stage or an alias."),
    ],
    shadow: Annotated[
        str | None,
        typer.Option(help="TARGET@RATE: a version that gets that share of the requests too."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Set a model's traffic policy (replacing any): e.g. production=90 challenger=10."""
    parsed_routes, parsed_shadow = _routes(routes), _shadow(shadow)
    with _client(ctx) as client:
        policy = client.set_traffic(model, parsed_routes, parsed_shadow)
    _print_policy(policy, as_json=as_json)


@traffic.command("show")
def traffic_show(ctx: typer.Context, model: str, as_json: JsonFlag = False) -> None:
    """Show a model's traffic policy, with the version each target resolves to now."""
    with _client(ctx) as client:
        policy = client.get_traffic(model)
    _print_policy(policy, as_json=as_json)


@traffic.command("delete")
def traffic_delete(ctx: typer.Context, model: str, as_json: JsonFlag = False) -> None:
    """Remove a model's traffic policy: its production (else newest) version serves all."""
    with _client(ctx) as client:
        client.delete_traffic(model)
    if as_json:
        print_json({"deleted": model})
    else:
        say(f"{model}: no traffic policy; its default version serves every request")


@traffic.command("stats")
def traffic_stats(ctx: typer.Context, model: str, as_json: JsonFlag = False) -> None:
    """Compare the versions that served the model in the last 24 hours, and its shadows."""
    with _client(ctx) as client:
        stats = client.traffic_stats(model)
    if as_json:
        print_json(stats)
        return
    print_table(
        stats.versions,
        ("version", "targets", "requests", "failures", "p50_inference_time_ms",
         "p95_inference_time_ms"),
        title=f"{stats.model_name} versions",
    )  # fmt: skip
    if stats.shadows:
        print_table(
            stats.shadows,
            (
                "version",
                "requests",
                "failures",
                "p50_inference_time_ms",
                "p95_inference_time_ms",
                "label_agreement",
                "mean_absolute_difference",
            ),
            title="shadows",
        )


class _ShowByDefault(TyperGroup):
    """`modelyard drift MODEL` is `modelyard drift show MODEL`: the report, as before the
    reference commands joined it."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer.Context subclasses it
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["show", *args]
        return super().parse_args(ctx, args)


drift = typer.Typer(
    cls=_ShowByDefault,
    help="Drift of a version's inputs from its reference, and the reference itself.",
    no_args_is_help=True,
)


@drift.command("show")
def drift_show(
    ctx: typer.Context,
    model: str,
    version: VersionRefOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare the last 24 hours of a version's inputs with its reference, feature by feature
    (`modelyard drift MODEL` for short)."""
    with _client(ctx) as client:
        report = client.drift(model, version=_version_ref(version))
    if as_json:
        print_json(report)
        return
    reference = report.reference
    print_record(
        {
            "model": report.model_name,
            "version": report.version,
            "status": report.status,
            "drifted": report.drifted,
            "window": f"{report.window.since:%Y-%m-%d %H:%M} to {report.window.until:%Y-%m-%d %H:%M}",
            "rows": report.sample.rows,
            "reference": f"{reference.source_path or 'served rows'} ({reference.row_count} rows)",
        }
    )
    columns = ("name", "drifted", "psi", "psi_level", "ks_statistic", "ks_p_value", "mean",
               "reference_mean", "skipped")  # fmt: skip
    print_table(report.features, columns, title="features")


# --- compare -------------------------------------------------------------------------------

compare = typer.Typer(help="Runs or versions side by side.", no_args_is_help=True)


@compare.command("runs")
def compare_runs(
    ctx: typer.Context,
    experiment_ids: Annotated[list[str], typer.Argument(help="2 to 10 experiment ids.")],
    as_json: JsonFlag = False,
) -> None:
    """Compare runs: parameters and latest metrics side by side, differences marked *."""
    with _client(ctx) as client:
        found = client.compare_runs(*experiment_ids)
    print_json(found) if as_json else _print_comparison(found)


@compare.command("versions")
def compare_versions(
    ctx: typer.Context,
    versions: Annotated[
        list[str], typer.Argument(help="2 to 10 versions: MODEL:VERSION (iris:3) or version ids.")
    ],
    days: Annotated[int, typer.Option(min=1, max=90, help="Serving window in days.")] = 7,
    as_json: JsonFlag = False,
) -> None:
    """Compare versions: hyperparameters, metrics and serving figures (requests, failures,
    latency, drift) side by side, differences marked *."""
    with _client(ctx) as client:
        found = client.compare_versions(*versions, days=days)
    print_json(found) if as_json else _print_comparison(found)


def _print_comparison(found: t.Comparison) -> None:
    table = Table(header_style="bold")
    table.add_column("")
    table.add_column("")
    for item in found.items:
        table.add_column(item.label)
    for section, rows in (("param", found.params), ("metric", found.metrics)):
        for row in rows:
            table.add_row(
                "*" if row.differs else "", f"{section} {row.key}", *map(_value, row.values)
            )
    for name in ("requests", "failures", "p50_inference_time_ms", "p95_inference_time_ms", "drift"):
        values = [getattr(s, name) for s in found.serving or ()]
        if values:
            differs = "*" if len(set(values)) > 1 else ""
            table.add_row(differs, f"serving {name}", *map(_value, values))
    Console().print(table)
    say("* the values differ")


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


@drift.command("set-reference")
def drift_set_reference(
    ctx: typer.Context,
    model: str,
    version: Annotated[int, typer.Argument(min=1, help="Version number.")],
    path: Annotated[str, typer.Argument(help="A CSV (header row) or Parquet file of your area.")],
    as_json: JsonFlag = False,
) -> None:
    """Make a file of your area the version's drift reference (replacing any)."""
    with _client(ctx) as client:
        reference = client.set_reference(model, version, path)
    if as_json:
        print_json(reference)
    else:
        say(f"{model} version {version}: reference {path} ({reference.row_count} rows)")


@drift.command("delete-reference")
def drift_delete_reference(
    ctx: typer.Context,
    model: str,
    version: Annotated[int, typer.Argument(min=1, help="Version number.")],
    as_json: JsonFlag = False,
) -> None:
    """Remove a version's drift reference: the next report makes one from served rows."""
    with _client(ctx) as client:
        client.delete_reference(model, version)
    if as_json:
        print_json({"model": model, "version": version, "deleted": True})
    else:
        say(f"{model} version {version}: no reference; the next report makes one from served rows")


def register(app: typer.Typer) -> None:
    """Add the client's commands to the root command."""
    app.callback()(_root)
    app.command()(version)
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.command()(versions)
    app.command()(push)
    app.command()(promote)
    app.command()(download)
    app.command()(predict)
    app.add_typer(models, name="models")
    app.add_typer(alias, name="alias")
    app.add_typer(keys, name="keys")
    app.add_typer(experiments, name="experiments")
    app.add_typer(files, name="files")
    app.add_typer(predictions, name="predictions")
    app.add_typer(analytics, name="analytics")
    app.add_typer(jobs, name="jobs")
    app.add_typer(traffic, name="traffic")
    app.add_typer(drift, name="drift")
    app.add_typer(compare, name="compare")
    from modelyard_client.cli.teams import teams  # it builds on this module's helpers

    app.add_typer(teams, name="teams")

"""Dashboard pages of the registry: models, a model, a version, uploads, lifecycle, try it,
analytics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from modelyard.artifacts.http import stream_object_response
from modelyard.artifacts.uploads import receive_upload
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.db.tables import Experiment, ModelVersion, RegisteredModel
from modelyard.db.types import utcnow
from modelyard.drift import reference as drift_reference
from modelyard.drift import service as drift_service
from modelyard.errors import ModelyardError, Unprocessable
from modelyard.predictions import pipeline, rest, targets
from modelyard.predictions.log import queries as log_queries
from modelyard.predictions.log import schemas as log_schemas
from modelyard.predictions.traffic import policy as traffic
from modelyard.registry import queries as registry_queries
from modelyard.registry import service as registry_service
from modelyard.registry.deps import VersionNumber
from modelyard.registry.router import parse_upload_form
from modelyard.registry.schemas import (
    UPLOAD_FIELDS,
    AliasName,
    AliasTarget,
    ModelFramework,
    ModelSort,
    ModelUpdate,
    Stage,
)
from modelyard.schemas import PageParams
from modelyard.web import charts
from modelyard.web.http import (
    CSRF_FIELD,
    FormDep,
    Page,
    UserPage,
    WebRoute,
    check_csrf,
    check_origin,
    redirect,
    render,
)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 20
UPLOAD_PATH = "/models/upload"
SORTS: dict[str, str] = {
    "-created_at": "Newest first",
    "created_at": "Oldest first",
    "name": "Name A to Z",
    "-name": "Name Z to A",
    "-updated_at": "Recently updated",
}
# What each stage button does, for the confirmation page.
STAGE_ACTIONS = {
    Stage.STAGING: "Move to staging",
    Stage.PRODUCTION: "Promote to production",
    Stage.DEPRECATED: "Deprecate",
    Stage.ARCHIVED: "Archive",
    Stage.DEVELOPMENT: "Back to development",
}
WINDOWS = (1, 7, 30)
MAX_TRY_ROWS = 20

Offset = Annotated[int, Query(ge=0, le=2**31)]
AliasNames: TypeAdapter[str] = TypeAdapter(AliasName)


def _choice(value: str | None, allowed: set[str]) -> str | None:
    return value if value in allowed else None


async def _model(db: SessionDep, page: Page, model_id: str) -> RegisteredModel:
    """The signed-in user's model by UUID or name, as in the API (404 otherwise)."""
    return await registry_service.get_model(db, page.signed_in, model_id)


# --- models -------------------------------------------------------------------------------------


@router.get("/")
async def models(
    page: UserPage,
    db: SessionDep,
    q: Annotated[str, Query(max_length=200)] = "",
    stage: str = "",
    framework: str = "",
    sort: str = "-created_at",
    offset: Offset = 0,
) -> Response:
    chosen_stage = _choice(stage, {s.value for s in Stage})
    chosen_framework = _choice(framework, {f.value for f in ModelFramework})
    chosen_sort: ModelSort = sort if sort in SORTS else "-created_at"  # type: ignore[assignment]
    views, total = await registry_service.list_models(
        db,
        page.signed_in,
        page=PageParams(limit=PAGE_SIZE, offset=offset),
        search=q or None,
        stage=Stage(chosen_stage) if chosen_stage else None,
        framework=chosen_framework,
        include_archived=chosen_stage == Stage.ARCHIVED,
        sort=chosen_sort,
    )
    return render(
        page,
        "models.html",
        views=views,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        q=q,
        stage=chosen_stage or "",
        framework=chosen_framework or "",
        sort=chosen_sort,
        sorts=SORTS,
        stages=[s.value for s in Stage],
        frameworks=[f.value for f in ModelFramework],
        query={
            "q": q,
            "stage": chosen_stage or "",
            "framework": chosen_framework or "",
            "sort": sort,
        },
    )


@router.get("/models/new")
async def new_model(page: UserPage) -> Response:
    return render(page, "upload.html", model=None, error=None, name="")


async def _model_page(
    page: Page,
    db: SessionDep,
    model: RegisteredModel,
    offset: int = 0,
    status: int = 200,
    **extra: Any,
) -> Response:
    view = await registry_service.describe_model(db, model)
    versions, total = await registry_service.list_versions(
        db, model, page=PageParams(limit=PAGE_SIZE, offset=offset)
    )
    try:
        policy: traffic.TrafficPolicyRead | None = await traffic.get_policy(db, model)
    except traffic.NoTrafficPolicy:
        policy = None
    context: dict[str, Any] = {
        "error": None,
        "alias_error": None,
        "edit_error": None,
        "notice": None,
        "saved": False,
        **extra,
    }
    return render(
        page,
        "model.html",
        status,
        view=view,
        model=model,
        policy=policy,
        versions=versions,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        **context,
    )


@router.get("/models/{model_id}")
async def model_page(
    model_id: str,
    page: UserPage,
    db: SessionDep,
    offset: Offset = 0,
    changed: Annotated[int | None, Query(ge=1, le=2**31)] = None,
    saved: bool = False,
) -> Response:
    model = await _model(db, page, model_id)
    notice = None
    if changed is not None:  # after a stage change: say where the version is now
        try:
            version = await registry_service.get_version(db, model, changed)
        except ModelyardError:
            version = None
        if version is not None:
            notice = f"Version {version.version} is now {version.stage}."
    return await _model_page(page, db, model, offset, notice=notice, saved=saved)


def _input_schema_field(text: str) -> str:
    """Return the upload's `input_schema` as the API takes it (JSON): given as JSON, or as
    feature names, comma separated (each a float, as the inferred schemas say)."""
    text = text.strip()
    if text.startswith("{"):
        return text
    names = [n.strip() for n in text.split(",")]
    return orjson.dumps({"features": [{"name": n, "type": "float"} for n in names]}).decode()


@router.post(UPLOAD_PATH)
async def upload(request: Request, page: UserPage, db: SessionDep) -> Response:
    """Receive an upload form: the origin is checked before the body is read, the CSRF token
    (a field of the multipart form) before anything is done with the file."""
    check_origin(request)
    user = page.signed_in
    state = page.state
    await db.close()  # as the API route: no connection held while the file streams in
    name = ""
    model: RegisteredModel | None = None
    try:
        async with receive_upload(
            request,
            tmp_dir=state.settings.data_dir / "tmp",
            max_bytes=state.settings.max_upload_bytes,
            allowed_fields=UPLOAD_FIELDS | {CSRF_FIELD},
        ) as received:
            check_csrf(page, received.fields)
            # Fields a person left empty are not given (the API reads "" as invalid JSON).
            fields = {
                k: v
                for k, v in received.fields.items()
                if k != CSRF_FIELD and (v.strip() or k == "name")
            }
            name = fields.get("name", "")
            if "input_schema" in fields:
                fields["input_schema"] = _input_schema_field(fields["input_schema"])
            form = parse_upload_form(fields)
            version = await registry_service.register_version(
                db,
                owner=user,
                form=form,
                file=received.file,
                store=state.store,
                prober=state.prober,
                events=state.events,
                tmp_dir=state.settings.data_dir / "tmp",
                reference_limits=drift_reference.limits_of(state.settings),
            )
    except (ModelyardError, RequestValidationError) as exc:
        if isinstance(exc, RequestValidationError):
            status = 422
            detail = "; ".join(
                f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors() if isinstance(e, dict)
            )
        else:
            status, detail = exc.status, exc.detail
        if name:
            model = await registry_queries.find_model(db, user, name)
        return render(page, "upload.html", status, model=model, error=detail, name=name)
    return redirect(f"/models/{version.model_id}/versions/{version.version}")


def _tags(text: str) -> list[str]:
    """Return the tags typed in a form: comma separated, blanks and repeats left out."""
    return list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


@router.post("/models/{model_id}/edit")
async def edit_model(model_id: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    """Change the description and tags, as `PATCH /api/v1/models/{model}` does."""
    model = await _model(db, page, model_id)
    description = str(form.get("description", "")).strip()
    try:
        data = ModelUpdate.model_validate(
            {"description": description or None, "tags": _tags(str(form.get("tags", "")))}
        )
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return await _model_page(page, db, model, 0, 422, edit_error=detail)
    await registry_service.update_model(db, model, data)
    return redirect(f"/models/{model.id}?saved=1")


@router.get("/models/{model_id}/delete")
async def confirm_delete(model_id: str, page: UserPage, db: SessionDep) -> Response:
    model = await _model(db, page, model_id)
    return render(page, "confirm_delete.html", model=model)


@router.post("/models/{model_id}/delete")
async def delete_model(model_id: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    """Delete a model as `DELETE /api/v1/models/{model}` does: it and its versions are archived
    (kept, never served again)."""
    model = await _model(db, page, model_id)
    await registry_service.archive_model(db, model, events=page.state.events)
    return redirect(f"/models/{model.id}")


@router.post("/models/{model_id}/aliases")
async def set_alias(model_id: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    model = await _model(db, page, model_id)
    alias, number = form.get("alias"), form.get("version")
    try:
        target = AliasTarget.model_validate({"version": number})
        checked = AliasNames.validate_python(str(alias or ""))
        await registry_service.set_alias(
            db, model, checked, target.version, events=page.state.events
        )
    except ValidationError as exc:
        detail = "; ".join(e["msg"] for e in exc.errors())
        return await _model_page(page, db, model, 0, 422, alias_error=detail)
    except ModelyardError as exc:
        detail = exc.detail
        return await _model_page(page, db, model, 0, 422, alias_error=detail)
    return redirect(f"/models/{model.id}")


@router.post("/models/{model_id}/aliases/{alias}/delete")
async def delete_alias(
    model_id: str, alias: str, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    model = await _model(db, page, model_id)
    await registry_service.delete_alias(db, model, alias, events=page.state.events)
    return redirect(f"/models/{model.id}")


# --- versions -----------------------------------------------------------------------------------


def _snippets(request: Request, model: RegisteredModel, version: ModelVersion) -> dict[str, str]:
    base = str(request.base_url).rstrip("/")
    width = len((version.input_schema or {}).get("features") or []) or 4
    row = ", ".join(["0.0"] * width)
    url = f"{base}/api/v1/predict/{model.name}?version={version.version}"
    return {
        "curl": (
            f"curl -X POST '{url}' \\\n"
            "  -H \"X-API-Key: $MODELYARD_API_KEY\" -H 'Content-Type: application/json' \\\n"
            f"  -d '{{\"inputs\": [[{row}]]}}'"
        ),
        "python": (
            "import os, httpx\n\n"
            f"response = httpx.post(\n    {url!r},\n"
            '    headers={"X-API-Key": os.environ["MODELYARD_API_KEY"]},\n'
            f'    json={{"inputs": [[{row}]]}},\n)\nprint(response.json())'
        ),
        "tritonclient": (
            "import os\nimport numpy as np\nimport tritonclient.http as triton\n\n"
            f"client = triton.InferenceServerClient({request.url.netloc!r})\n"
            f"data = np.array([[{row}]], dtype=np.float64)\n"
            'inputs = [triton.InferInput("input-0", list(data.shape), "FP64")]\n'
            "inputs[0].set_data_from_numpy(data)\n"
            "result = client.infer(\n"
            f"    {model.name!r}, inputs, model_version={str(version.version)!r},\n"
            '    headers={"X-API-Key": os.environ["MODELYARD_API_KEY"]},\n)\n'
            "print(result.get_response())"
        ),
    }


async def _version_page(
    page: Page,
    db: SessionDep,
    model: RegisteredModel,
    number: int,
    status: int = 200,
    **extra: Any,
) -> Response:
    version = await registry_service.get_version(db, model, number)
    experiment = None
    if version.experiment_id is not None:
        experiment = await db.get(Experiment, version.experiment_id)
    view = await registry_service.describe_model(db, model)
    aliases = [a for a, n in view.aliases.items() if n == number]
    features = (version.input_schema or {}).get("features") or []
    context: dict[str, Any] = {"result": None, "try_error": None, "values": {}, **extra}
    return render(
        page,
        "version.html",
        status,
        model=model,
        version=version,
        aliases=aliases,
        experiment=experiment,
        features=features,
        snippets=_snippets(page.request, model, version),
        json=lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode(),
        **context,
    )


@router.get("/models/{model_id}/versions/{number}")
async def version_page(
    model_id: str, number: VersionNumber, page: UserPage, db: SessionDep
) -> Response:
    model = await _model(db, page, model_id)
    return await _version_page(page, db, model, number)


@router.get("/models/{model_id}/versions/{number}/download")
async def download(
    model_id: str, number: VersionNumber, page: UserPage, db: SessionDep, request: Request
) -> Response:
    model = await _model(db, page, model_id)
    row = await registry_service.get_version(db, model, number)
    return await stream_object_response(
        page.state.store,
        row.storage_key,
        filename=registry_service.download_filename(model, row),
        etag=row.sha256,
        request=request,
    )


@router.get("/models/{model_id}/versions/{number}/stage")
async def confirm_stage(
    model_id: str, number: VersionNumber, page: UserPage, db: SessionDep, to: Stage
) -> Response:
    model = await _model(db, page, model_id)
    version = await registry_service.get_version(db, model, number)
    view = await registry_service.describe_model(db, model)
    return render(
        page,
        "confirm_stage.html",
        model=model,
        version=version,
        to=to.value,
        action=STAGE_ACTIONS[to],
        production=view.production_version,
    )


@router.post("/models/{model_id}/versions/{number}/stage")
async def change_stage(
    model_id: str, number: VersionNumber, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    model = await _model(db, page, model_id)
    try:
        stage = Stage(str(form.get("stage", "")))
    except ValueError as exc:
        raise Unprocessable("unknown stage") from exc
    events = page.state.events
    if stage == Stage.ARCHIVED:
        await registry_service.archive_version(db, model, number, events=events)
    else:
        await registry_service.transition_stage(db, model, number, stage, events=events)
    # The model page says what changed (read back from the database, not from the URL).
    return redirect(f"/models/{model.id}?changed={number}#version-{number}")


def _rows_from_form(values: dict[str, str], features: list[dict[str, Any]]) -> Any:
    """Return the `inputs` of a try-it form: one row of the feature fields, or the JSON rows."""
    raw = values.get("inputs_json", "").strip()
    if raw:
        try:
            inputs = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Unprocessable(f"the inputs are not JSON: {exc}") from exc
        if not isinstance(inputs, list) or len(inputs) > MAX_TRY_ROWS:
            raise Unprocessable(f"give a JSON list of at most {MAX_TRY_ROWS} rows")
        return inputs
    row: list[float] = []
    for i, feature in enumerate(features):
        text = values.get(f"f{i}", "").strip()
        try:
            number = float(text)
        except ValueError as exc:
            raise Unprocessable(f"{feature.get('name', f'f{i}')}: not a number") from exc
        if not math.isfinite(number):
            raise Unprocessable(f"{feature.get('name', f'f{i}')}: not a finite number")
        row.append(number)
    return [row]


@router.post("/models/{model_id}/versions/{number}/predict")
async def try_it(
    model_id: str, number: VersionNumber, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    """Predict with the version from the page: the API's prediction path, logged like any."""
    model = await _model(db, page, model_id)
    version = await registry_service.get_version(db, model, number)
    features = (version.input_schema or {}).get("features") or []
    # What was typed comes back in the fields, whichever value is refused.
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}
    try:
        inputs = _rows_from_form(values, features)
        caller = Caller(page.signed_in, None)
        state = page.state
        target = await targets.resolve_target(db, page.signed_in, str(model.id), version=number)
        body = orjson.dumps({"inputs": inputs})

        async def read() -> bytes:
            return body

        answer = await pipeline.predict(
            state.predictor, target, caller=caller, routing_key=None, body=read,
            codec=rest.predict_rest,
        )  # fmt: skip
        result = orjson.loads(answer.body)
    except ModelyardError as exc:
        return await _version_page(
            page, db, model, number, exc.status, try_error=exc.detail, values=values
        )
    return await _version_page(page, db, model, number, result=result, values=values)


# --- drift --------------------------------------------------------------------------------------


@router.get("/models/{model_id}/drift")
async def drift(
    model_id: str,
    page: UserPage,
    db: SessionDep,
    version: Annotated[str, Query(max_length=64)] = "",
    days: int = 1,
) -> Response:
    """A version's drift over the last day(s): the API's report, as a table per feature."""
    model = await _model(db, page, model_id)
    days = days if days in WINDOWS else 1
    settings = page.state.settings
    report, error, status = None, None, 200
    try:
        report = await drift_service.measure_drift(
            db,
            model,
            version_ref=version or None,
            since=utcnow() - timedelta(days=days),
            until=None,
            reference_rows=settings.drift_reference_rows,
            max_rows=settings.drift_window_max_rows,
            max_payload_bytes=settings.prediction_log_max_payload_bytes,
            events=page.state.events,
        )
    except ModelyardError as exc:
        error, status = exc.detail, exc.status
    return render(
        page,
        "drift.html",
        status,
        model=model,
        report=report,
        error=error,
        version=version,
        days=days,
        windows=WINDOWS,
    )


# --- analytics ----------------------------------------------------------------------------------


@router.get("/models/{model_id}/analytics")
async def analytics(model_id: str, page: UserPage, db: SessionDep, days: int = 7) -> Response:
    model = await _model(db, page, model_id)
    days = days if days in WINDOWS else 7
    user = page.signed_in
    usage = await log_queries.daily_usage(db, user, days=days, model_id=model.id)
    stats = await log_queries.version_stats(
        db, user, model_id=model.id, since=utcnow() - timedelta(days=days)
    )
    # One day is drawn by the hour (UTC), longer windows by the day.
    buckets: Sequence[log_schemas.DailyUsage | log_schemas.HourlyUsage] = usage
    if days == 1:
        buckets = await log_queries.hourly_usage(db, user, hours=24, model_id=model.id)
    labels = [
        b.hour.strftime("%H:00")
        if isinstance(b, log_schemas.HourlyUsage)
        else b.date.strftime("%m-%d")
        for b in buckets
    ]
    requests = charts.grouped_bars(
        "Requests per hour (UTC)" if days == 1 else "Requests per day",
        labels,
        [
            ("succeeded", [float(b.prediction_count - b.failed_count) for b in buckets]),
            ("failed", [float(b.failed_count) for b in buckets]),
        ],
        max_labels=6 if days == 1 else 10,
    )
    latency = charts.grouped_bars(
        "Inference time per version",
        [f"v{s.version}" if s.version is not None else "?" for s in stats],
        [
            ("p50", [s.p50_inference_time_ms for s in stats]),
            ("p95", [s.p95_inference_time_ms for s in stats]),
        ],
        unit=" ms",
    )
    return render(
        page,
        "analytics.html",
        model=model,
        days=days,
        windows=WINDOWS,
        usage=usage,
        stats=stats,
        requests_chart=requests,
        latency_chart=latency,
        total=sum(d.prediction_count for d in usage),
        failed=sum(d.failed_count for d in usage),
    )

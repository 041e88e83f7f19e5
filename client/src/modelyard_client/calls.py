"""Every API operation once, as a `Call`: what to send and how to read the answer.

`Client` and `AsyncClient` only differ in how they send a call, so each operation is written
here once and both clients stay in step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from modelyard_client import types as t
from modelyard_client.errors import InvalidInput
from modelyard_client.inputs import as_arrays, finite, to_inputs

T = TypeVar("T")
API = "/api/v1"
DEFAULT_LIMIT = 20
REFRESH_PATH = f"{API}/auth/refresh"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    files: Mapping[str, tuple[str, IO[bytes], str]] | None = None


def json_body(value: Any) -> dict[str, Any]:
    """A request's JSON body as httpx arguments; NaN, infinity or an object JSON cannot hold
    is the caller's mistake (`InvalidInput`), found before anything is sent."""
    try:
        content = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"the request cannot be sent as JSON: {exc}") from exc
    return {"content": content.encode(), "headers": {"Content-Type": "application/json"}}


def _none(_: httpx.Response) -> None:
    return None


def _one(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda response: t.parse(cls, response.json())


def _page(cls: type[T]) -> Callable[[httpx.Response], t.Page[T]]:
    return lambda response: t.parse_page(cls, response.json())


def _many(cls: type[T]) -> Callable[[httpx.Response], list[T]]:
    return lambda response: t.parse_list(cls, response.json())


def _iso(value: datetime) -> str:
    """A time as ISO 8601 with its offset, as the server requires: a naive time is taken as
    local time (Python's convention, and what a date typed in a terminal means)."""
    return (value if value.tzinfo is not None else value.astimezone()).isoformat()


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters without the unset ones; times as ISO 8601, booleans as true/false."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, datetime):
            value = _iso(value)
        out[key] = value
    return out


def _body(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _model(name: str) -> str:
    return f"{API}/models/{quote(str(name), safe='')}"


def _file(path: str) -> str:
    return quote(path.lstrip("/"), safe="/")


def _target(version: int | None, alias: str | None, stage: str | None) -> dict[str, Any]:
    given = [v for v in (version, alias, stage) if v is not None]
    if len(given) > 1:
        raise ValueError("choose the version by one of version=, alias= or stage=")
    return _params(version=version, alias=alias, stage=None if stage is None else str(stage))


# --- auth and API keys -----------------------------------------------------------------------


def login(email: str, password: str) -> Call[t.Tokens]:
    return Call(
        "POST", f"{API}/auth/login", _one(t.Tokens), json={"email": email, "password": password}
    )


def login_sso(code: str, code_verifier: str) -> Call[t.Tokens]:
    body = {"code": code, "code_verifier": code_verifier}
    return Call("POST", f"{API}/auth/sso/token", _one(t.Tokens), json=body)


def register(email: str, password: str, full_name: str | None) -> Call[t.User]:
    body = _body(email=email, password=password, full_name=full_name)
    return Call("POST", f"{API}/auth/register", _one(t.User), json=body)


def me() -> Call[t.User]:
    return Call("GET", f"{API}/auth/me", _one(t.User))


def update_me(fields: Mapping[str, Any]) -> Call[t.User]:
    return Call("PATCH", f"{API}/auth/me", _one(t.User), json=dict(fields))


def erase_me() -> Call[None]:
    return Call("DELETE", f"{API}/auth/me", _none)


def logout(refresh_token: str) -> Call[None]:
    return Call("POST", f"{API}/auth/logout", _none, json={"refresh_token": refresh_token})


def logout_all() -> Call[None]:
    return Call("POST", f"{API}/auth/logout-all", _none)


def list_users(limit: int, offset: int) -> Call[t.Page[t.User]]:
    return Call("GET", f"{API}/users", _page(t.User), params=_params(limit=limit, offset=offset))


def get_user(user_id: str) -> Call[t.UserDetail]:
    return Call("GET", f"{API}/users/{quote(user_id, safe='')}", _one(t.UserDetail))


def erase_user(user_id: str) -> Call[None]:
    return Call("DELETE", f"{API}/users/{quote(user_id, safe='')}", _none)


def update_user(user_id: str, fields: Mapping[str, Any]) -> Call[t.User]:
    path = f"{API}/users/{quote(user_id, safe='')}"
    return Call("PATCH", path, _one(t.User), json=dict(fields))


def create_api_key(
    name: str,
    expires_at: datetime | None,
    scopes: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> Call[t.ApiKeyCreated]:
    body = _body(
        name=name,
        expires_at=None if expires_at is None else _iso(expires_at),
        scopes=None if scopes is None else list(scopes),
        models=None if models is None else list(models),
    )
    return Call("POST", f"{API}/api-keys", _one(t.ApiKeyCreated), json=body)


def list_api_keys(limit: int, offset: int) -> Call[t.Page[t.ApiKey]]:
    return Call(
        "GET", f"{API}/api-keys", _page(t.ApiKey), params=_params(limit=limit, offset=offset)
    )


def revoke_api_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"{API}/api-keys/{quote(key_id, safe='')}", _none)


# --- registry --------------------------------------------------------------------------------


def list_models(
    *,
    search: str | None,
    stage: str | None,
    framework: str | None,
    task_type: str | None,
    tag: str | None,
    include_archived: bool,
    sort: str | None,
    limit: int,
    offset: int,
) -> Call[t.Page[t.Model]]:
    params = _params(
        search=search,
        stage=stage,
        framework=framework,
        task_type=task_type,
        tag=tag,
        include_archived=include_archived or None,
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return Call("GET", f"{API}/models", _page(t.Model), params=params)


def get_model(name: str) -> Call[t.Model]:
    return Call("GET", _model(name), _one(t.Model))


def update_model(
    name: str, *, description: str | None, task_type: str | None, tags: Sequence[str] | None
) -> Call[t.Model]:
    body = _body(
        description=description, task_type=task_type, tags=None if tags is None else list(tags)
    )
    return Call("PATCH", _model(name), _one(t.Model), json=body)


def delete_model(name: str) -> Call[None]:
    return Call("DELETE", _model(name), _none)


def list_versions(name: str, limit: int, offset: int) -> Call[t.Page[t.Version]]:
    params = _params(limit=limit, offset=offset)
    return Call("GET", f"{_model(name)}/versions", _page(t.Version), params=params)


def get_version(name: str, version: int) -> Call[t.Version]:
    return Call("GET", f"{_model(name)}/versions/{int(version)}", _one(t.Version))


def update_version(name: str, version: int, fields: Mapping[str, Any]) -> Call[t.Version]:
    body = dict(fields)
    if isinstance(body.get("experiment_id"), t.Experiment):
        body["experiment_id"] = t.experiment_id(body["experiment_id"])
    return Call("PATCH", f"{_model(name)}/versions/{int(version)}", _one(t.Version), json=body)


def set_stage(name: str, version: int, stage: str) -> Call[t.Version]:
    path = f"{_model(name)}/versions/{int(version)}/lifecycle"
    return Call("PATCH", path, _one(t.Version), json={"stage": str(stage)})


def delete_version(name: str, version: int) -> Call[None]:
    return Call("DELETE", f"{_model(name)}/versions/{int(version)}", _none)


def set_alias(name: str, alias: str, version: int) -> Call[t.Version]:
    path = f"{_model(name)}/aliases/{quote(alias, safe='')}"
    return Call("PUT", path, _one(t.Version), json={"version": int(version)})


def delete_alias(name: str, alias: str) -> Call[None]:
    return Call("DELETE", f"{_model(name)}/aliases/{quote(alias, safe='')}", _none)


def upload(
    file: IO[bytes],
    filename: str,
    name: str,
    *,
    description: str | None = None,
    framework: str | None = None,
    task_type: str | None = None,
    input_schema: Mapping[str, Any] | None = None,
    output_schema: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    experiment_id: t.ExperimentRef | None = None,
    reference_path: str | None = None,
) -> Call[t.Version]:
    form: dict[str, str] = {"name": name}
    for key, text in (
        ("description", description),
        ("framework", framework),
        ("task_type", task_type),
        ("experiment_id", None if experiment_id is None else t.experiment_id(experiment_id)),
        ("reference_path", reference_path),
    ):
        if text is not None:
            form[key] = str(text)
    for key, value in (
        ("input_schema", input_schema),
        ("output_schema", output_schema),
        (
            "metrics",
            None
            if metrics is None
            else {k: finite(f"metric {k!r}", v) for k, v in metrics.items()},
        ),
        ("hyperparameters", hyperparameters),
        ("tags", None if tags is None else list(tags)),
        ("metadata", metadata),
    ):
        if value is not None:
            try:
                form[key] = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:  # NaN, infinity, an object JSON cannot hold
                raise InvalidInput(f"{key} cannot be sent: {exc}") from exc
    files = {"file": (filename, file, "application/octet-stream")}
    return Call("POST", f"{API}/models/upload", _one(t.Version), data=form, files=files)


def download_path(name: str, version: int) -> str:
    return f"{_model(name)}/versions/{int(version)}/download"


def download_url(name: str, version: int, expires_in: int | None) -> Call[t.DownloadLink]:
    path = f"{_model(name)}/versions/{int(version)}/download-url"
    return Call("GET", path, _one(t.DownloadLink), params=_params(expires_in=expires_in))


# --- files -----------------------------------------------------------------------------------


def upload_file(file: IO[bytes], filename: str, path: str | None) -> Call[t.StoredFile]:
    data = None if path is None else {"path": path}
    files = {"file": (filename, file, "application/octet-stream")}
    return Call("POST", f"{API}/files/upload", _one(t.StoredFile), data=data, files=files)


def list_files(prefix: str | None, limit: int, offset: int) -> Call[t.Page[t.FileInfo]]:
    params = _params(prefix=prefix, limit=limit, offset=offset)
    return Call("GET", f"{API}/files", _page(t.FileInfo), params=params)


def file_download_path(path: str) -> str:
    return f"{API}/files/download/{_file(path)}"


def file_url(path: str, expires_in: int | None) -> Call[t.DownloadLink]:
    return Call(
        "GET",
        f"{API}/files/presigned-url/{_file(path)}",
        _one(t.DownloadLink),
        params=_params(expires_in=expires_in),
    )


def delete_file(path: str) -> Call[None]:
    return Call("DELETE", f"{API}/files/{_file(path)}", _none)


# --- experiments -----------------------------------------------------------------------------


def _experiment(experiment: t.ExperimentRef) -> str:
    return f"{API}/experiments/{quote(t.experiment_id(experiment), safe='')}"


def create_experiment(
    name: str,
    *,
    description: str | None,
    parameters: Mapping[str, Any] | None,
    tags: Sequence[str] | None,
) -> Call[t.Experiment]:
    body = _body(
        name=name,
        description=description,
        parameters=None if parameters is None else dict(parameters),
        tags=None if tags is None else list(tags),
    )
    return Call("POST", f"{API}/experiments", _one(t.Experiment), json=body)


def list_experiments(
    search: str | None,
    tag: str | None,
    limit: int,
    offset: int,
    *,
    sort: str | None = None,
    order: str | None = None,
    filters: Sequence[str] = (),
) -> Call[t.Page[t.Experiment]]:
    params = _params(search=search, tag=tag, limit=limit, offset=offset, sort=sort, order=order)
    if filters:
        params["filter"] = list(filters)
    return Call("GET", f"{API}/experiments", _page(t.Experiment), params=params)


def finish_experiment(experiment: t.ExperimentRef, status: str) -> Call[t.Experiment]:
    return update_experiment(experiment, {"status": status})


def compare_runs(runs: Sequence[t.ExperimentRef]) -> Call[t.Comparison]:
    params = {"id": [t.experiment_id(run) for run in runs]}
    return Call("GET", f"{API}/compare/runs", _one(t.Comparison), params=params)


def compare_versions(version_ids: Sequence[str], days: int | None) -> Call[t.Comparison]:
    params = _params(days=days)
    params["id"] = list(version_ids)
    return Call("GET", f"{API}/compare/versions", _one(t.Comparison), params=params)


def version_ref(ref: str) -> tuple[str, int] | None:
    """Split a version reference `model:version` (None for anything else, e.g. a UUID)."""
    name, sep, number = ref.rpartition(":")
    if sep and name and number.isdecimal():
        return name, int(number)
    return None


def get_experiment(experiment_id: t.ExperimentRef) -> Call[t.Experiment]:
    return Call("GET", _experiment(experiment_id), _one(t.Experiment))


def update_experiment(
    experiment_id: t.ExperimentRef, fields: Mapping[str, Any]
) -> Call[t.Experiment]:
    return Call("PATCH", _experiment(experiment_id), _one(t.Experiment), json=dict(fields))


def delete_experiment(experiment_id: t.ExperimentRef) -> Call[None]:
    return Call("DELETE", _experiment(experiment_id), _none)


def log_metrics(
    experiment_id: t.ExperimentRef,
    metrics: Mapping[str, float] | Sequence[t.Metric],
    step: int | None,
) -> Call[list[t.Metric]]:
    if isinstance(metrics, Mapping):
        points = [
            _body(key=k, value=finite(f"metric {k!r}", v), step=step) for k, v in metrics.items()
        ]
    else:
        points = [
            _body(
                key=m.key,
                value=finite(f"metric {m.key!r}", m.value),
                step=m.step,
                timestamp=None if m.timestamp is None else _iso(m.timestamp),
            )
            for m in metrics
        ]
    path = f"{_experiment(experiment_id)}/metrics"
    return Call("POST", path, _many(t.Metric), json=points)


def get_metrics(experiment_id: t.ExperimentRef, key: str | None) -> Call[list[t.Metric]]:
    path = f"{_experiment(experiment_id)}/metrics"
    return Call("GET", path, _many(t.Metric), params=_params(key=key))


# --- predictions and analytics ---------------------------------------------------------------


def predict(
    name: str, inputs: Any, *, version: int | None, alias: str | None, stage: str | None
) -> Call[t.Prediction]:
    return Call(
        "POST",
        f"{API}/predict/{quote(str(name), safe='')}",
        _prediction,
        params=_target(version, alias, stage),
        json={"inputs": to_inputs(inputs)},
    )


def _prediction(response: httpx.Response) -> t.Prediction:
    """A table's predictions as they came; a network's output tensors as NumPy arrays."""
    result = t.parse(t.Prediction, response.json())
    if not result.outputs:
        return result
    return dataclasses.replace(result, outputs=as_arrays(result.outputs))


def list_predictions(
    *,
    model_id: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    include_payloads: bool,
    limit: int,
    offset: int,
) -> Call[t.Page[t.LoggedPrediction]]:
    params = _params(
        model_id=model_id,
        status=status,
        since=since,
        until=until,
        include="payloads" if include_payloads else None,
        limit=limit,
        offset=offset,
    )
    return Call("GET", f"{API}/predictions", _page(t.LoggedPrediction), params=params)


def get_prediction(prediction_id: str) -> Call[t.LoggedPrediction]:
    path = f"{API}/predictions/{quote(str(prediction_id), safe='')}"
    return Call("GET", path, _one(t.LoggedPrediction))


def model_analytics(
    model_id: str | None, since: datetime | None, until: datetime | None
) -> Call[list[t.VersionStats]]:
    params = _params(model_id=model_id, since=since, until=until)
    return Call("GET", f"{API}/analytics/models", _many(t.VersionStats), params=params)


def usage(days: int, model_id: str | None) -> Call[list[t.DailyUsage]]:
    params = _params(days=days, model_id=model_id)
    return Call("GET", f"{API}/analytics/usage", _many(t.DailyUsage), params=params)


# --- batch jobs ------------------------------------------------------------------------------


def _job(job_id: str) -> str:
    return f"{API}/batch-jobs/{quote(str(job_id), safe='')}"


def create_batch_job(
    model: str, input_path: str, output_path: str, *, version: int | str | None, format: str
) -> Call[t.BatchJob]:
    body = _body(
        model=model,
        version=version,
        input_path=input_path,
        output_path=output_path,
        format=str(format),
    )
    return Call("POST", f"{API}/batch-jobs", _one(t.BatchJob), json=body)


def get_batch_job(job_id: str) -> Call[t.BatchJob]:
    return Call("GET", _job(job_id), _one(t.BatchJob))


def list_batch_jobs(status: str | None, limit: int, offset: int) -> Call[t.Page[t.BatchJob]]:
    params = _params(status=None if status is None else str(status), limit=limit, offset=offset)
    return Call("GET", f"{API}/batch-jobs", _page(t.BatchJob), params=params)


def cancel_batch_job(job_id: str) -> Call[t.BatchJob]:
    return Call("POST", f"{_job(job_id)}/cancel", _one(t.BatchJob))


# --- teams -----------------------------------------------------------------------------------


def _team(slug: str) -> str:
    return f"{API}/teams/{quote(str(slug), safe='')}"


def create_team(slug: str, name: str, description: str | None) -> Call[t.Team]:
    body = {"slug": slug, "name": name, "description": description}
    return Call("POST", f"{API}/teams", _one(t.Team), json=body)


def list_teams() -> Call[list[t.Team]]:
    return Call("GET", f"{API}/teams", _many(t.Team))


def get_team(slug: str) -> Call[t.Team]:
    return Call("GET", _team(slug), _one(t.Team))


def update_team(slug: str, fields: Mapping[str, Any]) -> Call[t.Team]:
    return Call("PATCH", _team(slug), _one(t.Team), json=dict(fields))


def delete_team(slug: str) -> Call[None]:
    return Call("DELETE", _team(slug), _none)


def list_members(slug: str) -> Call[list[t.TeamMember]]:
    return Call("GET", f"{_team(slug)}/members", _many(t.TeamMember))


def add_member(slug: str, email: str, role: str) -> Call[t.TeamMember]:
    body = {"email": email, "role": role}
    return Call("POST", f"{_team(slug)}/members", _one(t.TeamMember), json=body)


def set_member_role(slug: str, user_id: str, role: str) -> Call[t.TeamMember]:
    path = f"{_team(slug)}/members/{quote(str(user_id), safe='')}"
    return Call("PATCH", path, _one(t.TeamMember), json={"role": role})


def remove_member(slug: str, user_id: str) -> Call[None]:
    return Call("DELETE", f"{_team(slug)}/members/{quote(str(user_id), safe='')}", _none)


def invite(slug: str, email: str, role: str) -> Call[t.TeamInvitation]:
    body = {"email": email, "role": role}
    return Call("POST", f"{_team(slug)}/invitations", _one(t.TeamInvitation), json=body)


def list_invitations(slug: str) -> Call[list[t.TeamInvitation]]:
    return Call("GET", f"{_team(slug)}/invitations", _many(t.TeamInvitation))


def accept_invitation(token: str) -> Call[t.Team]:
    return Call("POST", f"{API}/teams/invitations/accept", _one(t.Team), json={"token": token})


# --- traffic policies ------------------------------------------------------------------------


def _route(route: t.TrafficRoute | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(route, t.TrafficRoute):
        return {"target": route.target, "weight": route.weight}
    return dict(route)


def _shadow(shadow: t.ShadowRoute | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if shadow is None:
        return None
    if isinstance(shadow, t.ShadowRoute):
        return {"target": shadow.target, "sample_rate": shadow.sample_rate}
    return dict(shadow)


def set_traffic(
    name: str,
    routes: Sequence[t.TrafficRoute | Mapping[str, Any]],
    shadow: t.ShadowRoute | Mapping[str, Any] | None,
) -> Call[t.TrafficPolicy]:
    # A PUT replaces the whole policy: "shadow": null says there is none.
    body = {"routes": [_route(route) for route in routes], "shadow": _shadow(shadow)}
    return Call("PUT", f"{_model(name)}/traffic", _one(t.TrafficPolicy), json=body)


def get_traffic(name: str) -> Call[t.TrafficPolicy]:
    return Call("GET", f"{_model(name)}/traffic", _one(t.TrafficPolicy))


def delete_traffic(name: str) -> Call[None]:
    return Call("DELETE", f"{_model(name)}/traffic", _none)


def traffic_stats(
    name: str, since: datetime | None, until: datetime | None
) -> Call[t.TrafficStats]:
    params = _params(since=since, until=until)
    return Call("GET", f"{_model(name)}/traffic/stats", _one(t.TrafficStats), params=params)


# --- drift -----------------------------------------------------------------------------------


def _reference(name: str, version: int) -> str:
    return f"{_model(name)}/versions/{int(version)}/reference"


def set_reference(name: str, version: int, path: str) -> Call[t.Reference]:
    return Call("PUT", _reference(name, version), _one(t.Reference), json={"path": path})


def get_reference(name: str, version: int) -> Call[t.Reference]:
    return Call("GET", _reference(name, version), _one(t.Reference))


def delete_reference(name: str, version: int) -> Call[None]:
    return Call("DELETE", _reference(name, version), _none)


def drift(
    name: str, version: int | str | None, since: datetime | None, until: datetime | None
) -> Call[t.DriftReport]:
    params = _params(version=None if version is None else str(version), since=since, until=until)
    return Call("GET", f"{_model(name)}/drift", _one(t.DriftReport), params=params)

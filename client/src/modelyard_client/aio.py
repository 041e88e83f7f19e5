"""`AsyncClient`: the asynchronous twin of `modelyard_client.sync.Client`, method for method."""

from __future__ import annotations

import asyncio
import functools
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from modelyard_client import __version__, artifacts, calls
from modelyard_client import types as t
from modelyard_client.credentials import resolve
from modelyard_client.errors import ApiError, ConnectionFailed, ModelyardClientError
from modelyard_client.exporters import DEFAULT_TOLERANCE
from modelyard_client.sync import _deadline, _download_target, _next_poll
from modelyard_client.transfer import Progress, ProgressFile, RetryPolicy, is_retryable_error
from modelyard_client.versions import pick_version

T = TypeVar("T")
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=300.0)  # a large upload is probed before it answers


class AsyncClient:
    """A Modelyard server, from asyncio code (`async with AsyncClient() as client:`).

    `Client()` reads MODELYARD_URL and MODELYARD_API_KEY (or MODELYARD_TOKEN), else the login
    stored by `modelyard login`. Every refusal raises `ApiError` (status, title, detail); 429
    and 503 answers are retried with backoff, honouring Retry-After.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        credentials = resolve(url, api_key=api_key, token=token)
        self.url = credentials.url
        self.retry = retry or RetryPolicy()
        self._refresh_token: str | None = None
        self._http = httpx.AsyncClient(
            base_url=credentials.url,
            headers={"User-Agent": f"modelyard-client/{__version__}", **credentials.headers},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        refreshed = False
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = self.retry.wait_after(None, attempt) if is_retryable_error(exc) else None
                if wait is None:
                    raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from exc
            else:
                if response.status_code == 401 and not refreshed and self._refresh_token:
                    # The access token of login() lives 30 minutes: trade the refresh token for
                    # a new pair once, then send the request again.
                    refreshed = True
                    if await self._refresh():
                        continue
                wait = self.retry.wait_after(response, attempt)
                if wait is None:
                    if response.is_error:
                        raise ApiError.from_response(response)
                    return response
            await asyncio.sleep(wait)
            attempt += 1

    async def _refresh(self) -> bool:
        """Renew the login's tokens; tell whether that worked."""
        try:
            answer = await self._http.post(
                calls.REFRESH_PATH, json={"refresh_token": self._refresh_token}
            )
        except httpx.TransportError:
            return False
        if answer.status_code != 200:
            self._refresh_token = None
            return False
        self._use_tokens(t.parse(t.Tokens, answer.json()))
        return True

    def _use_tokens(self, tokens: t.Tokens) -> None:
        self._refresh_token = tokens.refresh_token
        self._http.headers.pop("X-API-Key", None)
        self._http.headers["Authorization"] = f"Bearer {tokens.access_token}"

    async def _run(self, call: calls.Call[T]) -> T:
        kwargs: dict[str, Any] = {"params": call.params}
        if call.json is not None:
            kwargs.update(calls.json_body(call.json))
        if call.data is not None:
            kwargs["data"] = call.data
        if call.files is not None:
            kwargs["files"] = call.files
        response = await self._send(call.method, call.path, **kwargs)
        try:
            return call.read(response)
        except (ValueError, KeyError, TypeError) as exc:
            # Not a Modelyard answer: a proxy's page, another service on that port, ...
            raise ModelyardClientError(
                f"unexpected answer from {self.url}{call.path} (is it a Modelyard server?): "
                f"HTTP {response.status_code}, {response.headers.get('content-type', 'no type')}"
            ) from exc

    async def _download(self, path: str, dest: Path, progress: Progress | None) -> Path:
        attempt = 0
        refreshed = False
        while True:
            try:
                async with self._http.stream("GET", path) as response:
                    if response.status_code == 401 and not refreshed and self._refresh_token:
                        refreshed = True
                        if await self._refresh():
                            continue
                    wait = self.retry.wait_after(response, attempt)
                    if wait is None:
                        if response.is_error:
                            await response.aread()
                            raise ApiError.from_response(response)
                        total = int(response.headers.get("content-length") or 0)
                        partial = dest.with_name(dest.name + ".part")
                        done = 0
                        with partial.open("wb") as f:
                            async for chunk in response.aiter_bytes():
                                f.write(chunk)
                                done += len(chunk)
                                if progress is not None:
                                    progress(done, total)
                        partial.replace(dest)
                        return dest
            except httpx.TransportError as exc:
                wait = self.retry.wait_after(None, attempt) if is_retryable_error(exc) else None
                if wait is None:
                    raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from exc
            await asyncio.sleep(wait)
            attempt += 1

    # --- auth and API keys -----------------------------------------------------------------

    async def login(self, email: str, password: str) -> t.Tokens:
        """Log in with an email and password; this client then uses the access token,
        renewed with the refresh token when it expires."""
        tokens = await self._run(calls.login(email, password))
        self._use_tokens(tokens)
        return tokens

    async def login_sso(self, code: str, code_verifier: str) -> t.Tokens:
        """Spend the one-time code of a single sign-on (see `modelyard_client.sso`) with its
        PKCE verifier; this client then uses the session's tokens, as after `login`."""
        tokens = await self._run(calls.login_sso(code, code_verifier))
        self._use_tokens(tokens)
        return tokens

    async def register(self, email: str, password: str, *, full_name: str | None = None) -> t.User:
        """Create an account."""
        return await self._run(calls.register(email, password, full_name))

    async def me(self) -> t.User:
        """Return the user these credentials belong to."""
        return await self._run(calls.me())

    async def update_me(self, **fields: Any) -> t.User:
        """Change your full_name, or your password (with current_password: this ends every
        session and API key you had)."""
        return await self._run(calls.update_me(fields))

    async def erase_me(self) -> None:
        """Erase your account and everything it owns, irreversibly (models, versions, files,
        experiments, keys); needs a login session, not an API key. This client is signed out."""
        await self._run(calls.erase_me())
        self._refresh_token = None
        self._http.headers.pop("Authorization", None)

    async def logout(self, *, everywhere: bool = False) -> None:
        """End this login session (or, with `everywhere`, every session of the account)."""
        if everywhere:
            await self._run(calls.logout_all())
        elif self._refresh_token:
            await self._run(calls.logout(self._refresh_token))
        self._refresh_token = None
        self._http.headers.pop("Authorization", None)

    async def list_users(
        self, *, limit: int = calls.DEFAULT_LIMIT, offset: int = 0
    ) -> t.Page[t.User]:
        """List every user (admins only)."""
        return await self._run(calls.list_users(limit, offset))

    async def get_user(self, user_id: str) -> t.UserDetail:
        """Return one user, with how much it owns (admins only)."""
        return await self._run(calls.get_user(user_id))

    async def erase_user(self, user_id: str) -> None:
        """Erase another user's account and everything it owns, irreversibly (admins only)."""
        await self._run(calls.erase_user(user_id))

    async def update_user(
        self, user_id: str, *, is_active: bool | None = None, is_admin: bool | None = None
    ) -> t.User:
        """Activate, deactivate, promote or demote a user (admins only)."""
        fields = {
            k: v for k, v in (("is_active", is_active), ("is_admin", is_admin)) if v is not None
        }
        return await self._run(calls.update_user(user_id, fields))

    async def create_api_key(
        self,
        name: str,
        *,
        expires_at: datetime | None = None,
        scopes: Sequence[str] | None = None,
        models: Sequence[str] | None = None,
    ) -> t.ApiKeyCreated:
        """Make an API key (needs a login session); its `key` is shown this once only.

        `scopes`: any of read, predict, write, admin (default: read and predict); `models`: the
        only models it may act on (default: every model).
        """
        return await self._run(calls.create_api_key(name, expires_at, scopes, models))

    async def list_api_keys(
        self, *, limit: int = calls.DEFAULT_LIMIT, offset: int = 0
    ) -> t.Page[t.ApiKey]:
        """List your API keys (prefixes only, never secrets)."""
        return await self._run(calls.list_api_keys(limit, offset))

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke an API key: it stops working at once."""
        await self._run(calls.revoke_api_key(key_id))

    # --- registry --------------------------------------------------------------------------

    async def list_models(
        self,
        *,
        search: str | None = None,
        stage: str | None = None,
        framework: str | None = None,
        task_type: str | None = None,
        tag: str | None = None,
        include_archived: bool = False,
        sort: str | None = None,
        limit: int = calls.DEFAULT_LIMIT,
        offset: int = 0,
    ) -> t.Page[t.Model]:
        """List your models."""
        return await self._run(
            calls.list_models(
                search=search,
                stage=stage,
                framework=framework,
                task_type=task_type,
                tag=tag,
                include_archived=include_archived,
                sort=sort,
                limit=limit,
                offset=offset,
            )
        )

    async def get_model(self, name: str) -> t.Model:
        """Return a model (by name or id) with its versions summarised."""
        return await self._run(calls.get_model(name))

    async def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        task_type: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> t.Model:
        """Change a model's description, task type or tags."""
        return await self._run(
            calls.update_model(name, description=description, task_type=task_type, tags=tags)
        )

    async def delete_model(self, name: str) -> None:
        """Archive a model and its versions (soft delete)."""
        await self._run(calls.delete_model(name))

    async def list_versions(
        self, name: str, *, limit: int = calls.DEFAULT_LIMIT, offset: int = 0
    ) -> t.Page[t.Version]:
        """List a model's versions, newest first."""
        return await self._run(calls.list_versions(name, limit, offset))

    async def get_version(
        self,
        name: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        stage: str | None = None,
    ) -> t.Version:
        """Return one version: by number, alias or stage (default: what predict would serve)."""
        if version is None:
            version = pick_version(await self.get_model(name), alias=alias, stage=stage)
        return await self._run(calls.get_version(name, version))

    async def update_version(self, name: str, version: int, **fields: Any) -> t.Version:
        """Change a version's description, metrics, hyperparameters, tags, metadata, schemas
        or experiment_id."""
        return await self._run(calls.update_version(name, version, fields))

    async def set_stage(self, name: str, version: int, stage: str) -> t.Version:
        """Move a version to a lifecycle stage; production demotes the previous one."""
        return await self._run(calls.set_stage(name, version, stage))

    promote = set_stage

    async def delete_version(self, name: str, version: int) -> None:
        """Archive a version (soft delete)."""
        await self._run(calls.delete_version(name, version))

    async def set_alias(self, name: str, alias: str, version: int) -> t.Version:
        """Point an alias such as "champion" at a version."""
        return await self._run(calls.set_alias(name, alias, version))

    async def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        await self._run(calls.delete_alias(name, alias))

    async def upload(
        self,
        path: str | Path,
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
        progress: Progress | None = None,
    ) -> t.Version:
        """Upload a model file as the next version of `name` (streamed from disk).

        `reference_path`: a CSV or Parquet file in your file area (see `upload_file`) that
        becomes the version's drift reference, stored with it.
        """
        path = Path(path)
        with ProgressFile(path, progress) as file:
            return await self._run(
                calls.upload(
                    file,
                    path.name,
                    name,
                    description=description,
                    framework=framework,
                    task_type=task_type,
                    input_schema=input_schema,
                    output_schema=output_schema,
                    metrics=metrics,
                    hyperparameters=hyperparameters,
                    tags=tags,
                    metadata=metadata,
                    experiment_id=experiment_id,
                    reference_path=reference_path,
                )
            )

    async def download(
        self,
        name: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        stage: str | None = None,
        dest: str | Path | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Download a version's artifact to `dest` (a file or folder; default: here, named
        `<model>-v<N>.<format>`) and return its path."""
        found = await self.get_version(name, version, alias=alias, stage=stage)
        target = _download_target(found, dest)
        return await self._download(calls.download_path(name, found.version), target, progress)

    async def download_url(
        self, name: str, version: int, *, expires_in: int | None = None
    ) -> t.DownloadLink:
        """A link that downloads the artifact without credentials until it expires."""
        return await self._run(calls.download_url(name, version, expires_in))

    # --- files -----------------------------------------------------------------------------

    async def upload_file(
        self, path: str | Path, dest_path: str | None = None, *, progress: Progress | None = None
    ) -> t.StoredFile:
        """Store a file in your file area (at `dest_path`, default: its own name)."""
        path = Path(path)
        with ProgressFile(path, progress) as file:
            return await self._run(calls.upload_file(file, path.name, dest_path))

    async def list_files(
        self, *, prefix: str | None = None, limit: int = calls.DEFAULT_LIMIT, offset: int = 0
    ) -> t.Page[t.FileInfo]:
        """List the files in your area."""
        return await self._run(calls.list_files(prefix, limit, offset))

    async def download_file(self, path: str, dest: str | Path | None = None) -> Path:
        """Download a file of your area to `dest` (default: its name, here)."""
        target = Path(dest) if dest is not None else Path(Path(path).name)
        if target.is_dir():
            target = target / Path(path).name
        return await self._download(calls.file_download_path(path), target, None)

    async def file_url(self, path: str, *, expires_in: int | None = None) -> t.DownloadLink:
        """A link that downloads the file without credentials until it expires."""
        return await self._run(calls.file_url(path, expires_in))

    async def delete_file(self, path: str) -> None:
        """Delete a file of your area."""
        await self._run(calls.delete_file(path))

    # --- experiments -----------------------------------------------------------------------

    async def create_experiment(
        self,
        name: str,
        *,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
    ) -> t.Experiment:
        """Create an experiment."""
        return await self._run(
            calls.create_experiment(name, description=description, parameters=parameters, tags=tags)
        )

    async def list_experiments(
        self,
        *,
        search: str | None = None,
        tag: str | None = None,
        limit: int = calls.DEFAULT_LIMIT,
        offset: int = 0,
        sort: str | None = None,
        order: str | None = None,
        filters: Sequence[str] = (),
    ) -> t.Page[t.Experiment]:
        """List your experiments with their latest metrics (`latest_metrics`), newest first.

        `sort` is `created_at`, `updated_at`, `ended_at`, `name` or `metrics.<key>` (by the
        latest value; runs without it last), `order` `desc` (default) or `asc`; each of
        `filters`, such as `"metrics.accuracy>=0.9"`, keeps the runs whose latest value passes.
        """
        return await self._run(
            calls.list_experiments(
                search, tag, limit, offset, sort=sort, order=order, filters=filters
            )
        )

    async def get_experiment(self, experiment_id: t.ExperimentRef) -> t.Experiment:
        """Return an experiment with its latest metrics and the versions it produced."""
        return await self._run(calls.get_experiment(experiment_id))

    async def update_experiment(
        self, experiment_id: t.ExperimentRef, **fields: Any
    ) -> t.Experiment:
        """Change an experiment's name, description, parameters, tags or status."""
        return await self._run(calls.update_experiment(experiment_id, fields))

    async def delete_experiment(self, experiment_id: t.ExperimentRef) -> None:
        """Delete an experiment (its versions stay, unlinked)."""
        await self._run(calls.delete_experiment(experiment_id))

    async def log_metrics(
        self,
        experiment_id: t.ExperimentRef,
        metrics: Mapping[str, float] | Sequence[t.Metric],
        *,
        step: int | None = None,
    ) -> list[t.Metric]:
        """Record metric points ({"loss": 0.2} at `step`, or Metric objects)."""
        return await self._run(calls.log_metrics(experiment_id, metrics, step))

    async def get_metrics(
        self, experiment_id: t.ExperimentRef, key: str | None = None
    ) -> list[t.Metric]:
        """Return an experiment's metric history, ordered by step."""
        return await self._run(calls.get_metrics(experiment_id, key))

    async def finish_experiment(
        self, experiment: str | t.Experiment, status: str = "completed"
    ) -> t.Experiment:
        """End a run: its status becomes `status` (`completed`, `failed` or `killed`) and its
        `ended_at` is set."""
        return await self._run(calls.finish_experiment(experiment, status))

    async def compare_runs(self, *runs: str | t.Experiment) -> t.Comparison:
        """Compare 2 to 10 of your runs: parameters and latest metrics side by side (each key
        with `differs`), and every metric's history per run."""
        return await self._run(calls.compare_runs(runs))

    async def compare_versions(
        self, *versions: str | t.Version, days: int | None = None
    ) -> t.Comparison:
        """Compare 2 to 10 model versions, each a `Version`, a version id or `"model:version"`:
        hyperparameters and metrics side by side, their runs' metric histories, and their
        serving figures (requests, failures, p50/p95 over the last `days` days, default 7;
        drift status over the last 24 hours)."""
        ids = []
        for version in versions:
            ref = None if isinstance(version, t.Version) else calls.version_ref(version)
            if ref is not None:
                version = await self.get_version(*ref)
            ids.append(version.id if isinstance(version, t.Version) else version)
        return await self._run(calls.compare_versions(ids, days))

    # --- predictions and analytics ---------------------------------------------------------

    async def predict(
        self,
        name: str,
        inputs: Any,
        *,
        version: int | None = None,
        alias: str | None = None,
        stage: str | None = None,
    ) -> t.Prediction:
        """Predict on rows, records, a NumPy array or a DataFrame (columns matched by name); a
        network on a NumPy array, a torch tensor or nested lists, or a dict of them by input
        name, answering its `outputs` by name."""
        return await self._run(
            calls.predict(name, inputs, version=version, alias=alias, stage=stage)
        )

    async def list_predictions(
        self,
        *,
        model_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        include_payloads: bool = False,
        limit: int = calls.DEFAULT_LIMIT,
        offset: int = 0,
    ) -> t.Page[t.LoggedPrediction]:
        """List logged predictions you made or that were made on your models."""
        return await self._run(
            calls.list_predictions(
                model_id=model_id,
                status=status,
                since=since,
                until=until,
                include_payloads=include_payloads,
                limit=limit,
                offset=offset,
            )
        )

    async def get_prediction(self, prediction_id: str) -> t.LoggedPrediction:
        """Return one logged prediction with its inputs and outputs."""
        return await self._run(calls.get_prediction(prediction_id))

    async def model_analytics(
        self,
        *,
        model_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[t.VersionStats]:
        """Per model version: totals, failures and inference time percentiles."""
        return await self._run(calls.model_analytics(model_id, since, until))

    async def usage(self, *, days: int = 30, model_id: str | None = None) -> list[t.DailyUsage]:
        """One row a day: predictions, failures, average inference time."""
        return await self._run(calls.usage(days, model_id))

    # --- batch jobs ------------------------------------------------------------------------

    async def create_batch_job(
        self,
        model: str,
        input_path: str,
        output_path: str,
        *,
        version: int | str | None = None,
        format: str = "csv",
    ) -> t.BatchJob:
        """Score a CSV (or Parquet) file of your area with a model version, in the background.

        `version`: a number or an alias (default: the version served without one), resolved now.
        The results are written to `output_path` in your area once every row is scored; see
        `wait_for_batch_job`.
        """
        return await self._run(
            calls.create_batch_job(model, input_path, output_path, version=version, format=format)
        )

    async def get_batch_job(self, job_id: str) -> t.BatchJob:
        """Return a batch job: its status, rows done and in all, error."""
        return await self._run(calls.get_batch_job(job_id))

    async def list_batch_jobs(
        self,
        *,
        status: str | None = None,
        limit: int = calls.DEFAULT_LIMIT,
        offset: int = 0,
    ) -> t.Page[t.BatchJob]:
        """List your batch jobs, newest first (only those in `status`, if given)."""
        return await self._run(calls.list_batch_jobs(status, limit, offset))

    async def cancel_batch_job(self, job_id: str) -> t.BatchJob:
        """Cancel a batch job: a queued one at once, a running one after its current chunk; no
        output is written. A job that has succeeded or failed raises `Conflict`."""
        return await self._run(calls.cancel_batch_job(job_id))

    async def wait_for_batch_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - Client's signature; the error holds the job
        poll: float = 1.0,
        progress: Progress | None = None,
    ) -> t.BatchJob:
        """Poll a batch job every `poll` seconds until it has succeeded, failed or been
        cancelled, and return it; `progress` gets (rows done, rows in all) after each poll.

        Raises:
            WaitTimedOut: it has not finished after `timeout` seconds (the job goes on).
        """
        deadline = _deadline(timeout, poll)
        while True:
            job = await self.get_batch_job(job_id)
            if progress is not None:
                progress(job.rows_done, job.rows_total or 0)
            if job.is_finished:
                return job
            await asyncio.sleep(_next_poll(job, deadline, timeout, poll))

    # --- traffic policies ------------------------------------------------------------------

    # --- teams ---------------------------------------------------------------------------

    async def create_team(
        self, slug: str, name: str | None = None, *, description: str | None = None
    ) -> t.Team:
        """Create a team (`slug`: its handle, lowercase letters, digits and -); you are its owner."""
        return await self._run(calls.create_team(slug, name or slug, description))

    async def list_teams(self) -> list[t.Team]:
        """List your teams, with your role in each."""
        return await self._run(calls.list_teams())

    async def get_team(self, slug: str) -> t.Team:
        """Return a team you are a member of (`NotFound` otherwise)."""
        return await self._run(calls.get_team(slug))

    async def update_team(self, slug: str, **fields: Any) -> t.Team:
        """Change `name`, `description` (maintainer) or `require_approval`, `protected_stages`,
        `protected_aliases` (owner)."""
        return await self._run(calls.update_team(slug, fields))

    async def delete_team(self, slug: str) -> None:
        """Delete a team (owner)."""
        await self._run(calls.delete_team(slug))

    async def list_members(self, slug: str) -> list[t.TeamMember]:
        """List a team's members and their roles, owners first."""
        return await self._run(calls.list_members(slug))

    async def add_member(self, slug: str, email: str, role: str = "viewer") -> t.TeamMember:
        """Add an existing user to a team with a role (owner)."""
        return await self._run(calls.add_member(slug, email, role))

    async def set_member_role(self, slug: str, user_id: str, role: str) -> t.TeamMember:
        """Give a member another role (owner); a team keeps one owner at least."""
        return await self._run(calls.set_member_role(slug, user_id, role))

    async def remove_member(self, slug: str, user_id: str) -> None:
        """Remove a member (owner), or leave the team (your own id)."""
        await self._run(calls.remove_member(slug, user_id))

    async def invite(self, slug: str, email: str, role: str = "viewer") -> t.TeamInvitation:
        """Invite an email to a team (owner); the answer's `token`, shown once, is what the
        invitee accepts with."""
        return await self._run(calls.invite(slug, email, role))

    async def list_invitations(self, slug: str) -> list[t.TeamInvitation]:
        """List a team's pending invitations (owner)."""
        return await self._run(calls.list_invitations(slug))

    async def accept_invitation(self, token: str) -> t.Team:
        """Join the team an invitation of your email is for."""
        return await self._run(calls.accept_invitation(token))

    async def set_traffic(
        self,
        name: str,
        routes: Sequence[t.TrafficRoute | Mapping[str, Any]],
        shadow: t.ShadowRoute | Mapping[str, Any] | None = None,
    ) -> t.TrafficPolicy:
        """Split the predict requests that name no version between versions by weight, and copy
        a sample of them to a shadow version; replaces the model's whole policy.

        `routes`: `TrafficRoute(target, weight)` or `{"target": "production", "weight": 90}`;
        targets are `v<N>`, `latest`, a stage or an alias. `shadow`: `ShadowRoute(target,
        sample_rate)` or `{"target": "v4", "sample_rate": 0.1}`.
        """
        return await self._run(calls.set_traffic(name, routes, shadow))

    async def get_traffic(self, name: str) -> t.TrafficPolicy:
        """Return the model's traffic policy, with the version each target resolves to now
        (`NotFound` when it has none)."""
        return await self._run(calls.get_traffic(name))

    async def delete_traffic(self, name: str) -> None:
        """Remove the model's traffic policy: its production (else newest) version serves all."""
        await self._run(calls.delete_traffic(name))

    async def traffic_stats(
        self, name: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> t.TrafficStats:
        """Compare the versions that served the model in a window (times with a zone), and its
        shadow versions' agreement with them."""
        return await self._run(calls.traffic_stats(name, since, until))

    # --- drift -----------------------------------------------------------------------------

    async def set_reference(self, name: str, version: int, path: str) -> t.Reference:
        """Make a CSV (header row naming the features) or Parquet file of your area the
        version's drift reference, replacing any earlier one."""
        return await self._run(calls.set_reference(name, version, path))

    async def get_reference(self, name: str, version: int) -> t.Reference:
        """Return a version's drift reference: its source, row count and per-feature summary."""
        return await self._run(calls.get_reference(name, version))

    async def delete_reference(self, name: str, version: int) -> None:
        """Remove a version's drift reference (the next drift report makes one from served
        rows)."""
        await self._run(calls.delete_reference(name, version))

    async def drift(
        self,
        name: str,
        *,
        version: int | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> t.DriftReport:
        """Compare a window of a version's logged inputs with its reference, feature by feature
        (PSI and Kolmogorov-Smirnov).

        `version`: a number or an alias (default: production, else the newest not archived);
        the window defaults to the last 24 hours (times with a zone).
        """
        return await self._run(calls.drift(name, version, since, until))

    # --- estimators ------------------------------------------------------------------------

    async def log_model(
        self,
        estimator: Any,
        name: str,
        *,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        input_example: Any = None,
        experiment: t.ExperimentRef | None = None,
        description: str | None = None,
        dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        finish_run: bool = False,
    ) -> t.Version:
        """Save an estimator in its safe format and upload it as the next version of `name`.

        scikit-learn goes through skops; ONNX, XGBoost and LightGBM through their native
        formats. The input schema is inferred from `input_example` (a DataFrame gives names).

        A PyTorch module (`[torch]` extra) or a Keras model (`[tensorflow]` extra) is exported
        to ONNX with a dynamic batch dimension on every input and output, run in ONNX Runtime on
        `input_example` (a tensor or array, or a dict of them by input name; required) and
        uploaded only if every output matches the model's within `tolerance` (else
        `ExportMismatch`, which names the output and the difference). Its framework is recorded
        as `pytorch` or `keras`; it is served as ONNX. `dynamic_axes` makes more dimensions of a
        module's inputs dynamic, e.g. `{"input_ids": {1: "sequence"}}`.

        Linked to `experiment`, the version's metrics become the run's latest metrics; with
        `finish_run`, the run is then marked `completed`.
        """
        with tempfile.TemporaryDirectory(prefix="modelyard-") as folder:
            # Serialising a large estimator is CPU-bound: off the event loop.
            saved = await asyncio.to_thread(
                functools.partial(
                    artifacts.save_model,
                    estimator,
                    Path(folder),
                    input_example,
                    dynamic_axes=dynamic_axes,
                    tolerance=tolerance,
                )
            )
            version = await self.upload(
                saved.path,
                name,
                description=description,
                input_schema=saved.input_schema,
                framework=saved.framework or None,
                metadata=saved.metadata,
                metrics=metrics,
                hyperparameters=params,
                tags=tags,
                experiment_id=experiment,
            )
        if finish_run and experiment is not None:
            await self.finish_experiment(experiment)
        return version

    async def load_model(
        self,
        name: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        stage: str | None = None,
    ) -> Any:
        """Download a version and load it through the safe loaders (skops with the server's
        trusted types, ONNX Runtime, XGBoost, LightGBM); pickle and joblib are refused."""
        found = await self.get_version(name, version, alias=alias, stage=stage)
        with tempfile.TemporaryDirectory(prefix="modelyard-") as folder:
            path = await self._download(
                calls.download_path(name, found.version), Path(folder) / "model", None
            )
            # Loading is CPU-bound: off the event loop.
            return await asyncio.to_thread(artifacts.load_model_file, path, found.format)

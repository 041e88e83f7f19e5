"""What the API answers, as dataclasses (fields the server adds later are ignored)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Stage(StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"
    DEPRECATED = "deprecated"
    ARCHIVED = "archived"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    full_name: str | None = None
    is_active: bool = True
    is_admin: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UserDetail(User):
    """A user as an admin reads one: the account, and how much it owns."""

    model_count: int = 0
    version_count: int = 0
    experiment_count: int = 0
    active_api_key_count: int = 0


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = 0


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    is_active: bool = True
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    scopes: list[str] = field(default_factory=list)
    models: list[str] | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyCreated:
    id: str
    name: str
    prefix: str
    key: str = field(repr=False)
    created_at: datetime | None = None
    expires_at: datetime | None = None
    scopes: list[str] = field(default_factory=list)
    models: list[str] | None = None


@dataclass(frozen=True, slots=True)
class VersionSummary:
    id: str
    version: int
    stage: str
    framework: str
    format: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    name: str
    owner_id: str
    description: str | None = None
    task_type: str | None = None
    tags: list[str] = field(default_factory=list)
    status: str = "active"
    latest_version: int | None = None
    production_version: int | None = None
    version_count: int = 0
    aliases: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    versions: list[VersionSummary] = field(default_factory=list)
    """Filled by `get_model` only."""


@dataclass(frozen=True, slots=True)
class Version:
    id: str
    model_id: str
    model_name: str
    version: int
    stage: str
    framework: str
    format: str
    task_type: str | None = None
    file_size: int = 0
    sha256: str = ""
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    experiment_id: str | None = None
    created_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def feature_names(self) -> list[str] | None:
        """The input schema's feature names, in order, when the version has one."""
        features = (self.input_schema or {}).get("features")
        if not isinstance(features, list):
            return None
        return [str(f.get("name")) for f in features if isinstance(f, dict)]


@dataclass(frozen=True, slots=True)
class DownloadLink:
    url: str
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredFile:
    path: str
    size: int
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    modified_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    value: float
    step: int = 0
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExperimentVersion:
    id: str
    model_id: str
    model_name: str
    version: int
    stage: str


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    name: str
    owner_id: str = ""
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    status: str = "active"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    """When the status left `running` (None while it runs)."""
    metrics: list[Metric] = field(default_factory=list)
    """Filled by `get_experiment` only: the latest point of each key."""
    latest_metrics: dict[str, float] = field(default_factory=dict)
    """Filled by `list_experiments` only: the latest value of each key."""
    model_versions: list[ExperimentVersion] = field(default_factory=list)
    """Filled by `get_experiment` only."""


# Where a method takes an experiment (a run): its id, or the `Experiment` itself.
ExperimentRef = str | Experiment


def experiment_id(experiment: ExperimentRef) -> str:
    """The id of an experiment given by id or as the object."""
    return experiment.id if isinstance(experiment, Experiment) else str(experiment)


@dataclass(frozen=True, slots=True)
class ComparedItem:
    """One compared run or version (the version fields are None for a run, and the reverse)."""

    id: str
    label: str
    created_at: datetime | None = None
    model_id: str | None = None
    model_name: str | None = None
    version: int | None = None
    stage: str | None = None
    experiment_id: str | None = None
    status: str | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ComparedValues:
    """One parameter or metric across the compared items, in their order."""

    key: str
    values: list[Any]
    differs: bool


@dataclass(frozen=True, slots=True)
class ServingFigures:
    requests: int
    failures: int
    p50_inference_time_ms: float | None = None
    p95_inference_time_ms: float | None = None
    last_prediction_at: datetime | None = None
    drift: str = "no_reference"


@dataclass(frozen=True, slots=True)
class Comparison:
    """Runs or versions side by side: see `Client.compare_runs` and `compare_versions`."""

    kind: str
    items: list[ComparedItem]
    params: list[ComparedValues]
    metrics: list[ComparedValues]
    histories: dict[str, list[list[list[float]]]] = field(default_factory=dict)
    """Per metric key, per item, its [step, value] points."""
    serving: list[ServingFigures] | None = None
    """Versions only: per item, requests, failures, latency and drift status."""
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """The answer of `predict`: a table's one prediction per input row (`predictions`, and
    for a classifier `probabilities`, `classes`, `confidence`), or a network's output tensors
    by name (`outputs`: NumPy arrays, nested lists where NumPy is not installed; `predictions`
    is then empty, as `outputs` is for a table)."""

    prediction_id: str
    model_id: str
    model_name: str
    version: int
    predictions: list[Any] = field(default_factory=list)
    probabilities: list[list[float]] | None = None
    classes: list[Any] | None = None
    confidence: list[float] | None = None
    inference_time_ms: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoggedPrediction:
    """A row of the prediction log."""

    id: str
    model_id: str | None
    version: int | None
    status: str
    protocol: str = "rest"
    model_name: str | None = None
    error: str | None = None
    inputs: Any = None
    outputs: Any = None
    n_rows: int = 0
    inference_time_ms: float | None = None
    created_at: datetime | None = None
    user_id: str | None = None
    api_key_id: str | None = None


@dataclass(frozen=True, slots=True)
class VersionStats:
    model_id: str
    model_name: str | None
    version: int | None
    total_predictions: int
    failed_predictions: int
    avg_inference_time_ms: float | None = None
    p50_inference_time_ms: float | None = None
    p95_inference_time_ms: float | None = None
    last_prediction_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DailyUsage:
    date: date
    prediction_count: int
    failed_count: int
    avg_inference_time_ms: float | None = None


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A batch prediction job: a file of your area scored in the background."""

    id: str
    status: str
    model_id: str
    model_name: str
    version: int
    input_path: str
    output_path: str
    format: str = "csv"
    rows_done: int = 0
    rows_total: int | None = None
    """Known once the input has been counted."""
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: dict[str, str] = field(default_factory=dict)
    """`self`, `cancel`, and `output` (downloads the results once the job has succeeded)."""

    @property
    def is_finished(self) -> bool:
        """Whether the job has succeeded, failed or been cancelled (it changes no more)."""
        return self.status in FINISHED_JOB_STATUSES


@dataclass(frozen=True, slots=True)
class TrafficRoute:
    """A share of the requests that name no version: its weight over the sum of weights."""

    target: str
    """`v<N>`, `latest`, a stage or an alias."""
    weight: int
    version: int | None = None
    """Read only: the version the target resolves to now (None: the route is skipped)."""


@dataclass(frozen=True, slots=True)
class ShadowRoute:
    """A version that gets a copy of `sample_rate` of the routed requests and answers no one."""

    target: str
    sample_rate: float
    version: int | None = None
    """Read only: as for a route (None: no shadow copies are made)."""


@dataclass(frozen=True, slots=True)
class Team:
    """A team, and the caller's role in it (`viewer`, `editor`, `maintainer` or `owner`)."""

    id: str
    slug: str
    name: str
    description: str | None = None
    role: str | None = None
    member_count: int = 0
    require_approval: bool = False
    protected_stages: list[str] = field(default_factory=list)
    protected_aliases: list[str] = field(default_factory=list)
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TeamMember:
    user_id: str
    email: str
    role: str
    full_name: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TeamInvitation:
    id: str
    team_slug: str
    email: str
    role: str
    created_at: datetime | None = None
    expires_at: datetime | None = None
    token: str | None = None
    """Only in the answer that made it: the invitee accepts with it."""


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    model_id: str
    model_name: str
    routes: list[TrafficRoute]
    shadow: ShadowRoute | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RouteStats:
    """The primary traffic one version served in the window."""

    version: int | None
    requests: int
    failures: int
    targets: list[str] = field(default_factory=list)
    """The policy's targets that resolve to this version now."""
    avg_inference_time_ms: float | None = None
    p50_inference_time_ms: float | None = None
    p95_inference_time_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ShadowStats:
    """One shadow version's predictions, and how they compared with the primary answers."""

    version: int | None
    requests: int
    failures: int
    avg_inference_time_ms: float | None = None
    p50_inference_time_ms: float | None = None
    p95_inference_time_ms: float | None = None
    label_rows: int = 0
    label_agreement: float | None = None
    value_rows: int = 0
    mean_absolute_difference: float | None = None


@dataclass(frozen=True, slots=True)
class TrafficStats:
    model_id: str
    model_name: str
    since: datetime | None = None
    until: datetime | None = None
    versions: list[RouteStats] = field(default_factory=list)
    shadows: list[ShadowStats] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FeatureSummary:
    """One feature of a drift reference; the numbers only for a numeric feature."""

    name: str
    kind: str
    reason: str | None = None
    count: int | None = None
    missing: int | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    cuts: list[float] | None = None
    proportions: list[float] | None = None
    sample_size: int | None = None


@dataclass(frozen=True, slots=True)
class Reference:
    """A version's drift reference; `source` is `file` (a file of your area) or `served` (the
    version's first served rows)."""

    model_id: str
    version_id: str
    version: int
    source: str
    row_count: int
    source_path: str | None = None
    created_at: datetime | None = None
    features: list[FeatureSummary] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReferenceInfo:
    source: str
    row_count: int
    source_path: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DriftWindow:
    since: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class DriftSample:
    rows: int
    max_rows: int
    predictions: int
    skipped_predictions: int = 0
    skipped_rows: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    psi_moderate: float
    psi_significant: float
    ks_p_value: float
    min_rows: int


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    name: str
    drifted: bool
    rows: int
    missing: int = 0
    skipped: str | None = None
    """Why the feature was not compared, if it was not."""
    mean: float | None = None
    reference_mean: float | None = None
    psi: float | None = None
    psi_level: str | None = None
    """`stable`, `moderate` or `significant`."""
    ks_statistic: float | None = None
    ks_p_value: float | None = None
    ks_flagged: bool = False


@dataclass(frozen=True, slots=True)
class DriftReport:
    """A window of a version's logged inputs compared with its reference, feature by feature."""

    model_id: str
    model_name: str
    version: int
    version_id: str
    status: str
    """`ok`, or `insufficient_data`: too few rows in the window to say anything."""
    drifted: bool
    window: DriftWindow
    reference: ReferenceInfo
    sample: DriftSample
    thresholds: DriftThresholds
    features: list[FeatureDrift] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: `items`, and the `total` across pages."""

    items: list[T]
    total: int
    limit: int
    offset: int


def parse(cls: type[T], data: Any) -> T:
    """Build dataclass `cls` from a JSON object, converting times, dates and nested objects."""
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {
        f.name: _convert(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]  # T is always a dataclass
        if f.name in data
    }
    return cls(**values)


def parse_page(cls: type[T], data: Any) -> Page[T]:
    """Build a page of `cls` items."""
    return Page(
        items=[parse(cls, item) for item in data["items"]],
        total=int(data["total"]),
        limit=int(data["limit"]),
        offset=int(data["offset"]),
    )


def parse_list(cls: type[T], data: Any) -> list[T]:
    """Build a list of `cls` items."""
    return [parse(cls, item) for item in data]


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if hint is datetime and isinstance(value, str):
        return datetime.fromisoformat(value)
    if hint is date and isinstance(value, str):
        return date.fromisoformat(value)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint) or (Any,)
        if dataclasses.is_dataclass(item):
            return [_convert(item, v) for v in value]
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return parse(hint, value)
    return value

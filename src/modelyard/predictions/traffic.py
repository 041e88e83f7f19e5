"""Traffic policies: `/api/v1/models/{model}/traffic` (weighted routes between versions, a
shadow version) and `/api/v1/models/{model}/traffic/stats` (the routes and the shadow compared).

A policy applies to predict requests that name no version, alias or stage, on both protocols and
the fast path: `service.resolve_serving` resolves it with the default target, so it is cached
with it and costs no database round trip per request; a change announces `registry_changed`, so
every worker and replica forgets the cached resolution at once. Targets are references
(`service.parse_ref`): `v<N>`, `latest`, a stage, or an alias. At PUT every target must resolve
to a servable version (409 otherwise); later, a route whose target no longer resolves is skipped
(with none left, the model's default version serves) and so is such a shadow.

Shadow predictions are logged with `shadow = true` and `shadow_of` the primary prediction; they
never count as the model's traffic in `/api/v1/analytics` (rollups leave them out) and are
summed apart in `shadow_rollups`, with how they compared with the primary.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Self

from fastapi import status
from pydantic import AfterValidator, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth.deps import CurrentUser
from modelyard.changes.events import Action, Events
from modelyard.db.deps import SessionDep
from modelyard.db.tables import RegisteredModel, TrafficPolicy, User, shadow_rollups
from modelyard.db.types import utcnow
from modelyard.edge.routing import make_router
from modelyard.errors import Conflict, NotFound
from modelyard.predictions import history, rollups, service
from modelyard.registry.deps import OwnedModel
from modelyard.registry.schemas import RESERVED_ALIAS, Stage
from modelyard.schemas import ReadModel, StrictModel
from modelyard.state import StateDep

router = make_router(prefix="/api/v1/models", tags=["traffic"])

MAX_ROUTES = 10
MAX_WEIGHT = 1_000_000


# An alias (registry rules), a stage, `latest` or `v<N>`: all lowercase words of this shape.
_TARGET = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def _target_ref(value: str) -> str:
    """Accept `v<N>`, `latest`, a stage that is served (not `archived`), or an alias name."""
    if value == Stage.ARCHIVED:
        raise ValueError("archived versions are never served")
    if not _TARGET.fullmatch(value):
        raise ValueError("a target is `v<N>`, `latest`, a stage or an alias")
    if service.parse_ref(value).alias is not None and RESERVED_ALIAS.fullmatch(value):
        raise ValueError(f"{value!r} is not a version reference (v1, v2, ...)")
    return value


TargetRef = Annotated[
    str,
    AfterValidator(_target_ref),
    Field(
        description="`v<N>` (a version number), `latest` (the newest version not archived), a "
        "stage (`production`, `staging`, `development`, `deprecated`) or an alias; a stage "
        "name wins over an alias of the same name",
        examples=["production", "challenger", "v4", "latest"],
    ),
]


class TrafficRoute(StrictModel):
    target: TargetRef
    weight: Annotated[
        int, Field(ge=0, le=MAX_WEIGHT, description="a share of the requests: weight / sum")
    ]


class ShadowSpec(StrictModel):
    target: TargetRef
    sample_rate: Annotated[
        float,
        Field(gt=0, le=1, description="the share of routed requests copied to the shadow"),
    ]


class TrafficPolicyIn(StrictModel):
    """A model's split of requests naming no version, and optionally its shadow version."""

    routes: Annotated[list[TrafficRoute], Field(min_length=1, max_length=MAX_ROUTES)]
    shadow: ShadowSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        targets = [route.target for route in self.routes]
        if len(set(targets)) != len(targets):
            raise ValueError("each target may have one route only")
        if sum(route.weight for route in self.routes) <= 0:
            raise ValueError("the weights must add up to more than 0")
        if self.shadow is not None and self.shadow.target in targets:
            raise ValueError("the shadow's target cannot be one of the routes' targets")
        return self


class RouteRead(ReadModel):
    target: str
    weight: int
    version: int | None = Field(
        description="the version the target resolves to now; null: none (the route is skipped)"
    )


class ShadowRead(ReadModel):
    target: str
    sample_rate: float
    version: int | None = Field(description="as for a route; null: no shadow copies are made")


class TrafficPolicyRead(ReadModel):
    model_id: uuid.UUID
    model_name: str
    routes: list[RouteRead]
    shadow: ShadowRead | None
    created_at: datetime
    updated_at: datetime


class RouteStats(ReadModel):
    version: int | None
    targets: list[str] = Field(description="the policy's targets resolving to it now")
    requests: int
    failures: int
    avg_inference_time_ms: float | None
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None


class ShadowStats(ReadModel):
    version: int | None
    requests: int
    failures: int
    avg_inference_time_ms: float | None
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None
    label_rows: int = Field(description="rows compared by label (classifiers)")
    label_agreement: float | None = Field(
        description="the share of those rows whose shadow label equals the primary's"
    )
    value_rows: int = Field(description="rows compared by value (regressors)")
    mean_absolute_difference: float | None = Field(
        description="the mean of |shadow - primary| over those rows"
    )


class TrafficStats(ReadModel):
    model_id: uuid.UUID
    model_name: str
    since: datetime | None
    until: datetime | None
    versions: list[RouteStats] = Field(
        description="primary traffic per version that served in the window"
    )
    shadows: list[ShadowStats] = Field(description="shadow predictions per shadow version")


class NoTrafficPolicy(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} has no traffic policy")


class UnresolvedTarget(Conflict):
    type = "unresolved-target"

    def __init__(self, model: str, target: str) -> None:
        super().__init__(f"target {target!r} does not resolve to a servable version of {model!r}")


# --- the use cases ----------------------------------------------------------------------------


async def get_policy(db: AsyncSession, model: RegisteredModel) -> TrafficPolicyRead:
    """Return the model's policy with what each target resolves to now.

    Raises:
        NoTrafficPolicy: the model has none (its default version serves).
    """
    policy = await db.get(TrafficPolicy, model.id)
    if policy is None:
        raise NoTrafficPolicy(model.name)
    return await _read(db, model, policy)


async def set_policy(
    db: AsyncSession, model: RegisteredModel, body: TrafficPolicyIn, *, events: Events
) -> TrafficPolicyRead:
    """Set (create or replace) the model's traffic policy; it applies at once everywhere.

    Raises:
        UnresolvedTarget: a target resolves to no servable version now (409).
    """
    targets = [route.target for route in body.routes]
    if body.shadow is not None:
        targets.append(body.shadow.target)
    for target in targets:
        if await service.resolve_ref(db, model, target) is None:
            raise UnresolvedTarget(model.name, target)
    routes = [route.model_dump() for route in body.routes]
    shadow = body.shadow.model_dump() if body.shadow is not None else None
    policy = await db.get(TrafficPolicy, model.id)
    if policy is None:
        policy = TrafficPolicy(model_id=model.id, routes=routes, shadow=shadow)
        db.add(policy)
    else:
        policy.routes, policy.shadow = routes, shadow
        policy.updated_at = utcnow()
    try:
        await db.commit()
    except IntegrityError as exc:  # set at the same time by another request, or model gone
        await db.rollback()
        raise Conflict("the traffic policy changed at the same time; try again") from exc
    await _announce(model, routes, shadow, events=events)
    return await _read(db, model, policy)


async def delete_policy(db: AsyncSession, model: RegisteredModel, *, events: Events) -> None:
    """Remove the model's policy: its default version (production, else newest) serves again.

    Raises:
        NoTrafficPolicy: the model has none.
    """
    policy = await db.get(TrafficPolicy, model.id)
    if policy is None:
        raise NoTrafficPolicy(model.name)
    await db.delete(policy)
    await db.commit()
    await _announce(model, None, None, events=events)


async def _announce(
    model: RegisteredModel,
    routes: list[dict[str, Any]] | None,
    shadow: dict[str, Any] | None,
    *,
    events: Events,
) -> None:
    # Every worker and replica forgets the cached resolution (with its policy) at once.
    await events.registry_changed(model_id=model.id)
    await events.record(
        Action(
            name="traffic.changed",
            target_type="model",
            target_id=str(model.id),
            owner_id=model.owner_id,
            model_id=model.id,
            details={"model": model.name, "routes": routes, "shadow": shadow},
        )
    )


async def _read(
    db: AsyncSession, model: RegisteredModel, policy: TrafficPolicy
) -> TrafficPolicyRead:
    routes = []
    for route in policy.routes:
        target = await service.resolve_ref(db, model, route["target"])
        routes.append(
            RouteRead(
                target=route["target"],
                weight=route["weight"],
                version=target.version if target is not None else None,
            )
        )
    shadow = None
    if policy.shadow is not None:
        target = await service.resolve_ref(db, model, policy.shadow["target"])
        shadow = ShadowRead(
            target=policy.shadow["target"],
            sample_rate=policy.shadow["sample_rate"],
            version=target.version if target is not None else None,
        )
    return TrafficPolicyRead(
        model_id=model.id,
        model_name=model.name,
        routes=routes,
        shadow=shadow,
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )


async def traffic_stats(
    db: AsyncSession,
    user: User,
    model: RegisteredModel,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TrafficStats:
    """Compare the versions that served the model's traffic in a window, and its shadows.

    Read from the rollups (their cost follows the window, not the log): `since` and `until` are
    widened to whole minutes; counts, means and agreement are exact, percentiles within the
    error `rollups` documents. Shadow agreement was computed when each shadow row was written.
    """
    by_version: dict[int, list[str]] = {}
    policy = await db.get(TrafficPolicy, model.id)
    if policy is not None:
        for route in policy.routes:
            target = await service.resolve_ref(db, model, route["target"])
            if target is not None:
                by_version.setdefault(target.version, []).append(route["target"])
    versions = [
        RouteStats(
            version=row.version,
            targets=by_version.get(row.version, []) if row.version is not None else [],
            requests=row.total_predictions,
            failures=row.failed_predictions,
            avg_inference_time_ms=row.avg_inference_time_ms,
            p50_inference_time_ms=row.p50_inference_time_ms,
            p95_inference_time_ms=row.p95_inference_time_ms,
        )
        for row in await history.version_stats(
            db, user, model_id=model.id, since=since, until=until
        )
    ]
    return TrafficStats(
        model_id=model.id,
        model_name=model.name,
        since=since,
        until=until,
        versions=versions,
        shadows=await _shadow_stats(db, model.id, since=since, until=until),
    )


async def _shadow_stats(
    db: AsyncSession, model_id: uuid.UUID, *, since: datetime | None, until: datetime | None
) -> list[ShadowStats]:
    r = shadow_rollups.c
    query = (
        select(
            func.max(r.version).label("version"),
            func.sum(r.requests).label("requests"),
            func.sum(r.failures).label("failures"),
            func.sum(r.timed).label("timed"),
            func.sum(r.time_sum_ms).label("time_sum"),
            func.min(r.time_min_ms).label("low"),
            func.max(r.time_max_ms).label("high"),
            *(func.sum(r[name]).label(name) for name in rollups.BUCKET_COLUMNS),
            func.sum(r.label_rows).label("label_rows"),
            func.sum(r.agreed_rows).label("agreed_rows"),
            func.sum(r.value_rows).label("value_rows"),
            func.sum(r.abs_diff_sum).label("abs_diff_sum"),
        )
        .where(r.model_id == model_id, history.rollup_window(since, until, shadow_rollups))
        .group_by(r.version_id)
        .order_by(func.max(r.version).desc())
    )
    stats = []
    for row in (await db.execute(query)).mappings():
        # PostgreSQL sums bigints as numeric: integers here.
        timed, label_rows = int(row["timed"]), int(row["label_rows"])
        value_rows = int(row["value_rows"])
        counts = [int(row[name]) for name in rollups.BUCKET_COLUMNS]
        low, high = row["low"], row["high"]
        stats.append(
            ShadowStats(
                version=row["version"],
                requests=int(row["requests"]),
                failures=int(row["failures"]),
                avg_inference_time_ms=row["time_sum"] / timed if timed else None,
                p50_inference_time_ms=rollups.percentile(counts, history.P50, low, high),
                p95_inference_time_ms=rollups.percentile(counts, history.P95, low, high),
                label_rows=label_rows,
                label_agreement=int(row["agreed_rows"]) / label_rows if label_rows else None,
                value_rows=value_rows,
                mean_absolute_difference=row["abs_diff_sum"] / value_rows if value_rows else None,
            )
        )
    return stats


# --- routes -----------------------------------------------------------------------------------


@router.get("/{model}/traffic", response_model=TrafficPolicyRead)
async def show_traffic(model: OwnedModel, db: SessionDep) -> TrafficPolicyRead:
    """Show the model's traffic policy, with the version each target resolves to now (404: none)."""
    return await get_policy(db, model)


@router.put(
    "/{model}/traffic",
    response_model=TrafficPolicyRead,
    responses={409: {"description": "a target resolves to no servable version now"}},
)
async def put_traffic(
    model: OwnedModel, body: TrafficPolicyIn, db: SessionDep, state: StateDep
) -> TrafficPolicyRead:
    """Split the requests that name no version between versions by weight, and copy a sample
    of them to a shadow version after they are answered.

    `{"routes": [{"target": "production", "weight": 90}, {"target": "challenger", "weight":
    10}], "shadow": {"target": "v4", "sample_rate": 0.1}}`. Targets are `v<N>`, `latest`, a
    stage or an alias, resolved again whenever the registry changes. A request with an
    `X-Routing-Key` header always takes the same route for the same key while the policy holds.
    """
    return await set_policy(db, model, body, events=state.events)


@router.delete("/{model}/traffic", status_code=status.HTTP_204_NO_CONTENT)
async def delete_traffic(model: OwnedModel, db: SessionDep, state: StateDep) -> None:
    """Remove the model's traffic policy: its production version (else its newest) serves all."""
    await delete_policy(db, model, events=state.events)


@router.get("/{model}/traffic/stats", response_model=TrafficStats)
async def show_traffic_stats(
    model: OwnedModel,
    user: CurrentUser,
    db: SessionDep,
    since: history.Since = None,
    until: history.Until = None,
) -> TrafficStats:
    """Compare the versions that served the model in a window (requests, failures, p50/p95),
    and its shadow versions (failures, label agreement or mean absolute difference)."""
    return await traffic_stats(db, user, model, since=since, until=until)

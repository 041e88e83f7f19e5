"""Traffic policies: `/api/v1/models/{model}/traffic` (weighted routes between versions, a
shadow version) and `/api/v1/models/{model}/traffic/stats` (the routes and the shadow compared).

A policy applies to predict requests that name no version, alias or stage, on both protocols and
the fast path: `targets.resolve_serving` resolves it with the default target, so it is cached
with it and costs no database round trip per request; a change announces `registry_changed`, so
every worker and replica forgets the cached resolution at once. Targets are references
(`targets.parse_ref`): `v<N>`, `latest`, a stage, or an alias. At PUT every target must resolve
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

from pydantic import AfterValidator, Field, model_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.changes.events import Action, Events
from modelyard.db.tables import RegisteredModel, TrafficPolicy
from modelyard.db.types import utcnow
from modelyard.errors import Conflict, NotFound
from modelyard.predictions import targets as resolution
from modelyard.registry.schemas import RESERVED_ALIAS, Stage
from modelyard.schemas import ReadModel, StrictModel

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
    if resolution.parse_ref(value).alias is not None and RESERVED_ALIAS.fullmatch(value):
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
        if await resolution.resolve_ref(db, model, target) is None:
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
        target = await resolution.resolve_ref(db, model, route["target"])
        routes.append(
            RouteRead(
                target=route["target"],
                weight=route["weight"],
                version=target.version if target is not None else None,
            )
        )
    shadow = None
    if policy.shadow is not None:
        target = await resolution.resolve_ref(db, model, policy.shadow["target"])
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

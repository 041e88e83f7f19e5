"""Traffic policy routes: `/api/v1/models/{model}/traffic` and its `/stats`."""

from __future__ import annotations

from fastapi import status

from modelyard.auth.deps import CurrentUser
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.edge.routing import make_router
from modelyard.predictions.log.schemas import Since, Until
from modelyard.predictions.traffic.policy import (
    TrafficPolicyIn,
    TrafficPolicyRead,
    delete_policy,
    get_policy,
    set_policy,
)
from modelyard.predictions.traffic.stats import TrafficStats, traffic_stats
from modelyard.registry.deps import OwnedModel

router = make_router(prefix="/api/v1/models", tags=["traffic"])


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
    model: OwnedModel, body: TrafficPolicyIn, db: SessionDep, events: EventsDep
) -> TrafficPolicyRead:
    """Split the requests that name no version between versions by weight, and copy a sample
    of them to a shadow version after they are answered.

    `{"routes": [{"target": "production", "weight": 90}, {"target": "challenger", "weight":
    10}], "shadow": {"target": "v4", "sample_rate": 0.1}}`. Targets are `v<N>`, `latest`, a
    stage or an alias, resolved again whenever the registry changes. A request with an
    `X-Routing-Key` header always takes the same route for the same key while the policy holds.
    """
    return await set_policy(db, model, body, events=events)


@router.delete("/{model}/traffic", status_code=status.HTTP_204_NO_CONTENT)
async def delete_traffic(model: OwnedModel, db: SessionDep, events: EventsDep) -> None:
    """Remove the model's traffic policy: its production version (else its newest) serves all."""
    await delete_policy(db, model, events=events)


@router.get("/{model}/traffic/stats", response_model=TrafficStats)
async def show_traffic_stats(
    model: OwnedModel,
    user: CurrentUser,
    db: SessionDep,
    since: Since = None,
    until: Until = None,
) -> TrafficStats:
    """Compare the versions that served the model in a window (requests, failures, p50/p95),
    and its shadow versions (failures, label agreement or mean absolute difference)."""
    return await traffic_stats(db, user, model, since=since, until=until)

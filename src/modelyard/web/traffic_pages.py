"""Dashboard page of a model's traffic policy (the API's `/api/v1/models/{model}/traffic`): a
canary split and a shadow version set and cleared through the API's service, and the per-version
figures of `/traffic/stats`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.responses import Response

from modelyard.db.deps import SessionDep
from modelyard.db.tables import RegisteredModel
from modelyard.db.types import utcnow
from modelyard.errors import ModelyardError, Unprocessable
from modelyard.predictions.traffic import policy as traffic
from modelyard.predictions.traffic import stats as traffic_stats
from modelyard.registry import service as registry_service
from modelyard.web.http import (
    CSRF_FIELD,
    FormDep,
    Page,
    UserPage,
    WebRoute,
    problem_text,
    redirect,
    render,
)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

WINDOWS = (1, 7, 30)


def _percent(values: dict[str, str], name: str, what: str) -> float:
    text = values.get(name, "").strip()
    try:
        number = float(text)
    except ValueError as exc:
        raise Unprocessable(f"{what}: give a percentage from 0 to 100") from exc
    if not 0 <= number <= 100:
        raise Unprocessable(f"{what}: give a percentage from 0 to 100")
    return number


def policy_of_form(values: dict[str, str]) -> traffic.TrafficPolicyIn:
    """Return the policy a form describes: the canary gets its percentage of the requests, the
    primary target the rest; the shadow copies its percentage of them.

    Raises:
        Unprocessable: a percentage is not a number from 0 to 100 (a canary's: a whole one).
        ValidationError: what the API refuses in the same policy (with its field names).
    """
    primary = values.get("primary", "").strip() or "production"
    canary = values.get("canary", "").strip()
    routes = [{"target": primary, "weight": 100}]
    if canary:
        share = _percent(values, "canary_percent", "canary share")
        if not share.is_integer():
            raise Unprocessable("canary share: give a whole percentage")
        routes = [
            {"target": primary, "weight": 100 - int(share)},
            {"target": canary, "weight": int(share)},
        ]
    body: dict[str, Any] = {"routes": routes}
    shadow = values.get("shadow", "").strip()
    if shadow:
        rate = _percent(values, "shadow_percent", "shadow sample")
        body["shadow"] = {"target": shadow, "sample_rate": rate / 100}
    return traffic.TrafficPolicyIn.model_validate(body)


def form_of_policy(policy: traffic.TrafficPolicyRead | None) -> dict[str, str]:
    """Return the form's values for the current policy (its first two routes)."""
    if policy is None:
        return {"primary": "production", "canary_percent": "10", "shadow_percent": "10"}
    first, *rest = policy.routes
    values = {"primary": first.target, "canary_percent": "0", "shadow_percent": "10"}
    if rest:
        total = first.weight + rest[0].weight
        values["canary"] = rest[0].target
        values["canary_percent"] = f"{100 * rest[0].weight / total:g}" if total else "0"
    if policy.shadow is not None:
        values["shadow"] = policy.shadow.target
        values["shadow_percent"] = f"{policy.shadow.sample_rate * 100:g}"
    return values


async def _traffic_page(
    page: Page,
    db: SessionDep,
    model: RegisteredModel,
    days: int,
    status: int = 200,
    values: dict[str, str] | None = None,
    error: str | None = None,
) -> Response:
    try:
        policy: traffic.TrafficPolicyRead | None = await traffic.get_policy(db, model)
    except traffic.NoTrafficPolicy:
        policy = None
    stats = await traffic_stats.traffic_stats(
        db, page.signed_in, model, since=utcnow() - timedelta(days=days)
    )
    return render(
        page,
        "traffic.html",
        status,
        model=model,
        policy=policy,
        stats=stats,
        days=days,
        windows=WINDOWS,
        values=values if values is not None else form_of_policy(policy),
        more_routes=policy is not None and len(policy.routes) > 2,
        error=error,
    )


@router.get("/models/{model_id}/traffic")
async def traffic_page(model_id: str, page: UserPage, db: SessionDep, days: int = 1) -> Response:
    model = await registry_service.get_model(db, page.signed_in, model_id)
    return await _traffic_page(page, db, model, days if days in WINDOWS else 1)


@router.post("/models/{model_id}/traffic")
async def set_traffic(model_id: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    model = await registry_service.get_model(db, page.signed_in, model_id)
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}
    try:
        body = policy_of_form(values)
        await traffic.set_policy(db, model, body, events=page.state.events)
    except ValidationError as exc:
        return await _traffic_page(page, db, model, 1, 422, values, problem_text(exc))
    except ModelyardError as exc:
        return await _traffic_page(page, db, model, 1, exc.status, values, exc.detail)
    return redirect(f"/models/{model.id}/traffic")


@router.post("/models/{model_id}/traffic/delete")
async def clear_traffic(model_id: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    model = await registry_service.get_model(db, page.signed_in, model_id)
    await traffic.delete_policy(db, model, events=page.state.events)
    return redirect(f"/models/{model.id}/traffic")

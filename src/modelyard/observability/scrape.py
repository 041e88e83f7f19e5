"""`GET /metrics`: the Prometheus exposition, for admins and the configured scrape token."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import Depends, Request, Response

from modelyard.auth.deps import admin_user, api_key_scheme, bearer_scheme, current_caller
from modelyard.db.deps import SessionDep
from modelyard.deps import SettingsDep, component
from modelyard.edge.routing import make_router
from modelyard.observability.metrics import CONTENT_TYPE, Metrics

router = make_router(tags=["operations"])

MetricsDep = Annotated[Metrics, Depends(component("metrics"))]


async def metrics_reader(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    bearer: Annotated[str | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> None:
    """Let the scrape token through; anyone else must be an admin (401 / 403 otherwise)."""
    token = settings.metrics_token
    if (
        token is not None
        and bearer is not None
        and hmac.compare_digest(bearer.encode(), token.get_secret_value().encode())
    ):
        return
    caller = await current_caller(request, db, bearer, api_key)
    await admin_user(caller.user)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
    dependencies=[Depends(metrics_reader)],
)
async def metrics(metrics: MetricsDep) -> Response:
    """Serve the metrics: labelled by model ids, so for admins and the scraper only.

    With several workers, whichever answers serves the sum over all of them.
    """
    # In a thread: with several workers it reads and merges every worker's file.
    body = await asyncio.to_thread(metrics.render)
    return Response(body, media_type=CONTENT_TYPE)

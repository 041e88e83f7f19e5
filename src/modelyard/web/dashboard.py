"""The web dashboard at `/`: server-rendered pages over the services, assets served by the app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from modelyard.web import (
    account_pages,
    activity_pages,
    audit_pages,
    compare_pages,
    drift_pages,
    file_pages,
    job_pages,
    model_pages,
    sso_pages,
    team_pages,
    traffic_pages,
    webhook_pages,
)
from modelyard.web.http import HERE, STATIC_URL


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard's pages and its static files (CSS, a little JavaScript)."""
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="web-static")
    for router in (
        account_pages.router,
        model_pages.router,
        activity_pages.router,
        compare_pages.router,
        job_pages.router,
        team_pages.router,
        file_pages.router,
        traffic_pages.router,
        drift_pages.router,
        webhook_pages.router,
        audit_pages.router,
        sso_pages.router,
    ):
        app.include_router(router)

"""deploy/grafana/modelyard.json: a well-formed dashboard whose every query names metrics and
labels that a real scrape of the app's /metrics serves."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.app import create_app
from modelyard.db import migrate
from tests.deploy.sources import DASHBOARD
from tests.observability.workers import serve_workers
from tests.support.factories import lifespan, make_account, make_version
from tests.support.settings import make_settings

SCRAPE_TOKEN = "dashboard-scrape-token-0123456789"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"(?P<metric>[A-Za-z_:][A-Za-z0-9_:]*)\s*\{(?P<matchers>[^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<query>.+),\s*)?(?P<label>\w+)\)$")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and the template variables' label_values()."""
    exprs = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable["name"]
            exprs.append(f"count by ({match['label']}) ({match['query']})")
    return exprs


def metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression reads (not functions, labels or keywords)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, $__rate_interval included
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        is_function = text[match.end() :].lstrip().startswith("(")
        if not is_function and match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def test_metric_name_extraction_skips_functions_labels_and_numbers() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{job=~"$job"}[$__rate_interval])))'
        " / clamp_min(sum(rate(b_total[5m])) + c, 1e-9) > bool 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "modelyard"
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            # Every variable a query uses is defined (Grafana's own ones aside).
            used = set(re.findall(r"\$\{?(\w+)", target["expr"])) - {"__rate_interval", "__range"}
            assert used <= variables, panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "latency", "predictions", "cache", "batch", "queue"):
        assert topic in titles


@pytest.fixture
def scrape_database(tmp_path: Path) -> str:
    """A database of this test's own, made by the migrations."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'scrape.db'}"
    migrate.upgrade(url)
    return url


async def _scrape_after_traffic(client: httpx.AsyncClient, iris_skops: Path) -> str:
    """Upload, predict (success and error), ask for a missing route, then scrape."""
    user = await make_account(client)
    await make_version(client, user, iris_skops)
    for inputs in ([[5.1, 3.5, 1.4, 0.2]], [[1.0]]):
        await client.post("/api/v1/predict/iris", json={"inputs": inputs}, headers=user.headers)
    await client.get("/no/such/route")
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert response.status_code == 200
    return response.text


@pytest.fixture(params=["one process", "serve --workers 2"])
async def scraped(
    request: pytest.FixtureRequest, tmp_path: Path, scrape_database: str, iris_skops: Path
) -> AsyncIterator[str]:
    """The text of /metrics after an upload, predictions (success and error) and a 404: from
    the app in this process, and merged across the workers of a real `serve --workers 2`."""
    if request.param == "serve --workers 2":
        with serve_workers(tmp_path, metrics_token=SCRAPE_TOKEN) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                yield await _scrape_after_traffic(client, iris_skops)
        return
    settings = make_settings(tmp_path, scrape_database, metrics_token=SCRAPE_TOKEN)
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield await _scrape_after_traffic(client, iris_skops)


def _labels_by_sample_name(text: str) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


async def test_every_metric_and_label_the_dashboard_reads_is_served(
    dashboard: dict[str, Any], scraped: str
) -> None:
    served = _labels_by_sample_name(scraped)
    queries = _queries(dashboard)
    read = set().union(*(metric_names(q) for q in queries))
    assert sorted(read - set(served)) == [], "the app serves no such metric"
    # The dashboard covers every metric family of the app.
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in served}
    covered = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in read}
    assert sorted(families - covered) == [], "add panels for these to the dashboard"
    for query in queries:
        names = metric_names(query)
        known = set().union(*(served[n] for n in names)) | TARGET_LABELS
        for selector in _SELECTOR.finditer(_STRING.sub('""', query)):
            used = set(_MATCHER_LABEL.findall(selector["matchers"]))
            assert used <= served[selector["metric"]] | TARGET_LABELS, query
        for grouping in _GROUPING.findall(query):
            used = {label.strip() for label in grouping.split(",") if label.strip()}
            assert used <= known, query

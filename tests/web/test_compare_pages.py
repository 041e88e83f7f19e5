"""The dashboard's experiments list (metric columns, sort, filter) and compare pages, on both
databases."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.support.factories import make_account, make_version
from tests.web.test_job_pages import signed_in


def cells(html: str, row_id: str) -> list[str]:
    row = re.search(rf'<tr id="{row_id}">(.*?)</tr>', html, re.S)
    assert row is not None, html
    return [
        " ".join(re.sub(r"<[^>]+>", "", c).split())
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    ]


def row_names(html: str) -> list[str]:
    return re.findall(r'<td><a href="/experiments/[^"]+">([^<]+)</a></td>', html)


async def test_the_experiments_list_shows_metric_columns_sorts_and_filters(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await make_account(client)
    for name, accuracy in (("low", 0.7), ("high", 0.95), ("mid", 0.85)):
        created = await client.post(
            "/api/v1/experiments",
            json={"name": name, "parameters": {"C": accuracy}},
            headers=owner.headers,
        )
        run_id = created.json()["id"]
        await client.post(
            f"/api/v1/experiments/{run_id}/metrics",
            json=[{"key": "accuracy", "value": accuracy}],
            headers=owner.headers,
        )
    async with signed_in(app, owner) as browser:
        by_accuracy = await browser.get(
            "/experiments", params={"sort": "metrics.accuracy", "order": "desc"}
        )
        filtered = await browser.get("/experiments", params={"filter": "metrics.accuracy<0.9"})
        refused = await browser.get("/experiments", params={"filter": "accuracy"})

    assert by_accuracy.status_code == 200
    assert row_names(by_accuracy.text) == ["high", "mid", "low"]
    assert 'aria-sort="descending"' in by_accuracy.text
    assert '<th scope="col" class="param">C</th>' in by_accuracy.text
    assert sorted(row_names(filtered.text)) == ["low", "mid"]
    assert refused.status_code == 200
    assert 'id="list-error"' in refused.text
    assert len(row_names(refused.text)) == 3
    run_id = re.findall(r'name="id" value="([^"]+)"', by_accuracy.text)[0]
    assert cells(by_accuracy.text, f"run-{run_id}")[3:5] == ["0.95", "0.95"]


async def test_the_compare_page_marks_differences_and_overlays_histories(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    ids = []
    for name, c in (("a", 1.0), ("b", 0.1)):
        created = await client.post(
            "/api/v1/experiments",
            json={"name": name, "parameters": {"C": c, "solver": "lbfgs"}},
            headers=owner.headers,
        )
        ids.append(created.json()["id"])
        await client.post(
            f"/api/v1/experiments/{ids[-1]}/metrics",
            json=[{"key": "loss", "value": 1.0, "step": 0}, {"key": "loss", "value": c, "step": 1}],
            headers=owner.headers,
        )
    first = await make_version(client, owner, iris_skops, metrics={"f1": 0.9})
    second = await make_version(client, owner, iris_skops, metrics={"f1": 0.9})

    async with signed_in(app, owner) as browser:
        runs = await browser.get("/compare/runs", params={"id": ids})
        versions = await browser.get(
            "/compare/versions", params={"id": [first["id"], second["id"]]}
        )
        model_page = await browser.get(f"/models/{first['model_id']}")
        too_few = await browser.get("/compare/runs", params={"id": ids[:1]})
    async with signed_in(app, other) as browser:
        foreign = await browser.get("/compare/runs", params={"id": ids})

    assert runs.status_code == 200, runs.text
    assert re.search(r'<tr class="parameter differs" data-key="C">', runs.text)
    assert re.search(r'<tr class="parameter" data-key="solver">', runs.text)
    assert re.search(r'<tr class="metric differs" data-key="loss">', runs.text)
    # One chart of the loss, one line per run.
    assert len(re.findall(r'<polyline class="line s\d"', runs.text)) == 2
    assert versions.status_code == 200, versions.text
    assert re.search(r'<tr class="metric" data-key="f1">', versions.text)
    assert 'data-key="requests"' in versions.text
    assert 'data-key="drift (24 h)"' in versions.text
    assert 'id="compare-versions"' in model_page.text
    assert first["id"] in model_page.text
    assert too_few.status_code == 422
    assert "compare 2 to 10" in too_few.text
    assert foreign.status_code == 404
    assert "lbfgs" not in foreign.text

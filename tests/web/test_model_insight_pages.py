"""The dashboard's traffic panel on a model page and its drift page, on both databases."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.drift.test_router import SCHEMA, normal_rows, served, to_csv, upload_file
from tests.support.factories import make_account, make_version
from tests.web.test_job_pages import signed_in


async def test_a_model_page_shows_its_traffic_policy(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner = await make_account(client)
    first = await make_version(client, owner, iris_skops)
    await make_version(client, owner, iris_skops)
    model = f"/api/v1/models/{first['model_id']}"
    promoted = await client.patch(
        f"{model}/versions/1/lifecycle", json={"stage": "production"}, headers=owner.headers
    )
    assert promoted.status_code == 200, promoted.text

    async with signed_in(app, owner) as browser:
        without = await browser.get(f"/models/{first['model_id']}")
        policy = {
            "routes": [{"target": "production", "weight": 90}, {"target": "latest", "weight": 10}],
            "shadow": {"target": "v1", "sample_rate": 0.25},
        }
        put = await client.put(f"{model}/traffic", json=policy, headers=owner.headers)
        with_policy = await browser.get(f"/models/{first['model_id']}")

    assert put.status_code == 200, put.text
    assert "No traffic policy: requests naming no version go to the production version" in (
        without.text
    )
    panel = re.search(r'<ul class="traffic" id="traffic">(.*?)</ul>', with_policy.text, re.S)
    assert panel is not None, with_policy.text
    items = [" ".join(re.sub(r"<[^>]+>", "", li).split()) for li in panel.group(1).split("<li>")]
    assert [i for i in items if i] == [
        "production: weight 90 → v1",
        "latest: weight 10 → v2",
        "shadow v1: 25 % of requests → v1",
    ]


async def test_the_drift_page_shows_the_report_of_a_shifted_window(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    version = await make_version(client, owner, iris_skops, input_schema=SCHEMA)
    page = f"/models/{version['model_id']}/drift"

    async with signed_in(app, owner) as browser:
        nothing_yet = await browser.get(page)
        await upload_file(client, owner, "ref.csv", to_csv(normal_rows(seed=41, n=300)))
        reference = await client.put(
            "/api/v1/models/iris/versions/1/reference",
            json={"path": "ref.csv"},
            headers=owner.headers,
        )
        await served(app, client, owner, normal_rows(seed=42, n=300, shift=2.0))
        report = await browser.get(page, params={"version": "1", "days": "7"})
    async with signed_in(app, other) as browser:
        hidden = await browser.get(page)

    assert nothing_yet.status_code == 409
    assert 'id="drift-error"' in nothing_yet.text
    assert reference.status_code == 200, reference.text
    assert report.status_code == 200, report.text
    summary = re.search(r'<p id="drift-summary">(.*?)</p>', report.text, re.S)
    assert summary is not None
    text = " ".join(re.sub(r"<[^>]+>", "", summary.group(1)).split())
    assert text.startswith("v1: drifted · 300 rows from 2 predictions")
    assert "reference: ref.csv (300 rows)" in text
    rows = re.findall(r'<tr id="feature-\d+">(.*?)</tr>', report.text, re.S)
    cells = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", r, re.S)] for r in rows]  # fmt: skip
    assert [c[0] for c in cells] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert [c[1] for c in cells] == ["yes", "no", "no", "no"]  # only the first feature shifted
    assert cells[0][3] == "significant"
    assert float(cells[0][2]) >= 0.25  # the PSI, as a number
    assert hidden.status_code == 404

"""The dashboard's files, new batch job, traffic, drift reference, webhooks and audit pages over
HTTP (no browser), on both databases: each form acts through the API's services (what it did is
read back through the API), refusals are shown on the page, others' things are 404."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from modelyard.state import AppState
from modelyard.web import file_pages
from tests.jobs.helpers import csv_bytes, finished, iris_rows, put_file, wait_for_job
from tests.support.factories import make_account, make_version
from tests.web.test_job_pages import signed_in
from tests.web.test_pages import csrf_of, post_form

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


async def upload_page_file(
    browser: httpx.AsyncClient, data: bytes, path: str = "", csrf: str | None = None
) -> httpx.Response:
    token = csrf if csrf is not None else csrf_of((await browser.get("/files")).text)
    return await browser.post(
        "/files/upload",
        data={"csrf_token": token, "path": path},
        files={"file": ("local name.csv", data, "text/csv")},
    )


@pytest.mark.parametrize(
    "path", ["/files", "/jobs/new", "/webhooks", "/audit", "/models/iris/traffic"]
)
async def test_the_new_pages_send_a_signed_out_browser_to_sign_in(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/sign-in?next=")


@pytest.mark.parametrize(
    "action", ["/files/delete", "/jobs", "/webhooks", "/models/iris/traffic/delete"]
)
async def test_the_new_forms_need_their_csrf_token(
    app: FastAPI, client: httpx.AsyncClient, action: str
) -> None:
    async with signed_in(app, await make_account(client)) as browser:
        response = await browser.post(action, data={"csrf_token": "not the token of the session"})
    assert response.status_code == 403
    assert "reload" in response.text


# --- files ------------------------------------------------------------------------------------


async def test_files_are_uploaded_listed_downloaded_and_deleted_from_the_page(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner, other = await make_account(client), await make_account(client)
    data = csv_bytes(iris_rows(5))
    async with signed_in(app, owner) as browser:
        stored = await upload_page_file(browser, data, "inputs/in.csv")
        unnamed = await upload_page_file(browser, b"a,b\n1,2\n")
        listed = await browser.get("/files")
        narrowed = await browser.get("/files", params={"prefix": "inputs/"})
        downloaded = await browser.get("/files/download", params={"path": "inputs/in.csv"})
    api_listing = await client.get("/api/v1/files", headers=owner.headers)
    async with signed_in(app, other) as browser:
        others_list = await browser.get("/files")
        others_download = await browser.get("/files/download", params={"path": "inputs/in.csv"})
        others_delete = await post_form(browser, "/files", "/files/delete", path="inputs/in.csv")
    async with signed_in(app, owner) as browser:
        deleted = await post_form(browser, "/files", "/files/delete", path="inputs/in.csv")
        after = await browser.get("/files")

    assert stored.status_code == 303, stored.text
    assert stored.headers["location"] == "/files"
    assert unnamed.status_code == 303  # no path: the file's own name, as in the API
    assert {f["path"] for f in api_listing.json()["items"]} == {"inputs/in.csv", "local name.csv"}
    assert '<tr data-path="inputs/in.csv">' in listed.text
    assert '<tr data-path="local name.csv">' in listed.text
    assert "local name.csv" not in narrowed.text
    assert downloaded.status_code == 200
    assert downloaded.content == data
    assert 'href="/jobs/new?input_path=inputs%2Fin.csv"' in listed.text
    assert "inputs/in.csv" not in others_list.text
    assert others_download.status_code == 404
    assert others_delete.status_code == 404
    assert deleted.status_code == 303
    assert 'data-path="inputs/in.csv"' not in after.text
    assert 'data-path="local name.csv"' in after.text


async def test_a_refused_file_upload_says_why_and_stores_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await make_account(client)
    async with signed_in(app, owner) as browser:
        bad_path = await upload_page_file(browser, b"x", "../escape.csv")
        no_token = await upload_page_file(browser, b"x", "sneaky.csv", csrf="wrong token value!!")
    listing = await client.get("/api/v1/files", headers=owner.headers)

    assert bad_path.status_code == 400
    assert 'id="files-error"' in bad_path.text
    assert "data-path=" not in bad_path.text  # nothing listed: nothing stored
    assert no_token.status_code == 403
    assert listing.json()["total"] == 0


# --- a new batch job ----------------------------------------------------------------------------


async def test_a_files_score_link_chooses_it_past_the_forms_first_choices(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await make_account(client)
    for path in ("a.csv", "b.csv", "c.csv"):
        await put_file(client, owner, path, b"x\n1\n")
    monkeypatch.setattr(file_pages, "CHOICES", 1)
    async with signed_in(app, owner) as browser:
        form = await browser.get("/jobs/new", params={"input_path": "c.csv"})

    options = re.findall(
        r"<option value=\"([^\"]+)\"( selected)?>", form.text.split('id="job-input"')[1]
    )
    assert options[:2] == [("c.csv", " selected"), ("a.csv", "")]


async def test_a_batch_job_is_started_from_the_page(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    await make_version(client, owner, iris_skops)
    await put_file(client, owner, "in.csv", csv_bytes(iris_rows(12)))
    async with signed_in(app, owner) as browser:
        form = await browser.get("/jobs/new", params={"input_path": "in.csv"})
        started = await post_form(
            browser, "/jobs/new", "/jobs", model="iris", version="1", input_path="in.csv"
        )
        missing = await post_form(
            browser, "/jobs/new", "/jobs", model="iris", input_path="nothing.csv"
        )
        same = await post_form(
            browser, "/jobs/new", "/jobs", model="iris", input_path="in.csv", output_path="in.csv"
        )
    async with signed_in(app, other) as browser:
        others = await post_form(browser, "/jobs/new", "/jobs", model="iris", input_path="in.csv")
    jobs = (await client.get("/api/v1/batch-jobs", headers=owner.headers)).json()["items"]

    assert '<option value="iris">iris</option>' in form.text
    assert '<option value="in.csv" selected>in.csv</option>' in form.text
    assert started.status_code == 303, started.text
    assert started.headers["location"] == "/jobs"
    [job] = jobs
    assert (job["model_name"], job["version"]) == ("iris", 1)
    assert (job["input_path"], job["output_path"]) == ("in.csv", "in-scored.csv")
    done = await wait_for_job(client, owner, job["id"], finished, "the in-process worker ends it")
    assert (done["status"], done["rows_done"]) == ("succeeded", 12)
    assert missing.status_code == 404
    assert 'id="job-error"' in missing.text
    assert "nothing.csv" in missing.text  # what was chosen stays in the form
    assert same.status_code == 422
    assert "output_path must differ from input_path" in same.text
    assert others.status_code == 404  # another's model is not found
    assert 'id="job-error"' in others.text


# --- traffic ------------------------------------------------------------------------------------


async def test_a_traffic_policy_is_set_shown_with_its_stats_and_cleared(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    model = (await make_version(client, owner, iris_skops))["model_id"]
    await make_version(client, owner, iris_skops)
    await make_version(client, owner, iris_skops)
    page = f"/models/{model}/traffic"
    async with signed_in(app, owner) as browser:
        set_ = await post_form(
            browser,
            page,
            page,
            primary="v1",
            canary="v2",
            canary_percent="25",
            shadow="v3",
            # Every request copied: a sampled shadow could miss all six (one run in 64 at 50 %).
            shadow_percent="100",
        )
        policy = await client.get("/api/v1/models/iris/traffic", headers=owner.headers)
        for _ in range(6):
            answer = await client.post(
                "/api/v1/predict/iris", json={"inputs": IRIS_ROWS}, headers=owner.headers
            )
            assert answer.status_code == 200, answer.text
        state: AppState = app.state.modelyard
        await state.predictor.drain_shadows()
        await state.prediction_log.flush()
        shown = await browser.get(page)
        stats = (
            await client.get("/api/v1/models/iris/traffic/stats", headers=owner.headers)
        ).json()
        too_much = await post_form(
            browser, page, page, primary="v1", canary="v2", canary_percent="150"
        )
        unknown = await post_form(
            browser, page, page, primary="v1", canary="v9", canary_percent="5"
        )
        same = await post_form(browser, page, page, primary="v1", canary="v1", canary_percent="5")
        kept = await client.get("/api/v1/models/iris/traffic", headers=owner.headers)
    async with signed_in(app, other) as browser:
        others_page = await browser.get(page)
        others_clear = await post_form(browser, "/files", f"{page}/delete")
    async with signed_in(app, owner) as browser:
        cleared = await post_form(browser, page, f"{page}/delete")
        after = await browser.get(page)
    gone = await client.get("/api/v1/models/iris/traffic", headers=owner.headers)

    assert set_.status_code == 303, set_.text
    assert policy.json()["routes"] == [
        {"target": "v1", "weight": 75, "version": 1},
        {"target": "v2", "weight": 25, "version": 2},
    ]
    assert policy.json()["shadow"] == {"target": "v3", "sample_rate": 1.0, "version": 3}
    # The form shows the policy it would set again.
    assert (
        'id="canary" name="canary" type="text" maxlength="64" placeholder="v2" value="v2"'
        in shown.text
    )
    assert 'name="canary_percent" type="number" min="0" max="100" step="1" value="25"' in shown.text
    assert (
        'name="shadow_percent" type="number" min="0" max="100" step="any" value="100"' in shown.text
    )
    # Every version that served, with the figures of the API's stats.
    rows = re.findall(r"<tr>\s*<td>v(\d+)</td><td>([^<]*)</td>\s*<td>([\d,]+)</td>", shown.text)
    assert {(int(v), t, int(n)) for v, t, n in rows} == {
        (s["version"], ", ".join(s["targets"]), s["requests"]) for s in stats["versions"]
    }
    assert sum(s["requests"] for s in stats["versions"]) == 6
    assert 'id="traffic-shadows"' in shown.text
    assert too_much.status_code == 422
    assert "canary share: give a percentage from 0 to 100" in too_much.text
    assert unknown.status_code == 409
    assert "&#39;v9&#39; does not resolve to a servable version" in unknown.text
    assert same.status_code == 422
    assert "each target may have one route only" in same.text
    assert kept.json()["routes"] == policy.json()["routes"]  # refusals change nothing
    assert others_page.status_code == 404
    assert others_clear.status_code == 404
    assert cleared.status_code == 303
    assert "No traffic policy" in after.text
    assert gone.status_code == 404


# --- drift reference ----------------------------------------------------------------------------


async def test_a_drift_reference_is_set_and_deleted_from_the_drift_page(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    version = await make_version(client, owner, iris_skops)
    model = version["model_id"]
    features = [f["name"] for f in version["input_schema"]["features"]]
    await put_file(client, owner, "train.csv", csv_bytes(iris_rows(120), features))
    await put_file(client, owner, "short.csv", csv_bytes(iris_rows(3), features))
    drift = f"/models/{model}/drift"
    reference = "/api/v1/models/iris/versions/1/reference"
    async with signed_in(app, owner) as browser:
        form = await browser.get(drift, params={"version": "1"})
        set_ = await post_form(browser, drift, f"{drift}/reference", version="1", path="train.csv")
        stored = await client.get(reference, headers=owner.headers)
        shown = await browser.get(set_.headers.get("location", drift))
        short = await post_form(browser, drift, f"{drift}/reference", version="1", path="short.csv")
        missing = await post_form(
            browser, drift, f"{drift}/reference", version="7", path="train.csv"
        )
    async with signed_in(app, other) as browser:
        others = await post_form(browser, "/files", f"{drift}/reference/delete", version="1")
    async with signed_in(app, owner) as browser:
        deleted = await post_form(browser, drift, f"{drift}/reference/delete", version="1")
    gone = await client.get(reference, headers=owner.headers)

    assert 'id="set-reference"' in form.text
    assert set_.status_code == 303, set_.text
    assert set_.headers["location"] == f"{drift}?version=1"
    assert stored.status_code == 200
    assert (stored.json()["source_path"], stored.json()["row_count"]) == ("train.csv", 120)
    assert 'id="delete-reference"' in shown.text
    assert short.status_code == 422
    assert 'id="reference-error"' in short.text
    assert "at least" in short.text
    assert 'value="short.csv"' in short.text  # the form keeps what was chosen
    assert missing.status_code == 404
    assert others.status_code == 404
    assert deleted.status_code == 303
    assert gone.status_code == 404


# --- webhooks -----------------------------------------------------------------------------------


async def webhook_form(
    browser: httpx.AsyncClient, url: str, events: list[str], **fields: str
) -> httpx.Response:
    html = (await browser.get("/webhooks")).text
    data = {"csrf_token": csrf_of(html), "url": url, "events": events, **fields}
    return await browser.post("/webhooks", data=data)


async def test_a_webhook_is_created_with_its_secret_shown_once_and_deleted(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    await make_version(client, owner, iris_skops)
    async with signed_in(app, owner) as browser:
        created = await webhook_form(
            browser,
            "https://hooks.example.com/modelyard",
            ["model_version.created"],
            model="iris",
            description="CI <trigger>",
        )
        listed = await browser.get("/webhooks")
        hooks = (await client.get("/api/v1/webhooks", headers=owner.headers)).json()["items"]
        await make_version(client, owner, iris_skops)  # an event it subscribed to
        deliveries = await browser.get(f"/webhooks/{hooks[0]['id']}")
        refused = await webhook_form(browser, "http://127.0.0.1:9/hook", ["model.deleted"])
        no_events = await webhook_form(browser, "https://hooks.example.com/other", [])
    [hook] = hooks
    async with signed_in(app, other) as browser:
        others_page = await browser.get(f"/webhooks/{hook['id']}")
        others_delete = await post_form(browser, "/webhooks", f"/webhooks/{hook['id']}/delete")
    async with signed_in(app, owner) as browser:
        deleted = await post_form(browser, "/webhooks", f"/webhooks/{hook['id']}/delete")
    after = (await client.get("/api/v1/webhooks", headers=owner.headers)).json()

    assert created.status_code == 200, created.text
    secret = re.search(r'<code id="new-secret" class="wrap">([^<]+)</code>', created.text)
    assert secret is not None
    assert secret.group(1).startswith("whsec_")
    assert secret.group(1) not in listed.text  # shown once only
    assert (hook["url"], hook["events"]) == (
        "https://hooks.example.com/modelyard",
        ["model_version.created"],
    )
    assert hook["model_id"] is not None
    assert hook["description"] == "CI <trigger>"
    assert "CI &lt;trigger&gt;" in listed.text
    assert f'id="webhook-{hook["id"]}"' in listed.text
    assert deliveries.status_code == 200
    assert re.search(r'<tr id="delivery-[^"]+">\s*<td>model_version.created</td>', deliveries.text)
    assert refused.status_code == 422
    assert "public addresses" in refused.text
    assert no_events.status_code == 422
    assert 'id="webhook-error"' in no_events.text
    assert others_page.status_code == 404
    assert others_delete.status_code == 404
    assert deleted.status_code == 303
    assert after["total"] == 0


# --- audit --------------------------------------------------------------------------------------


async def test_the_audit_page_shows_the_users_rows_and_an_admin_everyones(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner, other = await make_account(client), await make_account(client)
    admin = await make_account(client, admin_of=app)
    await put_file(client, owner, "mine.csv", b"a\n1\n")
    await put_file(client, other, "theirs.csv", b"a\n1\n")
    async with signed_in(app, owner) as browser:
        everything = await browser.get("/audit")
        uploads = await browser.get("/audit", params={"action": "file.uploaded"})
        failures = await browser.get("/audit", params={"outcome": "failure"})
        future = await browser.get("/audit", params={"since": "2999-01-01"})
    async with signed_in(app, admin) as browser:
        admins = await browser.get("/audit", params={"action": "file."})
    api = await client.get(
        "/api/v1/audit", params={"action": "file.uploaded"}, headers=owner.headers
    )

    assert everything.status_code == 200
    assert "mine.csv" in everything.text
    assert "theirs.csv" not in everything.text
    seqs = [int(s) for s in re.findall(r'<tr id="audit-(\d+)">', uploads.text)]
    assert seqs == [row["seq"] for row in api.json()["items"]]
    assert len(seqs) == 1
    assert "mine.csv" not in failures.text
    assert "No rows match." in future.text
    assert "mine.csv" in admins.text
    assert "theirs.csv" in admins.text
    assert "Every recorded action" in admins.text

"""Dashboard pages over HTTP (no browser), on both databases: sessions, CSRF, headers, escaping,
and each page's main flow through the services."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.audit.test_audit import audit_rows
from tests.support import factories
from tests.support.factories import lifespan

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = factories.DEFAULT_PASSWORD
# A Keras model's ONNX export by tf2onnx (see tests/client/test_deep_learning.py).
KERAS_MLP = Path(__file__).parents[1] / "serving" / "data" / "keras_mlp.onnx"


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:500]
    return found.group(1)


async def sign_up(client: httpx.AsyncClient, email: str | None = None) -> str:
    """Sign up through the form; the client keeps the session cookie. Returns the email."""
    email = email or f"web-{uuid.uuid4().hex[:10]}@example.com"
    form = await client.get("/sign-up")
    response = await client.post(
        "/sign-up",
        data={
            "csrf_token": csrf_of(form.text),
            "email": email,
            "password": PASSWORD,
            "password_again": PASSWORD,
        },
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    return email


async def post_form(
    client: httpx.AsyncClient, page: str, action: str, **data: str
) -> httpx.Response:
    """Post a form of `page` with that page's CSRF token."""
    html = (await client.get(page)).text
    return await client.post(action, data={"csrf_token": csrf_of(html), **data})


async def upload_form(
    client: httpx.AsyncClient, path: Path, name: str, **fields: str
) -> httpx.Response:
    html = (await client.get("/models/new")).text
    with path.open("rb") as f:
        return await client.post(
            "/models/upload",
            data={"csrf_token": csrf_of(html), "name": name, **fields},
            files={"file": (path.name, f, "application/octet-stream")},
        )


async def test_signed_out_root_leads_to_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 303
    assert response.headers["location"] == "/sign-in?next=%2F"
    page = await client.get("/sign-in")
    assert page.status_code == 200
    assert 'name="password"' in page.text


async def test_pages_carry_csp_and_security_headers(client: httpx.AsyncClient) -> None:
    page = await client.get("/sign-in")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text  # no inline script: only <script src=...>


async def test_sign_up_sets_an_httponly_lax_session_cookie(client: httpx.AsyncClient) -> None:
    form = await client.get("/sign-up")
    response = await client.post(
        "/sign-up",
        data={
            "csrf_token": csrf_of(form.text),
            "email": "cookie@example.com",
            "password": PASSWORD,
            "password_again": PASSWORD,
        },
    )
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("modelyard_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/" in cookie
    models = await client.get("/")
    assert models.status_code == 200
    assert "cookie@example.com" in models.text


async def test_sign_in_with_a_wrong_password_is_refused(client: httpx.AsyncClient) -> None:
    email = await sign_up(client)
    await post_form(client, "/", "/sign-out")
    response = await post_form(
        client, "/sign-in", "/sign-in", email=email, password="wrong password!"
    )
    assert response.status_code == 401
    assert "invalid email or password" in response.text
    assert (await client.get("/")).status_code == 303


async def test_sign_in_goes_to_the_local_next_page_only(client: httpx.AsyncClient) -> None:
    email = await sign_up(client)
    await post_form(client, "/", "/sign-out")
    response = await post_form(
        client, "/sign-in", "/sign-in", email=email, password=PASSWORD, next="//evil.example/"
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


async def test_form_without_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    response = await client.post("/api-keys", data={"name": "stolen"})
    assert response.status_code == 403
    assert "another site" in response.text
    assert "stolen" not in (await client.get("/api-keys")).text


async def test_form_from_another_origin_is_refused(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    html = (await client.get("/api-keys")).text
    response = await client.post(
        "/api-keys",
        data={"csrf_token": csrf_of(html), "name": "cross"},
        headers={"Origin": "http://evil.example"},
    )
    assert response.status_code == 403
    assert "cross" not in (await client.get("/api-keys")).text


async def test_sign_in_form_needs_its_pre_session_token(client: httpx.AsyncClient) -> None:
    email = await sign_up(client)
    await post_form(client, "/", "/sign-out")
    client.cookies.clear()
    response = await client.post("/sign-in", data={"email": email, "password": PASSWORD})
    assert response.status_code == 403


async def test_sign_out_ends_the_session_server_side(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    cookie = client.cookies["modelyard_session"]
    response = await post_form(client, "/", "/sign-out")
    assert response.status_code == 303
    client.cookies.set("modelyard_session", cookie)  # a copy of the cookie kept by a thief
    assert (await client.get("/")).status_code == 303


async def test_deactivation_ends_an_open_dashboard_session(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    email = await sign_up(client)
    assert (await client.get("/")).status_code == 200
    admin = await factories.make_account(client, admin_of=app)
    users = (await client.get("/api/v1/users", headers=admin.headers)).json()["items"]
    target = next(u for u in users if u["email"] == email)
    patched = await client.patch(
        f"/api/v1/users/{target['id']}", json={"is_active": False}, headers=admin.headers
    )
    assert patched.status_code == 200
    assert (await client.get("/")).status_code == 303


async def test_sign_out_everywhere_ends_the_session(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    response = await post_form(client, "/account", "/account/sign-out-everywhere")
    assert response.status_code == 303
    assert (await client.get("/account")).status_code == 303


async def test_account_page_erases_the_account_with_its_password(
    client: httpx.AsyncClient, iris_skops: Path, admin: factories.Account
) -> None:
    email = await sign_up(client)
    assert (await upload_form(client, iris_skops, "iris")).status_code == 303

    response = await post_form(client, "/account", "/account/delete", password=PASSWORD)

    assert response.status_code == 303
    assert response.headers["location"] == "/sign-in"
    assert (await client.get("/account")).status_code == 303
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 401
    # The password confirmed the erasure: recorded as the erasure, not as a sign-in.
    (erased,) = await audit_rows(client, admin, action="user.deleted")
    done = await audit_rows(client, admin, actor_user_id=erased["target_id"])
    assert [r["action"] for r in done] == ["user.deleted", "model_version.created"]


@pytest.mark.parametrize("csrf", [True, False])
async def test_account_page_keeps_the_account_without_password_or_csrf(
    client: httpx.AsyncClient, csrf: bool
) -> None:
    email = await sign_up(client)

    if csrf:
        response = await post_form(client, "/account", "/account/delete", password="wrong-pass")
        assert response.status_code == 403
        assert "the password is incorrect" in response.text
    else:
        response = await client.post("/account/delete", data={"password": PASSWORD})
        assert response.status_code == 403

    assert (await client.get("/account")).status_code == 200
    await factories.login(client, email, PASSWORD)


async def test_bearer_auth_of_the_api_is_unchanged(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    # The cookie is no credential for the API.
    assert (await client.get("/api/v1/auth/me")).status_code == 401


async def test_xss_texts_render_as_text(client: httpx.AsyncClient, iris_skops: Path) -> None:
    await sign_up(client)
    markup = "<img src=x onerror=alert(1)>"
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    # The registry refuses such a model name; the refusal echoes it, escaped.
    refused = await upload_form(client, iris_skops, markup)
    assert refused.status_code == 422
    assert markup not in refused.text
    assert escaped in refused.text
    response = await upload_form(
        client,
        iris_skops,
        "xss",
        description="<script>alert('d')</script>",
        tags='["' + markup + '"]',
    )
    assert response.status_code == 303, response.text
    model_page = (await client.get(response.headers["location"].split("/versions")[0])).text
    assert "<script>alert" not in model_page
    assert "&lt;script&gt;alert(&#39;d&#39;)&lt;/script&gt;" in model_page
    version_page = (await client.get(response.headers["location"])).text
    assert markup not in version_page
    assert escaped in version_page
    keys = await post_form(client, "/api-keys", "/api-keys", name=markup)
    assert markup not in keys.text
    assert escaped in keys.text


async def test_upload_promote_and_predict_through_forms(
    client: httpx.AsyncClient, iris_skops: Path, iris_bytes: bytes
) -> None:
    await sign_up(client)
    response = await upload_form(client, iris_skops, "iris")
    assert response.status_code == 303, response.text
    version_url = response.headers["location"]
    model_url = version_url.split("/versions")[0]
    version_page = await client.get(version_url)
    assert "development" in version_page.text
    assert "curl -X POST" in version_page.text

    confirm = await client.get(f"{version_url}/stage?to=production")
    assert "Promote to production?" in confirm.text
    promoted = await client.post(
        f"{version_url}/stage", data={"csrf_token": csrf_of(confirm.text), "stage": "production"}
    )
    assert promoted.status_code == 303
    assert "stage-production" in (await client.get(model_url)).text

    page = await client.get(version_url)
    values = {f"f{i}": v for i, v in enumerate(["5.1", "3.5", "1.4", "0.2"])}
    predicted = await client.post(
        f"{version_url}/predict", data={"csrf_token": csrf_of(page.text), **values}
    )
    assert predicted.status_code == 200, predicted.text
    assert 'id="prediction-value">0<' in predicted.text
    assert 'id="probabilities"' in predicted.text

    downloaded = await client.get(f"{version_url}/download")
    assert downloaded.content == iris_bytes


async def test_try_it_shows_why_inputs_do_not_fit(
    client: httpx.AsyncClient, iris_skops: Path
) -> None:
    await sign_up(client)
    version_url = (await upload_form(client, iris_skops, "iris")).headers["location"]
    page = await client.get(version_url)
    answer = await client.post(
        f"{version_url}/predict",
        data={"csrf_token": csrf_of(page.text), "f0": "x", "f1": "1", "f2": "1", "f3": "1"},
    )
    assert answer.status_code == 422
    assert "not a number" in answer.text


async def test_refused_upload_shows_the_reason(client: httpx.AsyncClient, tmp_path: Path) -> None:
    await sign_up(client)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not a model" * 10)
    response = await upload_form(client, junk, "junk")
    assert response.status_code == 415
    assert 'id="upload-error"' in response.text
    assert "unrecognised model file" in response.text


async def test_aliases_are_set_and_removed(client: httpx.AsyncClient, iris_skops: Path) -> None:
    await sign_up(client)
    version_url = (await upload_form(client, iris_skops, "iris")).headers["location"]
    model_url = version_url.split("/versions")[0]
    set_alias = await post_form(
        client, model_url, f"{model_url}/aliases", alias="champion", version="1"
    )
    assert set_alias.status_code == 303
    assert '<span class="badge alias">champion</span>' in (await client.get(model_url)).text
    removed = await post_form(client, model_url, f"{model_url}/aliases/champion/delete")
    assert removed.status_code == 303
    assert '<span class="badge alias">champion</span>' not in (await client.get(model_url)).text


async def test_models_list_filters_and_pages(client: httpx.AsyncClient, iris_skops: Path) -> None:
    await sign_up(client)
    for name in ("alpha", "beta"):
        assert (await upload_form(client, iris_skops, name)).status_code == 303
    found = await client.get("/", params={"q": "alp", "framework": "sklearn", "sort": "name"})
    assert ">alpha<" in found.text
    assert ">beta<" not in found.text
    none = await client.get("/", params={"stage": "production"})
    assert "No models match" in none.text
    assert (await upload_form(client, KERAS_MLP, "gamma", framework="keras")).status_code == 303
    keras = await client.get("/", params={"framework": "keras"})
    assert ">gamma<" in keras.text
    assert ">alpha<" not in keras.text
    assert '<option value="pytorch"' in keras.text
    assert ">alpha<" in (await client.get("/", params={"framework": "sklearn"})).text
    bad = await client.get("/", params={"stage": "<bogus>", "offset": "-1"})
    assert bad.status_code == 422
    assert "<bogus>" not in bad.text


async def test_api_key_is_shown_once_and_revoked(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    created = await post_form(client, "/api-keys", "/api-keys", name="laptop")
    assert created.status_code == 201
    key = re.search(r'id="new-key"[^>]*>([^<]+)<', created.text).group(1)  # type: ignore[union-attr]
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": key})).status_code == 200
    listing = await client.get("/api-keys")
    assert key not in listing.text
    revoke = re.search(r'action="(/api-keys/[^"]+/revoke)"', listing.text).group(1)  # type: ignore[union-attr]
    assert (await post_form(client, "/api-keys", revoke)).status_code == 303
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": key})).status_code == 401


async def test_api_key_gets_the_scopes_ticked(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    html = (await client.get("/api-keys")).text
    assert 'value="read" checked' in html
    assert 'value="predict" checked' in html
    assert 'value="write">' in html
    assert 'value="admin"' not in html  # only admins may mint it
    form = {"csrf_token": csrf_of(html), "name": "ci", "scopes_shown": "1"}

    created = await client.post("/api-keys", data={**form, "scopes": ["write", "read"]})

    assert created.status_code == 201
    key = re.search(r'id="new-key"[^>]*>([^<]+)<', created.text).group(1)  # type: ignore[union-attr]
    listed = (await client.get("/api/v1/api-keys", headers={"X-API-Key": key})).json()
    assert [k["scopes"] for k in listed["items"]] == [["read", "write"]]
    assert "read write" in (await client.get("/api-keys")).text
    none_ticked = await client.post("/api-keys", data=form)
    assert none_ticked.status_code == 422


async def test_analytics_and_log_show_predictions(
    client: httpx.AsyncClient, iris_skops: Path, app: FastAPI
) -> None:
    await sign_up(client)
    version_url = (await upload_form(client, iris_skops, "iris")).headers["location"]
    model_url = version_url.split("/versions")[0]
    page = await client.get(version_url)
    values = {f"f{i}": "1.0" for i in range(4)}
    for _ in range(3):
        await client.post(
            f"{version_url}/predict", data={"csrf_token": csrf_of(page.text), **values}
        )
    await app.state.modelyard.prediction_log.flush()
    analytics = await client.get(f"{model_url}/analytics", params={"days": 1})
    assert analytics.status_code == 200
    assert 'id="total-requests">3<' in analytics.text
    assert '<rect class="bar s0"' in analytics.text
    # One day is drawn by the hour: 24 hours, two series each (zero bars included).
    assert 'id="requests-chart" data-bars="48"' in analytics.text
    assert re.search(r"<title>\d\d:00 · succeeded: 3</title>", analytics.text)
    log = await client.get("/predictions")
    detail = re.search(r'href="(/predictions/[0-9a-f-]{36})"', log.text).group(1)  # type: ignore[union-attr]
    shown = await client.get(detail)
    assert shown.status_code == 200
    assert "1.0" in shown.text


async def test_admin_page_is_for_admins(client: httpx.AsyncClient) -> None:
    await sign_up(client)
    response = await client.get("/admin/users")
    assert response.status_code == 403


async def test_admin_deactivates_through_the_page(client: httpx.AsyncClient, app: FastAPI) -> None:
    victim = factories.make_account
    other = await victim(client)
    admin = await factories.make_account(client, admin_of=app)
    response = await post_form(client, "/sign-in", "/sign-in", email=admin.email, password=PASSWORD)
    assert response.status_code == 303
    page = await client.get("/admin/users")
    action = f"/admin/users/{other.id}"
    assert action in page.text
    done = await client.post(action, data={"csrf_token": csrf_of(page.text), "is_active": "false"})
    assert done.status_code == 303
    me = await client.get("/api/v1/auth/me", headers=other.headers)
    assert me.status_code == 401


async def test_experiment_page_shows_params_metrics_and_versions(
    client: httpx.AsyncClient, iris_skops: Path
) -> None:
    account = await factories.make_account(client)
    created = await client.post(
        "/api/v1/experiments",
        json={"name": "sweep <b>", "parameters": {"C": 1.0}, "tags": ["lr"]},
        headers=account.headers,
    )
    experiment_id = created.json()["id"]
    await client.post(
        f"/api/v1/experiments/{experiment_id}/metrics",
        json=[{"key": "loss", "value": v, "step": i} for i, v in enumerate([0.9, 0.5, 0.3])],
        headers=account.headers,
    )
    await factories.make_version(client, account, iris_skops, experiment_id=experiment_id)
    await post_form(client, "/sign-in", "/sign-in", email=account.email, password=PASSWORD)
    page = await client.get(f"/experiments/{experiment_id}")
    assert page.status_code == 200
    assert "sweep &lt;b&gt;" in page.text
    assert "<polyline" in page.text
    assert "iris v1" in page.text
    assert ">sweep &lt;b&gt;<" in (await client.get("/experiments")).text


@pytest.mark.parametrize(
    "path",
    [
        "/models/00000000-0000-0000-0000-000000000000",
        "/predictions/00000000-0000-0000-0000-000000000000",
    ],
)
async def test_missing_objects_are_html_404s(client: httpx.AsyncClient, path: str) -> None:
    await sign_up(client)
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in response.headers


async def test_page_assets_are_served_by_the_app(client: httpx.AsyncClient) -> None:
    page = await client.get("/sign-in")
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', page.text) if "/static/" in a]
    assert assets
    assert all(a.startswith("/static/web/") for a in assets), assets
    for asset in assets:
        served = await client.get(asset)
        assert served.status_code == 200, asset
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)  # no inline script


async def test_serving_role_has_no_dashboard(tmp_path: Path, database_url: str) -> None:

    from modelyard.app import create_app
    from tests.support.settings import make_settings

    app = create_app(make_settings(tmp_path, database_url, role="serving"))
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            assert (await c.get("/")).status_code == 404
            assert (await c.get("/sign-in")).status_code == 404


async def test_signing_in_again_clears_ended_sessions(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    from sqlalchemy import func, select

    from modelyard.db.tables import WebSession

    email = await sign_up(client)
    for _ in range(3):
        await post_form(client, "/", "/sign-out")
        await post_form(client, "/sign-in", "/sign-in", email=email, password=PASSWORD)
    async with app.state.modelyard.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(WebSession)) == 1


async def test_prediction_log_marks_and_filters_shadow_predictions(
    client: httpx.AsyncClient, iris_skops: Path, app: FastAPI
) -> None:
    email = await sign_up(client)
    for _ in range(2):
        assert (await upload_form(client, iris_skops, "iris")).status_code == 303
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    api = {"Authorization": f"Bearer {login.json()['access_token']}"}
    policy = {
        "routes": [{"target": "v1", "weight": 1}],
        "shadow": {"target": "v2", "sample_rate": 1.0},
    }
    assert (await client.put("/api/v1/models/iris/traffic", json=policy, headers=api)).is_success
    answer = await client.post(
        "/api/v1/predict/iris", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, headers=api
    )
    assert answer.status_code == 200, answer.text
    await app.state.modelyard.predictor.drain_shadows()  # the copy runs after the answer
    await app.state.modelyard.prediction_log.flush()

    def rows(html: str) -> list[str]:
        return re.findall(r"<tr><td><a href=\"/predictions/.*?</tr>", html, re.DOTALL)

    every = rows((await client.get("/predictions")).text)
    assert len(every) == 2
    assert sum('class="badge shadow"' in row for row in every) == 1
    live = rows((await client.get("/predictions", params={"traffic": "live"})).text)
    assert len(live) == 1
    assert 'class="badge shadow"' not in live[0]
    assert "<td>1</td>" in live[0]  # version 1 answered the caller
    shadow_page = (await client.get("/predictions", params={"traffic": "shadow"})).text
    shadow = rows(shadow_page)
    assert len(shadow) == 1
    assert 'class="badge shadow"' in shadow[0]
    assert '<option value="shadow" selected>' in shadow_page
    detail = re.search(r'href="(/predictions/[0-9a-f-]{36})"', shadow[0]).group(1)  # type: ignore[union-attr]
    shown = (await client.get(detail)).text
    assert 'id="shadow-of"' in shown


async def test_a_models_description_and_tags_are_edited_on_its_page(
    client: httpx.AsyncClient, iris_skops: Path
) -> None:
    email = await sign_up(client)
    version_url = (await upload_form(client, iris_skops, "iris")).headers["location"]
    model_url = version_url.split("/versions")[0]

    saved = await post_form(
        client,
        model_url,
        f"{model_url}/edit",
        description="Irises, by petal",
        tags="prod, iris, prod",
    )

    assert saved.status_code == 303
    page = (await client.get(saved.headers["location"])).text
    assert 'id="model-saved"' in page
    assert '<p id="model-description">Irises, by petal</p>' in page
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    api = {"Authorization": f"Bearer {login.json()['access_token']}"}
    shown = (await client.get("/api/v1/models/iris", headers=api)).json()
    assert (shown["description"], shown["tags"]) == ("Irises, by petal", ["prod", "iris"])
    too_long = await post_form(
        client,
        model_url,
        f"{model_url}/edit",
        tags="t" * 65,  # a tag is 64 characters at most
    )
    assert too_long.status_code == 422
    assert 'id="edit-error"' in too_long.text
    cleared = await post_form(client, model_url, f"{model_url}/edit", description="", tags="")
    assert cleared.status_code == 303
    shown = (await client.get("/api/v1/models/iris", headers=api)).json()
    assert (shown["description"], shown["tags"]) == (None, [])


async def test_a_model_is_deleted_after_a_confirmation(
    client: httpx.AsyncClient, iris_skops: Path
) -> None:
    await sign_up(client)
    version_url = (await upload_form(client, iris_skops, "iris")).headers["location"]
    model_url = version_url.split("/versions")[0]
    assert f'href="{model_url}/delete"' in (await client.get(model_url)).text

    confirm = await client.get(f"{model_url}/delete")
    assert confirm.status_code == 200
    assert "Delete iris?" in confirm.text
    assert ">iris<" in (await client.get("/")).text  # asking deletes nothing
    deleted = await post_form(client, f"{model_url}/delete", f"{model_url}/delete")

    assert deleted.status_code == 303
    assert ">iris<" not in (await client.get("/")).text
    page = (await client.get(model_url)).text
    assert "status archived" in page
    assert 'id="delete-model"' not in page
    assert "archived" in (await client.get(version_url)).text


async def test_another_persons_model_cannot_be_edited_or_deleted(
    client: httpx.AsyncClient, iris_skops: Path, app: FastAPI
) -> None:
    await sign_up(client)
    version_url = (await upload_form(client, iris_skops, "iris")).headers["location"]
    model_url = version_url.split("/versions")[0]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=str(client.base_url)
    ) as other:
        await sign_up(other)
        for action in (f"{model_url}/edit", f"{model_url}/delete"):
            refused = await post_form(other, "/", action, description="mine now")
            assert refused.status_code == 404, action
        assert (await other.get(f"{model_url}/delete")).status_code == 404
    assert "mine now" not in (await client.get(model_url)).text
    assert ">iris<" in (await client.get("/")).text


async def test_api_key_is_limited_to_the_models_named(
    client: httpx.AsyncClient, iris_skops: Path
) -> None:
    await sign_up(client)
    for name in ("iris", "other"):
        assert (await upload_form(client, iris_skops, name)).status_code == 303

    created = await post_form(client, "/api-keys", "/api-keys", name="iris only", models=" iris ")

    assert created.status_code == 201
    key = re.search(r'id="new-key"[^>]*>([^<]+)<', created.text).group(1)  # type: ignore[union-attr]
    headers = {"X-API-Key": key}
    row = [[5.1, 3.5, 1.4, 0.2]]
    allowed = await client.post("/api/v1/predict/iris", json={"inputs": row}, headers=headers)
    assert allowed.status_code == 200, allowed.text
    other = await client.post("/api/v1/predict/other", json={"inputs": row}, headers=headers)
    assert other.status_code in (403, 404)
    assert "(iris only)" in (await client.get("/api-keys")).text
    bad = await post_form(client, "/api-keys", "/api-keys", name="bad", models="not a name!")
    assert bad.status_code == 422


async def test_upload_form_takes_the_input_schema(
    client: httpx.AsyncClient, iris_skops: Path
) -> None:
    await sign_up(client)
    names = "sepal_length, sepal_width, petal_length, petal_width"

    uploaded = await upload_form(client, iris_skops, "iris", input_schema=names)

    assert uploaded.status_code == 303, uploaded.text
    page = (await client.get(uploaded.headers["location"])).text
    assert '<label for="f2">petal_length</label>' in page
    as_json = (
        '{"features": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d", "type": "int"}]}'
    )
    uploaded = await upload_form(client, iris_skops, "iris", input_schema=as_json)
    assert uploaded.status_code == 303, uploaded.text
    page = (await client.get(uploaded.headers["location"])).text
    assert "<td>d</td><td>int</td>" in page
    refused = await upload_form(client, iris_skops, "iris", input_schema="a, b")
    assert refused.status_code == 422
    assert "input_schema lists 2 features; the model takes 4" in refused.text

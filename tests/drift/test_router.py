"""Drift signals end to end: references from files and from served rows, drift reports, bounds,
errors and ownership, on both databases."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from scipy import stats as scipy_stats
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.drift import stats
from modelyard.state import AppState
from tests.audit.test_audit import audit_rows
from tests.support.factories import (
    Account,
    lifespan,
    make_account,
    make_api_key,
    make_version,
    upload_model,
)
from tests.support.problems import assert_problem
from tests.support.settings import make_settings

NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SCHEMA = {"features": [{"name": n, "type": "float"} for n in NAMES]}
MODELS = "/api/v1/models"
REFERENCE = f"{MODELS}/iris/versions/1/reference"
DRIFT = f"{MODELS}/iris/drift"


def normal_rows(seed: int, n: int, *, shift: float = 0.0) -> np.ndarray:
    """`n` rows of four N(0, 1) features, the first shifted by `shift`."""
    rows = np.random.default_rng(seed).normal(0.0, 1.0, (n, len(NAMES)))
    rows[:, 0] += shift
    return rows


def to_csv(rows: np.ndarray, names: list[str] = NAMES) -> bytes:
    out = io.StringIO()
    out.write(",".join(names) + "\n")
    for row in rows:
        out.write(",".join(repr(float(v)) for v in row) + "\n")
    return out.getvalue().encode()


async def upload_file(client: httpx.AsyncClient, account: Account, path: str, data: bytes) -> None:
    response = await client.post(
        "/api/v1/files/upload",
        files={"file": ("data.csv", data, "text/csv")},
        data={"path": path},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text


async def served(
    app: FastAPI, client: httpx.AsyncClient, account: Account, rows: np.ndarray, *, per: int = 250
) -> None:
    """Predict `rows` with iris (`per` rows a request), then wait for the log to write them."""
    for start in range(0, len(rows), per):
        response = await client.post(
            "/api/v1/predict/iris",
            json={"inputs": rows[start : start + per].tolist()},
            headers=account.headers,
        )
        assert response.status_code == 200, response.text
    state: AppState = app.state.modelyard
    await state.prediction_log.flush()


async def put_reference(client: httpx.AsyncClient, account: Account, path: str) -> httpx.Response:
    return await client.put(REFERENCE, json={"path": path}, headers=account.headers)


def expected_psi(reference: np.ndarray, window: np.ndarray) -> float:
    """PSI over the reference's deciles, written out independently of the server's code."""
    cuts = np.unique(np.quantile(reference, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]))
    bins = [-np.inf, *cuts, np.inf]
    e = np.histogram(reference, bins=bins)[0] / reference.size
    a = np.histogram(window, bins=bins)[0] / window.size
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


@asynccontextmanager
async def app_and_client(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app built from `settings` in its lifespan, and a client of it."""
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in body["features"]}


@pytest.fixture
async def iris(client: httpx.AsyncClient, user: Account, iris_skops: Path) -> dict[str, Any]:
    return await make_version(client, user, iris_skops, input_schema=SCHEMA)


@pytest.mark.parametrize(("shift", "drifted"), [(1.5, True), (0.0, False)])
async def test_drift_is_flagged_on_a_shifted_window_and_not_on_the_same_distribution(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris: dict[str, Any],
    shift: float,
    drifted: bool,
) -> None:
    reference = normal_rows(seed=1, n=1_000)
    window = normal_rows(seed=2, n=1_000, shift=shift)
    await upload_file(client, user, "ref/train.csv", to_csv(reference))
    assert (await put_reference(client, user, "ref/train.csv")).status_code == 200
    await served(app, client, user, window)

    response = await client.get(DRIFT, headers=user.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["drifted"] is drifted
    assert body["status"] == "ok"
    assert body["version"] == 1
    assert body["reference"]["source"] == "file"
    assert body["reference"]["source_path"] == "ref/train.csv"
    assert body["reference"]["row_count"] == 1_000
    assert body["sample"]["rows"] == 1_000
    assert body["sample"]["predictions"] == 4
    assert body["sample"]["skipped_predictions"] == 0
    assert body["thresholds"] == {
        "psi_moderate": 0.1,
        "psi_significant": 0.25,
        "ks_p_value": 0.01,
        "min_rows": 50,
    }
    features = by_name(body)
    for i, name in enumerate(NAMES):
        feature = features[name]
        # The server's numbers are the ones numpy and scipy give on the same data.
        assert feature["psi"] == pytest.approx(expected_psi(reference[:, i], window[:, i]))
        ks = scipy_stats.ks_2samp(reference[:, i], window[:, i])
        assert feature["ks_statistic"] == pytest.approx(ks.statistic)
        assert feature["ks_p_value"] == pytest.approx(ks.pvalue, rel=1e-6, abs=1e-300)
        assert feature["rows"] == 1_000
        assert feature["mean"] == pytest.approx(window[:, i].mean())
        assert feature["reference_mean"] == pytest.approx(reference[:, i].mean())
        shifted = drifted and i == 0
        assert feature["drifted"] is shifted, feature
        if shifted:
            assert feature["psi"] >= stats.PSI_SIGNIFICANT
            assert feature["psi_level"] == "significant"
            assert feature["ks_p_value"] < stats.KS_P_VALUE
            assert feature["ks_flagged"] is True
        else:
            assert feature["psi"] < stats.PSI_MODERATE
            assert feature["psi_level"] == "stable"
            assert feature["ks_flagged"] is False


async def test_a_reference_file_is_summarised_shown_and_audited(
    client: httpx.AsyncClient, user: Account, iris: dict[str, Any]
) -> None:
    reference = normal_rows(seed=3, n=300)
    # Columns in another order, one the model does not take, CRLF line ends, an empty cell.
    lines = [",".join([*reversed(NAMES), "label"])]
    lines += [",".join([*(repr(float(v)) for v in row[::-1]), "setosa"]) for row in reference]
    lines.append("1.0,,2.0,3.0,virginica")
    csv_text = ("\r\n".join(lines) + "\r\n").encode()
    await upload_file(client, user, "train.csv", csv_text)

    response = await put_reference(client, user, "train.csv")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "file"
    assert body["row_count"] == 301
    assert body["version_id"] == iris["id"]
    features = by_name(body)
    assert list(features) == NAMES
    first = features["sepal_length"]
    assert first["kind"] == "numeric"
    assert first["count"] == 301
    assert first["missing"] == 0
    assert first["mean"] == pytest.approx(np.append(reference[:, 0], 3.0).mean())
    assert first["std"] == pytest.approx(np.append(reference[:, 0], 3.0).std(ddof=1))
    assert len(first["cuts"]) == 9
    assert len(first["proportions"]) == 10
    assert sum(first["proportions"]) == pytest.approx(1.0)
    assert first["sample_size"] == 301
    petal = features["petal_width"]
    assert (petal["count"], petal["missing"]) == (301, 0)
    assert features["sepal_width"]["missing"] == 0
    assert (features["petal_length"]["count"], features["petal_length"]["missing"]) == (300, 1)

    shown = await client.get(REFERENCE, headers=user.headers)
    assert shown.status_code == 200
    assert shown.json() == body

    rows = await audit_rows(client, user, action="reference.changed")
    assert len(rows) == 1
    assert rows[0]["target_type"] == "model_version"
    assert rows[0]["target_id"] == iris["id"]
    assert rows[0]["model_id"] == iris["model_id"]
    assert rows[0]["details"] == {
        "model": "iris",
        "version": 1,
        "source": "file",
        "rows": 301,
        "path": "train.csv",
    }

    assert (await client.delete(REFERENCE, headers=user.headers)).status_code == 204
    assert_problem(await client.get(REFERENCE, headers=user.headers), 404)
    assert_problem(await client.delete(REFERENCE, headers=user.headers), 404)
    rows = await audit_rows(client, user, action="reference.changed")
    assert [r["details"]["source"] for r in rows] == [None, "file"]


def to_parquet(columns: dict[str, Any]) -> bytes:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out, row_group_size=128)
    return out.getvalue()


async def test_a_parquet_reference_gives_the_numbers_of_the_same_csv(
    client: httpx.AsyncClient, user: Account, iris: dict[str, Any]
) -> None:
    pa = pytest.importorskip("pyarrow")
    reference = normal_rows(seed=22, n=500)
    await upload_file(client, user, "ref.csv", to_csv(reference))
    from_csv = (await put_reference(client, user, "ref.csv")).json()
    columns: dict[str, Any] = {name: reference[:, i] for i, name in enumerate(NAMES)}
    # Other types and a null: an int column, a missing value, a column the model does not take.
    columns["petal_width"] = pa.array([*range(499), None], type=pa.int32())
    columns["label"] = ["setosa"] * 500
    await upload_file(client, user, "ref.parquet", to_parquet(columns))
    response = await put_reference(client, user, "ref.parquet")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source_path"] == "ref.parquet"
    assert body["row_count"] == 500
    for name in NAMES[:3]:
        parquet, csv = by_name(body)[name], by_name(from_csv)[name]
        # Read in other chunks: the moments may differ in the last bits, nothing else.
        assert parquet | {"mean": 0, "std": 0} == csv | {"mean": 0, "std": 0}
        assert (parquet["mean"], parquet["std"]) == pytest.approx((csv["mean"], csv["std"]))
    petal = by_name(body)["petal_width"]
    assert (petal["count"], petal["missing"]) == (499, 1)
    assert petal["mean"] == pytest.approx(249.0)

    text = dict(columns, sepal_width=["a"] * 500)
    await upload_file(client, user, "text.parquet", to_parquet(text))
    problem = assert_problem(await put_reference(client, user, "text.parquet"), 422)
    assert "column 'sepal_width' is not numeric" in problem["detail"]
    await upload_file(client, user, "broken.parquet", to_parquet(columns)[:-40])
    problem = assert_problem(await put_reference(client, user, "broken.parquet"), 422)
    assert problem["detail"] == "the reference file is not a readable Parquet file"
    # The failed attempts left the Parquet reference as it was.
    assert (await client.get(REFERENCE, headers=user.headers)).json() == body


async def test_parquet_without_pyarrow_is_refused_with_a_reason(
    client: httpx.AsyncClient, user: Account, iris: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    await upload_file(client, user, "ref.parquet", b"PAR1" + b"\0" * 64 + b"PAR1")
    problem = assert_problem(await put_reference(client, user, "ref.parquet"), 422)
    assert (
        problem["detail"] == "Parquet reference files need pyarrow on the server; give a CSV file"
    )


async def test_without_a_file_the_first_served_rows_become_the_reference(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    settings = make_settings(tmp_path, database_url, drift_reference_rows=200)
    async with app_and_client(settings) as (app, client):
        user = await make_account(client)
        await make_version(client, user, iris_skops, input_schema=SCHEMA)
        first = normal_rows(seed=5, n=150)
        await served(app, client, user, first, per=50)

        early = await client.get(DRIFT, headers=user.headers)
        problem = assert_problem(early, 409)
        assert "150 of the 200 served rows" in problem["detail"]
        assert_problem(await client.get(REFERENCE, headers=user.headers), 404)

        later = normal_rows(seed=6, n=150, shift=3.0)
        await served(app, client, user, later, per=50)
        response = await client.get(DRIFT, headers=user.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["reference"]["source"] == "served"
        assert body["reference"]["row_count"] == 200
        # The reference is the first 200 rows served: the 150 of before and 50 shifted ones.
        reference = np.vstack([first, later[:50]])
        window = np.vstack([first, later])
        feature = by_name(body)["sepal_length"]
        assert feature["reference_mean"] == pytest.approx(reference[:, 0].mean())
        assert feature["psi"] == pytest.approx(expected_psi(reference[:, 0], window[:, 0]))
        assert body["sample"]["rows"] == 300

        stored = await client.get(REFERENCE, headers=user.headers)
        assert stored.status_code == 200
        assert stored.json()["source"] == "served"
        assert by_name(stored.json())["sepal_length"]["mean"] == pytest.approx(
            reference[:, 0].mean()
        )
        # Kept: more served rows do not move it.
        await served(app, client, user, normal_rows(seed=7, n=100, shift=-2.0), per=50)
        again = await client.get(REFERENCE, headers=user.headers)
        assert again.json() == stored.json()
        rows = await audit_rows(client, user, action="reference.changed")
        assert [(r["details"]["source"], r["details"]["rows"]) for r in rows] == [("served", 200)]


async def test_the_window_is_read_up_to_its_bound_newest_first_and_skips_truncated_inputs(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        drift_window_max_rows=120,
        drift_reference_rows=50,
        prediction_log_max_payload_bytes=4096,
    )
    async with app_and_client(settings) as (app, client):
        user = await make_account(client)
        await make_version(client, user, iris_skops, input_schema=SCHEMA)
        await upload_file(client, user, "ref.csv", to_csv(normal_rows(seed=8, n=100)))
        assert (await put_reference(client, user, "ref.csv")).status_code == 200
        oldest = normal_rows(seed=9, n=200, shift=5.0)
        await served(app, client, user, oldest, per=20)
        # 100 rows of JSON are past the 4 KiB payload budget: logged truncated, not readable.
        await served(app, client, user, normal_rows(seed=10, n=100), per=100)
        newest = normal_rows(seed=11, n=100)
        await served(app, client, user, newest, per=20)

        response = await client.get(DRIFT, headers=user.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        sample = body["sample"]
        assert sample["max_rows"] == 120
        assert sample["rows"] == 120
        assert (sample["skipped_predictions"], sample["skipped_rows"]) == (1, 100)
        # The 5 newest requests (100 rows), then the truncated one, then 20 rows of the oldest.
        assert sample["predictions"] == 6
        window = np.vstack([newest, oldest[-20:]])
        feature = by_name(body)["sepal_width"]
        assert feature["rows"] == 120
        assert feature["mean"] == pytest.approx(window[:, 1].mean())


async def test_the_window_defaults_to_the_last_day_and_can_be_chosen(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris: dict[str, Any]
) -> None:
    await upload_file(client, user, "ref.csv", to_csv(normal_rows(seed=12, n=100)))
    assert (await put_reference(client, user, "ref.csv")).status_code == 200
    await served(app, client, user, normal_rows(seed=13, n=100))

    past = await client.get(
        DRIFT,
        params={"since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"},
        headers=user.headers,
    )
    assert past.status_code == 200, past.text
    body = past.json()
    assert body["status"] == "insufficient_data"
    assert body["drifted"] is False
    assert body["sample"]["rows"] == 0
    assert all(f["psi"] is None and f["skipped"] for f in body["features"])

    default = (await client.get(DRIFT, params={"version": "1"}, headers=user.headers)).json()
    assert default["sample"]["rows"] == 100
    since, until = default["window"]["since"], default["window"]["until"]
    assert np.datetime64(until[:26]) - np.datetime64(since[:26]) == np.timedelta64(24, "h")

    alias = await client.put(
        f"{MODELS}/iris/aliases/champion", json={"version": 1}, headers=user.headers
    )
    assert alias.status_code == 200
    by_alias = await client.get(DRIFT, params={"version": "champion"}, headers=user.headers)
    assert by_alias.json()["version"] == 1
    for missing in ("7", "0", "99999999999999999999", "nope"):
        response = await client.get(DRIFT, params={"version": missing}, headers=user.headers)
        assert_problem(response, 404)
    backwards = await client.get(
        DRIFT,
        params={"since": "2020-01-02T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
        headers=user.headers,
    )
    assert_problem(backwards, 422)
    naive = await client.get(DRIFT, params={"since": "2020-01-02T00:00:00"}, headers=user.headers)
    assert_problem(naive, 422)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (to_csv(normal_rows(seed=14, n=60)[:, :3], names=NAMES[:3]), "no column 'petal_width'"),
        (
            to_csv(normal_rows(seed=15, n=60)).replace(b"\n-", b"\nabc", 1),
            "column 'sepal_length': not a number",
        ),
        (b"", "empty"),
        (",".join(NAMES).encode() + b"\n", "no data rows"),
        (to_csv(normal_rows(seed=16, n=10)), "10 data rows; at least 50"),
        (b"\xff\xfe\x00garbage\x00\x81", "not UTF-8"),
        (to_csv(normal_rows(seed=17, n=60)) + b"1.0,2.0\n", "has 2 fields; the header has 4"),
        (
            (",".join([*NAMES, NAMES[0]]) + "\n").encode() + b"1,2,3,4,5\n",
            "two columns 'sepal_length'",
        ),
    ],
    ids=[
        "missing-column",
        "non-numeric",
        "empty",
        "header-only",
        "too-few",
        "binary",
        "ragged",
        "twice",
    ],
)
async def test_a_bad_reference_file_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, user: Account, iris: dict[str, Any], data: bytes, fragment: str
) -> None:
    await upload_file(client, user, "bad.csv", data)
    problem = assert_problem(await put_reference(client, user, "bad.csv"), 422)
    assert fragment in problem["detail"]
    assert problem["type"].endswith("invalid-reference-file")
    assert_problem(await client.get(REFERENCE, headers=user.headers), 404)


async def test_a_reference_past_the_row_limit_is_refused(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    settings = make_settings(tmp_path, database_url, drift_reference_max_rows=60)
    async with app_and_client(settings) as (_, client):
        user = await make_account(client)
        await make_version(client, user, iris_skops, input_schema=SCHEMA)
        await upload_file(client, user, "ref.csv", to_csv(normal_rows(seed=40, n=61)))

        problem = assert_problem(await put_reference(client, user, "ref.csv"), 422)

    assert problem["detail"] == (
        "the reference file has more than 60 data rows, the most this server reads"
    )


async def test_reference_paths_and_bodies_are_checked(
    client: httpx.AsyncClient, user: Account, iris: dict[str, Any]
) -> None:
    missing = assert_problem(await put_reference(client, user, "nowhere.csv"), 404)
    assert missing["detail"] == "file 'nowhere.csv' not found"
    assert_problem(await put_reference(client, user, "../etc/passwd"), 400)
    extra = await client.put(
        REFERENCE, json={"path": "x.csv", "source": "served"}, headers=user.headers
    )
    assert_problem(extra, 422)
    no_version = await client.put(
        f"{MODELS}/iris/versions/2/reference", json={"path": "x.csv"}, headers=user.headers
    )
    assert_problem(no_version, 404)


async def test_another_users_file_model_and_reference_stay_hidden(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    other_user: Account,
    iris: dict[str, Any],
) -> None:
    # The other user's file at the same path is never read for this user's reference.
    await upload_file(client, other_user, "ref.csv", to_csv(normal_rows(seed=19, n=100)))
    assert_problem(await put_reference(client, user, "ref.csv"), 404)
    await upload_file(client, user, "ref.csv", to_csv(normal_rows(seed=19, n=100)))
    assert (await put_reference(client, user, "ref.csv")).status_code == 200
    await served(app, client, user, normal_rows(seed=20, n=100))

    for response in (
        await client.get(DRIFT, headers=other_user.headers),
        await client.get(f"{MODELS}/{iris['model_id']}/drift", headers=other_user.headers),
        await client.get(REFERENCE, headers=other_user.headers),
        await client.put(REFERENCE, json={"path": "ref.csv"}, headers=other_user.headers),
        await client.delete(REFERENCE, headers=other_user.headers),
    ):
        assert_problem(response, 404)
    assert (await client.get(REFERENCE, headers=user.headers)).status_code == 200


async def test_reading_drift_needs_read_and_changing_the_reference_needs_write(
    client: httpx.AsyncClient, user: Account, iris: dict[str, Any]
) -> None:
    await upload_file(client, user, "ref.csv", to_csv(normal_rows(seed=21, n=100)))
    reader = {"X-API-Key": await make_api_key(client, user, "r", scopes=["read"])}
    writer = {"X-API-Key": await make_api_key(client, user, "w", scopes=["write"])}
    both = {"X-API-Key": await make_api_key(client, user, "rw", scopes=["read", "write"])}
    assert_problem(await client.put(REFERENCE, json={"path": "ref.csv"}, headers=reader), 403)
    # A reference from a file reads the file: `read` too, as the files routes need.
    no_read = await client.put(REFERENCE, json={"path": "ref.csv"}, headers=writer)
    assert assert_problem(no_read, 403)["detail"] == "this API key lacks the `read` scope"
    assert (await client.put(REFERENCE, json={"path": "ref.csv"}, headers=both)).status_code == 200
    assert (await client.get(REFERENCE, headers=reader)).status_code == 200
    assert (await client.get(DRIFT, headers=reader)).status_code == 200
    assert_problem(await client.get(DRIFT, headers=writer), 403)
    assert_problem(await client.delete(REFERENCE, headers=reader), 403)
    assert (await client.delete(REFERENCE, headers=writer)).status_code == 204


async def test_a_key_limited_to_the_model_may_not_set_its_reference_from_a_file(
    client: httpx.AsyncClient, user: Account, iris: dict[str, Any]
) -> None:
    await upload_file(client, user, "ref.csv", to_csv(normal_rows(seed=22, n=100)))
    key = await make_api_key(client, user, scopes=["read", "write"], models=["iris"])
    headers = {"X-API-Key": key}

    # An existing file and a missing one are refused alike, before either is looked at.
    existing = await client.put(REFERENCE, json={"path": "ref.csv"}, headers=headers)
    missing = await client.put(REFERENCE, json={"path": "nowhere.csv"}, headers=headers)

    assert assert_problem(existing, 403) == assert_problem(missing, 403)
    assert existing.json()["type"].endswith("/outside-model-limit")
    # As the files routes answer the same key.
    assert assert_problem(await client.get("/api/v1/files", headers=headers), 403) == (
        existing.json()
    )
    assert_problem(await client.get(REFERENCE, headers=user.headers), 404)


# --- a reference given at upload -----------------------------------------------------------------


def stored_objects(app: FastAPI) -> set[Path]:
    state: AppState = app.state.modelyard
    root = state.settings.data_dir / "artifacts" / "models"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


async def test_a_reference_given_at_upload_is_stored_with_the_version(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    reference = normal_rows(seed=31, n=200)
    await upload_file(client, user, "iris/train.csv", to_csv(reference))

    version = await make_version(
        client, user, iris_skops, input_schema=SCHEMA, reference_path="iris/train.csv"
    )
    shown = await client.get(REFERENCE, headers=user.headers)
    # The same file PUT afterwards gives the same summary.
    put = await put_reference(client, user, "iris/train.csv")
    await served(app, client, user, normal_rows(seed=32, n=200, shift=2.0))
    drift = await client.get(DRIFT, headers=user.headers)

    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert (body["version_id"], body["source"], body["source_path"], body["row_count"]) == (
        version["id"],
        "file",
        "iris/train.csv",
        200,
    )
    assert by_name(body)["sepal_length"]["mean"] == pytest.approx(reference[:, 0].mean())
    assert put.status_code == 200
    assert put.json()["features"] == body["features"]
    assert drift.json()["drifted"] is True
    assert drift.json()["reference"]["source_path"] == "iris/train.csv"
    assert len(stored_objects(app)) == 1  # where the refused uploads below would leave theirs
    changes = await audit_rows(client, user, action="reference.changed")
    assert [(r["target_id"], r["details"]["path"]) for r in changes][-1] == (
        version["id"],
        "iris/train.csv",
    )


@pytest.mark.parametrize(
    ("scopes", "models", "problem"),
    [
        (["write"], None, "missing-scope"),
        (["read", "write"], ["iris"], "outside-model-limit"),
    ],
    ids=["without-read", "limited-to-the-model"],
)
async def test_an_upload_naming_a_reference_path_needs_the_files_read_right(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    scopes: list[str],
    models: list[str] | None,
    problem: str,
) -> None:
    await upload_file(client, user, "ref.csv", to_csv(normal_rows(seed=35, n=100)))
    key = await make_api_key(client, user, scopes=scopes, models=models)
    headers = {"X-API-Key": key}
    before = stored_objects(app)

    with iris_skops.open("rb") as f:
        refused = await client.post(
            f"{MODELS}/upload",
            data={"name": "iris", "input_schema": json.dumps(SCHEMA), "reference_path": "ref.csv"},
            files={"file": (iris_skops.name, f)},
            headers=headers,
        )

    assert assert_problem(refused, 403)["type"].endswith(f"/{problem}")
    assert_problem(await client.get(f"{MODELS}/iris", headers=user.headers), 404)
    assert stored_objects(app) == before


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("nowhere.csv", 404, "file 'nowhere.csv' not found"),
        ("../etc/passwd", 400, ""),
        ("short.csv", 422, "data rows; at least 50"),
        ("theirs.csv", 404, "file 'theirs.csv' not found"),
    ],
    ids=["missing", "outside-the-area", "too-short", "another-users"],
)
async def test_an_upload_with_an_unusable_reference_is_refused_and_stores_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    other_user: Account,
    iris_skops: Path,
    path: str,
    status: int,
    fragment: str,
) -> None:
    await upload_file(client, user, "short.csv", to_csv(normal_rows(seed=33, n=10)))
    await upload_file(client, other_user, "theirs.csv", to_csv(normal_rows(seed=34, n=100)))
    before = stored_objects(app)

    refused = await upload_model(client, user, iris_skops, input_schema=SCHEMA, reference_path=path)

    problem = assert_problem(refused, status)
    assert fragment in problem["detail"]
    assert_problem(await client.get(f"{MODELS}/iris", headers=user.headers), 404)
    assert stored_objects(app) == before

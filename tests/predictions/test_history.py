"""Reading the log back: who sees which predictions, filters, paging, analytics in SQL."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import ROLLUP_BUCKETS
from modelyard.db.types import utcnow
from modelyard.predictions.log import queries as history
from modelyard.predictions.log import rollups
from modelyard.predictions.log.record import PredictionRecord
from modelyard.predictions.log.schemas import LIST_ERROR_CUT, LIST_ERROR_MAX_CHARS
from modelyard.state import AppState
from tests.support import factories
from tests.support.predictions import record_on
from tests.support.rows import make_model

PREDICTIONS = "/api/v1/predictions"
MODEL_ANALYTICS = "/api/v1/analytics/models"
USAGE = "/api/v1/analytics/usage"


async def log_records(app: FastAPI, records: Iterable[PredictionRecord]) -> None:
    """Write records through the app's own prediction log."""
    state: AppState = app.state.modelyard
    for rec in records:
        state.prediction_log.record(rec)
    await state.prediction_log.flush()


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def assert_estimates(estimate: float, exact: float) -> None:
    """The rollups' percentile is within their documented relative error of the exact one."""
    assert abs(estimate - exact) <= exact * rollups.PERCENTILE_RELATIVE_ERROR + 1e-9, (
        estimate,
        exact,
    )


def nearest_rank(values: list[float], p: float) -> float:
    """The nearest-rank percentile: the value at rank ceil(p * n) of the sorted values."""
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered)) - 1]


@pytest.fixture
async def third_user(client: httpx.AsyncClient) -> factories.Account:
    return await factories.make_account(client)


@pytest.fixture
async def matrix(
    app: FastAPI,
    db: AsyncSession,
    user: factories.Account,
    other_user: factories.Account,
    third_user: factories.Account,
) -> dict[str, PredictionRecord]:
    """Calls by three users on a model of `user` and a model of `other_user`."""
    mine, [my_version] = await make_model(db, user.id, name="mine")
    theirs, [their_version] = await make_model(db, other_user.id, name="theirs")
    start = utcnow() - timedelta(hours=1)
    records = {
        "me_on_mine": record_on(mine, my_version, user.id, created_at=start),
        "other_on_mine": record_on(
            mine,
            my_version,
            other_user.id,
            created_at=start + timedelta(minutes=1),
            status="error",
            error="bad input",
        ),
        "me_on_theirs": record_on(
            theirs, their_version, user.id, created_at=start + timedelta(minutes=2)
        ),
        "other_on_theirs": record_on(
            theirs, their_version, other_user.id, created_at=start + timedelta(minutes=3)
        ),
        "third_on_theirs": record_on(
            theirs, their_version, third_user.id, created_at=start + timedelta(minutes=4)
        ),
    }
    await log_records(app, records.values())
    return records


def id_of(matrix: dict[str, PredictionRecord], *names: str) -> list[str]:
    return [str(matrix[name].id) for name in names]


async def test_list_shows_own_calls_and_calls_on_own_models_newest_first(
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    third_user: factories.Account,
    matrix: dict[str, PredictionRecord],
) -> None:
    mine = await client.get(PREDICTIONS, headers=user.headers)
    theirs = await client.get(PREDICTIONS, headers=other_user.headers)
    third = await client.get(PREDICTIONS, headers=third_user.headers)

    assert ids(mine) == id_of(matrix, "me_on_theirs", "other_on_mine", "me_on_mine")
    assert ids(theirs) == id_of(
        matrix, "third_on_theirs", "other_on_theirs", "me_on_theirs", "other_on_mine"
    )
    assert ids(third) == id_of(matrix, "third_on_theirs")
    assert mine.json()["total"] == 3


async def test_get_shows_a_visible_prediction_with_its_fields(
    client: httpx.AsyncClient, user: factories.Account, matrix: dict[str, PredictionRecord]
) -> None:
    rec = matrix["other_on_mine"]

    response = await client.get(f"{PREDICTIONS}/{rec.id}", headers=user.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "id": str(rec.id),
        "model_id": str(rec.model_id),
        "model_name": "mine",
        "version": 1,
        "status": "error",
        "error": "bad input",
        "protocol": "rest",
        "inputs": rec.inputs,
        "outputs": rec.outputs,
        "n_rows": rec.n_rows,
        "inference_time_ms": rec.inference_time_ms,
        "created_at": body["created_at"],
        "user_id": str(rec.user_id),
        "api_key_id": None,
        "shadow": False,
        "shadow_of": None,
    }
    assert datetime.fromisoformat(body["created_at"]) == rec.created_at


async def test_list_leaves_payloads_out_unless_asked(
    client: httpx.AsyncClient, user: factories.Account, matrix: dict[str, PredictionRecord]
) -> None:
    rec = matrix["other_on_mine"]
    params = {"model_id": str(rec.model_id), "status": "error"}

    summary = await client.get(PREDICTIONS, params=params, headers=user.headers)
    full = await client.get(
        PREDICTIONS, params={**params, "include": "payloads"}, headers=user.headers
    )
    one = await client.get(f"{PREDICTIONS}/{rec.id}", headers=user.headers)

    assert summary.status_code == full.status_code == one.status_code == 200
    [item], [full_item] = summary.json()["items"], full.json()["items"]
    assert (item["inputs"], item["outputs"]) == (None, None)
    assert (full_item["inputs"], full_item["outputs"]) == (rec.inputs, rec.outputs)
    assert full_item == one.json()
    assert {k: v for k, v in item.items() if k not in {"inputs", "outputs"}} == {
        k: v for k, v in full_item.items() if k not in {"inputs", "outputs"}
    }


async def test_list_cuts_long_errors_unless_payloads_are_asked(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    model, [version] = await make_model(db, user.id)
    error = "unknown " + "\u00e9" * 3000  # within the log's budget: stored whole
    rec = record_on(model, version, user.id, status="error", error=error)
    await log_records(app, [rec])

    summary = await client.get(PREDICTIONS, headers=user.headers)
    full = await client.get(PREDICTIONS, params={"include": "payloads"}, headers=user.headers)
    one = await client.get(f"{PREDICTIONS}/{rec.id}", headers=user.headers)

    cut = error[:LIST_ERROR_MAX_CHARS] + LIST_ERROR_CUT
    assert summary.json()["items"][0]["error"] == cut
    assert full.json()["items"][0]["error"] == one.json()["error"] == error


async def test_get_of_an_invisible_prediction_is_404(
    client: httpx.AsyncClient,
    user: factories.Account,
    third_user: factories.Account,
    matrix: dict[str, PredictionRecord],
) -> None:
    others = await client.get(f"{PREDICTIONS}/{matrix['other_on_theirs'].id}", headers=user.headers)
    third = await client.get(f"{PREDICTIONS}/{matrix['me_on_mine'].id}", headers=third_user.headers)
    missing = await client.get(f"{PREDICTIONS}/{uuid.uuid4()}", headers=user.headers)

    assert (others.status_code, third.status_code, missing.status_code) == (404, 404, 404)
    assert others.json()["detail"] == f"prediction '{matrix['other_on_theirs'].id}' not found"


async def test_list_requires_authentication(client: httpx.AsyncClient) -> None:
    response = await client.get(PREDICTIONS)

    assert response.status_code == 401


async def test_list_filters_by_model_status_and_time(
    client: httpx.AsyncClient,
    other_user: factories.Account,
    matrix: dict[str, PredictionRecord],
) -> None:
    h = other_user.headers
    mine_model = matrix["me_on_mine"].model_id
    start = matrix["me_on_mine"].created_at

    by_model = await client.get(PREDICTIONS, params={"model_id": str(mine_model)}, headers=h)
    errors = await client.get(PREDICTIONS, params={"status": "error"}, headers=h)
    window = await client.get(
        PREDICTIONS,
        params={
            "since": (start + timedelta(minutes=2)).isoformat(),
            "until": (start + timedelta(minutes=4)).isoformat(),
        },
        headers=h,
    )

    assert ids(by_model) == id_of(matrix, "other_on_mine")
    assert ids(errors) == id_of(matrix, "other_on_mine")
    assert ids(window) == id_of(matrix, "other_on_theirs", "me_on_theirs")


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2026-01-01T00:00:00"},
        {"until": "2026-01-01T00:00:00"},
        {"status": "pending"},
        {"model_id": "iris"},
        {"limit": "0"},
        {"include": "everything"},
    ],
)
async def test_list_rejects_bad_filters(
    client: httpx.AsyncClient, user: factories.Account, params: dict[str, str]
) -> None:
    response = await client.get(PREDICTIONS, params=params, headers=user.headers)

    assert response.status_code == 422, response.text


async def test_list_pages_newest_first_with_ties_broken_by_id(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    model, [version] = await make_model(db, user.id)
    at = utcnow()
    records = [record_on(model, version, user.id, created_at=at) for _ in range(3)]
    records += [
        record_on(model, version, user.id, created_at=at - timedelta(seconds=i)) for i in (1, 2)
    ]
    await log_records(app, records)
    expected = [str(r.id) for r in sorted(records, key=lambda r: (r.created_at, r.id.hex))][::-1]

    pages = [
        await client.get(PREDICTIONS, params={"limit": 2, "offset": o}, headers=user.headers)
        for o in (0, 2, 4)
    ]

    assert [i for page in pages for i in ids(page)] == expected
    assert [page.json()["total"] for page in pages] == [5, 5, 5]


async def test_model_analytics_per_version_match_python(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    user: factories.Account,
    other_user: factories.Account,
) -> None:
    model, [v1, v2] = await make_model(db, user.id, name="iris", versions=2)
    foreign, [foreign_version] = await make_model(db, other_user.id)
    times = [3.5, 0.25, 12.0, 1.0, 7.75, 0.5, 2.0, 9.0, 4.25, 0.75, 30.0, 5.5, 6.0, 1.5, 8.0]
    t0 = utcnow() - timedelta(hours=2)
    v1_records = [
        record_on(
            model,
            v1,
            other_user.id if i % 2 else user.id,  # calls by anyone on my model count
            created_at=t0 + timedelta(seconds=i),
            inference_time_ms=ms,
        )
        for i, ms in enumerate(times)
    ]
    # Failures (even one with a time) and a success without a time do not count toward times.
    v1_records += [
        record_on(model, v1, user.id, created_at=t0, status="error", inference_time_ms=None),
        record_on(model, v1, user.id, created_at=t0, status="error", inference_time_ms=99.0),
        record_on(model, v1, user.id, created_at=t0, inference_time_ms=None),
    ]
    last = t0 + timedelta(minutes=30)
    v2_records = [record_on(model, v2, user.id, created_at=last, inference_time_ms=2.5)]
    mine_elsewhere = record_on(foreign, foreign_version, user.id, inference_time_ms=1.0)
    await log_records(app, [*v1_records, *v2_records, mine_elsewhere])

    response = await client.get(MODEL_ANALYTICS, headers=user.headers)

    assert response.status_code == 200, response.text
    [second, first] = response.json()
    assert (first["model_id"], first["model_name"], first["version"]) == (str(model.id), "iris", 1)
    assert (first["total_predictions"], first["failed_predictions"]) == (18, 2)
    assert first["avg_inference_time_ms"] == pytest.approx(sum(times) / len(times))
    for p in (50, 95, 99):
        assert_estimates(first[f"p{p}_inference_time_ms"], nearest_rank(times, p / 100))
    assert datetime.fromisoformat(first["last_prediction_at"]) == t0 + timedelta(seconds=14)
    assert second == {
        "model_id": str(model.id),
        "model_name": "iris",
        "version": 2,
        "total_predictions": 1,
        "failed_predictions": 0,
        "avg_inference_time_ms": 2.5,
        "p50_inference_time_ms": 2.5,
        "p95_inference_time_ms": 2.5,
        "p99_inference_time_ms": 2.5,
        "last_prediction_at": second["last_prediction_at"],
    }
    assert datetime.fromisoformat(second["last_prediction_at"]) == last


@pytest.mark.parametrize("n", [1, 2, 19, 20, 21, 100, 1000])
async def test_model_analytics_percentiles_are_nearest_rank_within_the_stated_error(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession, user: factories.Account, n: int
) -> None:
    model, [version] = await make_model(db, user.id)
    rng = np.random.default_rng(n)
    # Log-uniform over 0.02 ms .. 5 s, spread over a few minutes and hours.
    times = [float(ms) for ms in np.exp(rng.uniform(math.log(0.02), math.log(5000), n))]
    t0 = utcnow() - timedelta(hours=3)
    await log_records(
        app,
        [
            record_on(
                model,
                version,
                user.id,
                created_at=t0 + timedelta(seconds=i * 7),
                inference_time_ms=ms,
            )
            for i, ms in enumerate(times)
        ],
    )

    response = await client.get(MODEL_ANALYTICS, headers=user.headers)

    [row] = response.json()
    for p in (50, 95, 99):
        assert_estimates(row[f"p{p}_inference_time_ms"], nearest_rank(times, p / 100))
    assert row["avg_inference_time_ms"] == pytest.approx(sum(times) / n)


@pytest.mark.parametrize("ms", [0.001, 0.01, 0.0119, 1.0, 3.3, 41_000.0, 90_000.0])
def test_percentile_of_one_time_is_that_time(ms: float) -> None:
    counts = [0] * ROLLUP_BUCKETS
    counts[rollups.bucket_of(ms)] = 1

    assert rollups.percentile(counts, (95, 100), ms, ms) == ms


def test_bucket_middles_are_within_the_stated_error_of_their_edges() -> None:
    for index in range(1, ROLLUP_BUCKETS - 1):
        low = rollups.LOWEST_EDGE_MS * 2 ** ((index - 1) / rollups.BUCKETS_PER_DOUBLING)
        high = rollups.LOWEST_EDGE_MS * 2 ** (index / rollups.BUCKETS_PER_DOUBLING)
        middle = rollups.bucket_middle(index)
        assert rollups.bucket_of(low * 1.0000001) == index
        assert rollups.bucket_of(high * 0.9999999) == index
        assert middle / low <= 1 + rollups.PERCENTILE_RELATIVE_ERROR + 1e-12
        assert high / middle <= 1 + rollups.PERCENTILE_RELATIVE_ERROR + 1e-12


async def test_model_analytics_filters_by_model_and_time(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    one, [one_version] = await make_model(db, user.id)
    two, [two_version] = await make_model(db, user.id)
    t0 = utcnow() - timedelta(hours=1)
    await log_records(
        app,
        [
            record_on(one, one_version, user.id, created_at=t0),
            record_on(one, one_version, user.id, created_at=t0 + timedelta(minutes=10)),
            record_on(two, two_version, user.id, created_at=t0),
        ],
    )

    by_model = await client.get(
        MODEL_ANALYTICS, params={"model_id": str(one.id)}, headers=user.headers
    )
    by_time = await client.get(
        MODEL_ANALYTICS,
        params={"since": (t0 + timedelta(minutes=5)).isoformat()},
        headers=user.headers,
    )

    assert [(r["model_id"], r["total_predictions"]) for r in by_model.json()] == [(str(one.id), 2)]
    assert [(r["model_id"], r["total_predictions"]) for r in by_time.json()] == [(str(one.id), 1)]


async def test_analytics_of_a_model_the_caller_does_not_own_is_404(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    user: factories.Account,
    other_user: factories.Account,
) -> None:
    foreign, [version] = await make_model(db, other_user.id)
    await log_records(app, [record_on(foreign, version, user.id)])
    params = {"model_id": str(foreign.id)}

    models = await client.get(MODEL_ANALYTICS, params=params, headers=user.headers)
    usage = await client.get(USAGE, params=params, headers=user.headers)
    unfiltered = await client.get(MODEL_ANALYTICS, headers=user.headers)

    assert (models.status_code, usage.status_code) == (404, 404)
    assert unfiltered.json() == []  # calling a model is not owning it


async def test_usage_has_one_row_per_day_including_empty_days(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    user: factories.Account,
    other_user: factories.Account,
) -> None:
    model, [version] = await make_model(db, user.id)
    today = utcnow().date()
    noon = datetime.combine(today, time(12), tzinfo=UTC)
    midnight = datetime.combine(today, time(), tzinfo=UTC)
    await log_records(
        app,
        [
            record_on(model, version, user.id, created_at=noon, inference_time_ms=2.0),
            record_on(model, version, other_user.id, created_at=noon, inference_time_ms=4.0),
            record_on(
                model, version, user.id, created_at=noon, status="error", inference_time_ms=None
            ),
            # The first and last microsecond of a UTC day belong to it.
            record_on(model, version, user.id, created_at=midnight - timedelta(days=2)),
            record_on(
                model,
                version,
                user.id,
                created_at=midnight - timedelta(days=1, microseconds=1),
                inference_time_ms=1.0,
            ),
            # Before the window.
            record_on(model, version, user.id, created_at=midnight - timedelta(days=7)),
        ],
    )

    response = await client.get(USAGE, params={"days": 7}, headers=user.headers)

    assert response.status_code == 200, response.text
    rows = response.json()
    assert [row["date"] for row in rows] == [
        (today - timedelta(days=d)).isoformat() for d in range(6, -1, -1)
    ]
    by_day = {row["date"]: row for row in rows}
    assert by_day[today.isoformat()] == {
        "date": today.isoformat(),
        "prediction_count": 3,
        "failed_count": 1,
        "avg_inference_time_ms": 3.0,
    }
    two_days_ago = by_day[(today - timedelta(days=2)).isoformat()]
    assert (two_days_ago["prediction_count"], two_days_ago["avg_inference_time_ms"]) == (2, 0.75)
    assert by_day[(today - timedelta(days=1)).isoformat()] == {
        "date": (today - timedelta(days=1)).isoformat(),
        "prediction_count": 0,
        "failed_count": 0,
        "avg_inference_time_ms": None,
    }
    assert sum(row["prediction_count"] for row in rows) == 5


async def test_usage_defaults_to_30_days(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.get(USAGE, headers=user.headers)

    assert response.status_code == 200, response.text
    assert len(response.json()) == 30
    assert {row["prediction_count"] for row in response.json()} == {0}


@pytest.mark.parametrize("days", [0, 366, -1])
async def test_usage_rejects_days_out_of_range(
    client: httpx.AsyncClient, user: factories.Account, days: int
) -> None:
    response = await client.get(USAGE, params={"days": days}, headers=user.headers)

    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("since_min", "until_min"),
    [
        (None, None),
        (17, None),
        (None, 250),
        (17, 250),
        (61, 119),
        (100, 110),
        (60, 240),
        (1430, 1450),  # across midnight, within minutes
        (1380, 2880),  # an edge hour, then a whole day
        (1000, 4000),  # edge minutes and hours around a whole day
        (1440, None),  # whole days from midnight on
        (None, 2881),  # whole days, then one minute
    ],
)
async def test_model_analytics_windows_count_exactly_what_the_raw_log_holds(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    user: factories.Account,
    since_min: int | None,
    until_min: int | None,
) -> None:
    model, [version] = await make_model(db, user.id)
    t0 = datetime.combine(utcnow().date(), time(), tzinfo=UTC) - timedelta(days=4)
    records = [
        record_on(
            model,
            version,
            user.id,
            created_at=t0 + timedelta(seconds=53 * i),
            status="error" if i % 5 == 0 else "success",
        )
        for i in range(340)  # five hours
    ]
    # ... and two more days, sparser.
    records += [
        record_on(model, version, user.id, created_at=t0 + timedelta(seconds=20_000 + 733 * i))
        for i in range(300)
    ]
    await log_records(app, records)
    params = {}
    if since_min is not None:
        params["since"] = (t0 + timedelta(minutes=since_min)).isoformat()
    if until_min is not None:
        params["until"] = (t0 + timedelta(minutes=until_min)).isoformat()
    inside = [
        r
        for r in records
        if (since_min is None or r.created_at >= t0 + timedelta(minutes=since_min))
        and (until_min is None or r.created_at < t0 + timedelta(minutes=until_min))
    ]

    response = await client.get(MODEL_ANALYTICS, params=params, headers=user.headers)

    [row] = response.json()
    assert row["total_predictions"] == len(inside)
    assert row["failed_predictions"] == sum(r.status == "error" for r in inside)
    assert datetime.fromisoformat(row["last_prediction_at"]) == inside[-1].created_at


async def test_cursor_pages_walk_every_visible_prediction_once_newest_first(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    user: factories.Account,
    other_user: factories.Account,
) -> None:
    mine, [my_version] = await make_model(db, user.id)
    theirs, [their_version] = await make_model(db, other_user.id)
    at = utcnow() - timedelta(minutes=5)
    records = [
        record_on(mine, my_version, other_user.id, created_at=at - timedelta(seconds=i // 3))
        for i in range(12)  # ties of three
    ]
    records += [
        record_on(theirs, their_version, user.id, created_at=at - timedelta(seconds=i))
        for i in range(5)
    ]
    invisible = record_on(theirs, their_version, other_user.id, created_at=at)
    await log_records(app, [*records, invisible])
    expected = [str(r.id) for r in sorted(records, key=lambda r: (r.created_at, r.id.hex))][::-1]

    seen: list[str] = []
    bodies = []
    params: dict[str, str | int] = {"limit": 4}
    while True:
        response = await client.get(PREDICTIONS, params=params, headers=user.headers)
        seen += ids(response)
        bodies.append(response.json())
        if response.json()["next"] is None:
            break
        params = {"limit": 4, "cursor": response.json()["next"]}

    assert seen == expected
    assert len(bodies) == 5  # 17 rows: four full pages and one of one
    assert {(b["total"], b["total_is_estimate"]) for b in bodies} == {(17, False)}


async def test_cursor_pages_keep_the_filters(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    model, [version] = await make_model(db, user.id)
    at = utcnow() - timedelta(minutes=5)
    records = [
        record_on(
            model,
            version,
            user.id,
            created_at=at - timedelta(seconds=i),
            status="error" if i % 2 else "success",
        )
        for i in range(9)
    ]
    await log_records(app, records)
    errors = [str(r.id) for r in records if r.status == "error"]

    first = await client.get(
        PREDICTIONS, params={"limit": 3, "status": "error"}, headers=user.headers
    )
    second = await client.get(
        PREDICTIONS,
        params={"limit": 3, "status": "error", "cursor": first.json()["next"]},
        headers=user.headers,
    )

    assert ids(first) + ids(second) == errors
    assert second.json()["next"] is None
    assert first.json()["total"] == 4


@pytest.mark.parametrize("cursor", ["", "abc", "!!!!", "A" * 40])
async def test_a_cursor_this_server_did_not_make_is_422(
    client: httpx.AsyncClient, user: factories.Account, cursor: str
) -> None:
    response = await client.get(PREDICTIONS, params={"cursor": cursor}, headers=user.headers)

    assert response.status_code == 422, response.text


async def test_total_past_the_exact_cap_is_an_estimate_marked_as_one(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    user: factories.Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(history, "TOTAL_EXACT_MAX", 5)
    model, [version] = await make_model(db, user.id)
    at = utcnow() - timedelta(hours=1)
    await log_records(
        app,
        [
            record_on(model, version, user.id, created_at=at + timedelta(seconds=i))
            for i in range(12)
        ],
    )

    small = await client.get(PREDICTIONS, params={"limit": 2}, headers=user.headers)

    assert small.json()["total_is_estimate"] is True
    assert small.json()["total"] == 12  # from the rollups: exact for whole minutes


async def test_an_admin_reads_the_analytics_of_any_model_by_id(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    user: factories.Account,
    admin: factories.Account,
) -> None:
    model, [version] = await make_model(db, user.id)
    await log_records(app, [record_on(model, version, user.id), record_on(model, version, user.id)])
    params = {"model_id": str(model.id)}

    opened = await client.get(f"/api/v1/models/{model.id}", headers=admin.headers)
    models = await client.get(MODEL_ANALYTICS, params=params, headers=admin.headers)
    usage = await client.get(USAGE, params={**params, "days": 1}, headers=admin.headers)
    unfiltered = await client.get(MODEL_ANALYTICS, headers=admin.headers)

    assert opened.status_code == 200, opened.text
    assert models.status_code == 200, models.text
    assert [(r["model_id"], r["total_predictions"]) for r in models.json()] == [(str(model.id), 2)]
    assert usage.status_code == 200, usage.text
    assert [row["prediction_count"] for row in usage.json()] == [2]
    assert unfiltered.json() == []  # without a model id: the admin's own models only

"""Traffic policies and drift through the SDK, and `modelyard drift`, against a live server on
both databases."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from modelyard_client import AsyncClient, Client
from modelyard_client.cli import make_app
from modelyard_client.errors import Conflict, NotFound, Unprocessable
from modelyard_client.types import (
    DriftReport,
    Reference,
    RouteStats,
    ShadowRoute,
    TrafficPolicy,
    TrafficRoute,
    TrafficStats,
)
from tests.jobs.helpers import IRIS_HEADER, csv_bytes
from tests.support.live import Login, live_on_each_database
from tests.support.polling import eventually
from tests.support.servers import ServerProcess

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
SCHEMA = {"features": [{"name": name, "type": "float"} for name in IRIS_HEADER]}
# The log (and so the stats and drift reports) is written in the background: a bound to wait.
LOG_SECONDS = 30.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    yield from live_on_each_database(request, tmp_path_factory)


@pytest.fixture
def client(login: Login) -> Iterator[Client]:
    with Client(login.url, api_key=login.api_key) as client:
        yield client


@pytest.fixture
def two_versions(client: Client, iris_skops: Path) -> None:
    """iris v1 in production and v2 (the same estimator) in development."""
    client.upload(iris_skops, "iris", input_schema=SCHEMA)
    client.upload(iris_skops, "iris", input_schema=SCHEMA)
    client.promote("iris", 1, "production")


def put_csv(
    client: Client, tmp_path: Path, path: str, rows: np.ndarray | list[list[object]]
) -> None:
    local = tmp_path / path.replace("/", "-")
    local.write_bytes(csv_bytes([list(r) for r in rows]))
    client.upload_file(local, path)


# --- traffic ----------------------------------------------------------------------------------


def test_a_policy_is_set_read_and_deleted(client: Client, two_versions: None) -> None:
    policy = client.set_traffic(
        "iris", [TrafficRoute("production", 90), {"target": "v2", "weight": 10}]
    )

    assert isinstance(policy, TrafficPolicy)
    assert policy.model_name == "iris"
    assert policy.routes == [TrafficRoute("production", 90, 1), TrafficRoute("v2", 10, 2)]
    assert policy.shadow is None
    assert client.get_traffic("iris") == policy

    replaced = client.set_traffic(
        "iris", [{"target": "latest", "weight": 1}], shadow=ShadowRoute("production", 0.5)
    )
    assert replaced.routes == [TrafficRoute("latest", 1, 2)]
    assert replaced.shadow == ShadowRoute("production", 0.5, 1)
    assert client.set_traffic("iris", [TrafficRoute("v1", 1)]).shadow is None  # a PUT replaces

    client.delete_traffic("iris")
    with pytest.raises(NotFound, match="has no traffic policy"):
        client.get_traffic("iris")
    with pytest.raises(NotFound):
        client.delete_traffic("iris")


def test_refused_policies_raise_the_clients_errors(client: Client, two_versions: None) -> None:
    with pytest.raises(Conflict) as unresolved:
        client.set_traffic("iris", [TrafficRoute("challenger", 1)])
    with pytest.raises(Unprocessable):
        client.set_traffic("iris", [TrafficRoute("production", 0)])
    with pytest.raises(Unprocessable):
        client.set_traffic(
            "iris", [TrafficRoute("v1", 1)], shadow={"target": "v1", "sample_rate": 1}
        )
    with pytest.raises(Unprocessable):
        client.set_traffic("iris", [])
    with pytest.raises(NotFound):
        client.set_traffic("nope", [TrafficRoute("production", 1)])

    assert "'challenger' does not resolve" in (unresolved.value.detail or "")
    with pytest.raises(NotFound):
        client.get_traffic("iris")


def test_stats_compare_the_routes_and_the_shadow(client: Client, two_versions: None) -> None:
    client.set_traffic("iris", [TrafficRoute("production", 1)], shadow=ShadowRoute("v2", 1.0))
    served = [client.predict("iris", ROWS).version for _ in range(3)]

    def compared() -> TrafficStats:
        # Primary and shadow rows reach the log separately: wait for both.
        stats = client.traffic_stats("iris")
        assert [(v.version, v.requests) for v in stats.versions] == [(1, 3)]
        assert [(s.version, s.requests) for s in stats.shadows] == [(2, 3)]
        return stats

    stats = eventually(compared, seconds=LOG_SECONDS)

    assert served == [1, 1, 1]
    assert [(v.failures, v.targets) for v in stats.versions] == [(0, ["production"])]
    assert isinstance(stats.versions[0], RouteStats)
    (shadow,) = stats.shadows
    assert (shadow.failures, shadow.label_rows, shadow.label_agreement) == (0, 6, 1.0)
    later = datetime.now(UTC) + timedelta(hours=1)
    empty = client.traffic_stats("iris", since=later, until=later + timedelta(hours=1))
    assert (empty.versions, empty.shadows) == ([], [])
    assert empty.since == later


# --- drift ------------------------------------------------------------------------------------


def test_a_reference_is_set_read_and_deleted(
    client: Client, two_versions: None, tmp_path: Path
) -> None:
    train = np.round(np.random.default_rng(5).normal(5.0, 1.0, (60, 4)), 3)
    put_csv(client, tmp_path, "iris/train.csv", train)

    reference = client.set_reference("iris", 1, "iris/train.csv")

    assert isinstance(reference, Reference)
    assert (reference.version, reference.source, reference.source_path) == (
        1,
        "file",
        "iris/train.csv",
    )
    assert reference.row_count == 60
    assert [(f.name, f.kind, f.count) for f in reference.features] == [
        (name, "numeric", 60) for name in IRIS_HEADER
    ]
    assert reference.features[0].mean == pytest.approx(train[:, 0].mean())
    assert client.get_reference("iris", 1) == reference

    client.delete_reference("iris", 1)
    with pytest.raises(NotFound):
        client.get_reference("iris", 1)


def test_refused_references_raise_the_clients_errors(
    client: Client, two_versions: None, tmp_path: Path
) -> None:
    rows: list[list[object]] = [[5.0, 3.0, 1.5, 0.2] for _ in range(60)]
    rows[7][1] = "abc"
    put_csv(client, tmp_path, "bad.csv", rows)

    with pytest.raises(NotFound):
        client.set_reference("iris", 1, "nowhere.csv")
    with pytest.raises(Unprocessable) as unreadable:
        client.set_reference("iris", 1, "bad.csv")
    with pytest.raises(NotFound):
        client.get_reference("iris", 9)

    assert unreadable.value.status == 422
    with pytest.raises(NotFound):
        client.get_reference("iris", 1)


def serve_shifted_inputs(client: Client, tmp_path: Path) -> DriftReport:
    """Give v1 a reference of 200 rows around 5, serve it 60 rows around 9, and return the
    drift report once the log has them."""
    rng = np.random.default_rng(11)
    put_csv(client, tmp_path, "train.csv", np.round(rng.normal(5.0, 1.0, (200, 4)), 3))
    client.set_reference("iris", 1, "train.csv")
    client.predict("iris", np.round(rng.normal(9.0, 1.0, (60, 4)), 3).tolist())

    def logged() -> DriftReport:
        report = client.drift("iris")
        assert report.sample.rows == 60
        return report

    return eventually(logged, seconds=LOG_SECONDS)


def test_drift_compares_the_served_inputs_with_the_reference(
    client: Client, two_versions: None, tmp_path: Path
) -> None:
    client.set_alias("iris", "champion", 1)

    report = serve_shifted_inputs(client, tmp_path)

    assert isinstance(report, DriftReport)
    assert (report.version, report.status, report.drifted) == (1, "ok", True)
    assert (report.reference.source, report.reference.source_path) == ("file", "train.csv")
    assert report.thresholds.min_rows == 50
    assert [f.name for f in report.features] == IRIS_HEADER
    for feature in report.features:
        assert (feature.drifted, feature.psi_level, feature.ks_flagged) == (
            True,
            "significant",
            True,
        )
        assert feature.rows == 60
    assert client.drift("iris", version="champion").features == report.features
    assert client.drift("iris", version=1).sample.rows == 60
    a_day_ago = datetime.now(UTC) - timedelta(days=1)
    quiet = client.drift("iris", since=a_day_ago - timedelta(hours=1), until=a_day_ago)
    assert (quiet.status, quiet.drifted, quiet.sample.rows) == ("insufficient_data", False, 0)
    assert quiet.window.until == a_day_ago

    with pytest.raises(Conflict):  # v2: no reference, and too few served rows to make one
        client.drift("iris", version=2)

    client.delete_reference("iris", 1)
    with pytest.raises(Conflict):
        client.drift("iris")


async def test_the_async_client_sets_policies_and_references_alike(
    login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    local = tmp_path / "train.csv"
    local.write_bytes(csv_bytes([[5.0 + i / 100, 3.0, 1.5, 0.2] for i in range(60)]))

    async with AsyncClient(login.url, api_key=login.api_key) as sdk:
        await sdk.upload(iris_skops, "iris", input_schema=SCHEMA)
        await sdk.upload_file(local, "train.csv")
        policy = await sdk.set_traffic("iris", [TrafficRoute("v1", 1)])
        read_policy = await sdk.get_traffic("iris")
        stats = await sdk.traffic_stats("iris")
        await sdk.delete_traffic("iris")
        reference = await sdk.set_reference("iris", 1, "train.csv")
        read_reference = await sdk.get_reference("iris", 1)
        await sdk.delete_reference("iris", 1)
        with pytest.raises(NotFound):
            await sdk.get_traffic("iris")
        with pytest.raises(NotFound):
            await sdk.get_reference("iris", 1)
        with pytest.raises(Conflict):
            await sdk.drift("iris")

    assert policy.routes == [TrafficRoute("v1", 1, 1)]
    assert read_policy == policy
    assert (stats.versions, stats.shadows) == ([], [])
    assert reference.row_count == 60
    assert read_reference == reference


def test_the_drift_command_prints_the_report(
    client: Client, login: Login, two_versions: None, tmp_path: Path
) -> None:
    serve_shifted_inputs(client, tmp_path)
    cli = make_app()
    env = {"MODELYARD_URL": login.url, "MODELYARD_API_KEY": login.api_key}

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, prog_name="modelyard")

    human = run("drift", "iris")
    as_json = run("drift", "iris", "--version", "1", "--json")
    no_reference = run("drift", "iris", "-v", "2")

    assert human.exit_code == 0, human.output
    assert re.search(r"drifted +True", human.stdout)
    assert re.search(r"reference +train\.csv \(200 rows\)", human.stdout)
    assert "features" in human.stdout  # the table's title
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert (report["version"], report["drifted"], report["sample"]["rows"]) == (1, True, 60)
    assert [f["psi_level"] for f in report["features"]] == ["significant"] * 4
    assert no_reference.exit_code == 1
    assert no_reference.stderr.startswith("error: 409 Conflict")
    assert "Traceback" not in no_reference.output


def test_the_drift_commands_set_and_delete_a_reference(
    client: Client, login: Login, two_versions: None, tmp_path: Path
) -> None:
    put_csv(client, tmp_path, "train.csv", [[5.0 + i / 100, 3.0, 1.5, 0.2] for i in range(80)])
    cli = make_app()
    env = {"MODELYARD_URL": login.url, "MODELYARD_API_KEY": login.api_key}

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, prog_name="modelyard")

    human = run("drift", "set-reference", "iris", "2", "train.csv")
    assert human.exit_code == 0, human.output
    assert "iris version 2: reference train.csv (80 rows)" in human.stderr
    assert client.get_reference("iris", 2).source_path == "train.csv"
    as_json = run("drift", "set-reference", "iris", "1", "train.csv", "--json")
    assert json.loads(as_json.stdout)["row_count"] == 80
    missing = run("drift", "set-reference", "iris", "1", "nowhere.csv")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: 404")

    # The report, by its full name and by the short form, reads the new reference.
    for args in (("drift", "show", "iris", "-v", "2"), ("drift", "iris", "--version", "2")):
        report = run(*args, "--json")
        assert report.exit_code == 0, report.output
        assert json.loads(report.stdout)["reference"]["source_path"] == "train.csv"

    deleted = run("drift", "delete-reference", "iris", "2")
    assert deleted.exit_code == 0, deleted.output
    with pytest.raises(NotFound):
        client.get_reference("iris", 2)
    assert run("drift", "iris", "-v", "2").exit_code == 1  # 409: no reference, too few rows


def test_the_traffic_commands_set_show_compare_and_delete_a_policy(
    client: Client, login: Login, two_versions: None
) -> None:
    cli = make_app()
    env = {"MODELYARD_URL": login.url, "MODELYARD_API_KEY": login.api_key}

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, prog_name="modelyard")

    set_ = run(
        "traffic", "set", "iris", "production=90", "latest=10", "--shadow", "v2@0.5", "--json"
    )
    shown = run("traffic", "show", "iris")
    client.predict("iris", ROWS)

    def logged() -> TrafficStats:
        stats = client.traffic_stats("iris")
        assert sum(v.requests for v in stats.versions) == 1
        return stats

    eventually(logged, seconds=LOG_SECONDS)
    stats = run("traffic", "stats", "iris", "--json")
    table = run("traffic", "stats", "iris")
    bad_route = run("traffic", "set", "iris", "production:90")
    bad_shadow = run("traffic", "set", "iris", "v1=1", "--shadow", "v2")
    deleted = run("traffic", "delete", "iris")
    gone = run("traffic", "show", "iris")

    assert set_.exit_code == 0, set_.output
    policy = json.loads(set_.stdout)
    assert [(r["target"], r["weight"], r["version"]) for r in policy["routes"]] == [
        ("production", 90, 1),
        ("latest", 10, 2),
    ]
    assert policy["shadow"] == {"target": "v2", "sample_rate": 0.5, "version": 2}
    assert shown.exit_code == 0, shown.output
    assert re.search(r"production +│ 90 +│ 1", shown.stdout)
    assert re.search(r"sample_rate +0\.5", shown.stdout)
    assert stats.exit_code == 0, stats.output
    assert sum(v["requests"] for v in json.loads(stats.stdout)["versions"]) == 1
    assert table.exit_code == 0, table.output
    assert "iris versions" in table.stdout
    assert (bad_route.exit_code, bad_shadow.exit_code) == (2, 2)
    assert "TARGET=WEIGHT" in bad_route.output
    assert "TARGET@RATE" in bad_shadow.output
    assert deleted.exit_code == 0, deleted.output
    assert gone.exit_code == 1
    assert gone.stderr.startswith("error: 404 Not Found")

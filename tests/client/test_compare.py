"""Runs and versions compared through the SDK and the `modelyard` commands, against a live
server: metric columns, sort and filter, finishing a run, and the side-by-side view."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
from sklearn.linear_model import LogisticRegression

from modelyard_client import AsyncClient, Client
from modelyard_client.cli import make_app
from modelyard_client.errors import NotFound, Unprocessable
from modelyard_client.types import Comparison
from tests.client.test_commands import as_key, parsed, run
from tests.client.test_sdk import ROWS
from tests.support.live import Login
from tests.support.polling import eventually

IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]] * 10)


@pytest.fixture
def client(login: Login) -> Iterator[Client]:
    with Client(login.url, api_key=login.api_key) as client:
        yield client


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return make_app()


def fitted(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=500).fit(IRIS, [0, 2, 1] * 10)


def test_log_model_puts_its_metrics_on_the_run_and_can_finish_it(client: Client) -> None:
    run_ = client.create_experiment("train", parameters={"C": 1.0})
    client.log_metrics(run_.id, {"loss": 0.5}, step=3)
    client.log_model(
        fitted(1.0), "iris", metrics={"accuracy": 0.93}, experiment=run_, finish_run=True
    )
    found = client.get_experiment(run_.id)
    assert {m.key: m.value for m in found.metrics} == {"loss": 0.5, "accuracy": 0.93}
    assert found.status == "completed"
    assert found.ended_at is not None
    # Without finish_run the run keeps running.
    other = client.create_experiment("other")
    client.log_model(fitted(0.5), "iris", metrics={"accuracy": 0.9}, experiment=other.id)
    assert client.get_experiment(other.id).status == "running"
    assert client.finish_experiment(other, "failed").status == "failed"


def test_list_experiments_sorts_and_filters_by_a_metric(client: Client) -> None:
    for name, accuracy in (("a", 0.8), ("b", 0.95), ("c", 0.9)):
        created = client.create_experiment(name)
        client.log_metrics(created.id, {"accuracy": accuracy})
    page = client.list_experiments(sort="metrics.accuracy", order="desc")
    assert [e.name for e in page.items] == ["b", "c", "a"]
    assert page.items[0].latest_metrics == {"accuracy": 0.95}
    kept = client.list_experiments(filters=["metrics.accuracy>=0.85"], sort="name", order="asc")
    assert [e.name for e in kept.items] == ["b", "c"]
    with pytest.raises(Unprocessable):
        client.list_experiments(sort="owner_id")


def test_compare_runs_and_versions(client: Client) -> None:
    first = client.create_experiment("first", parameters={"C": 1.0})
    second = client.create_experiment("second", parameters={"C": 0.5})
    client.log_metrics(first.id, {"loss": 0.4}, step=1)
    client.log_metrics(second.id, {"loss": 0.3}, step=1)
    runs = client.compare_runs(first, second.id)
    assert isinstance(runs, Comparison)
    assert [i.label for i in runs.items] == ["first", "second"]
    assert [(r.key, r.values, r.differs) for r in runs.params] == [("C", [1.0, 0.5], True)]
    assert runs.histories["loss"] == [[[1, 0.4]], [[1, 0.3]]]

    v1 = client.log_model(fitted(1.0), "iris", metrics={"accuracy": 0.9}, params={"C": 1.0})
    client.log_model(fitted(0.5), "iris", metrics={"accuracy": 0.9}, params={"C": 0.5})
    client.predict("iris", ROWS, version=1)

    def served() -> Comparison:
        found = client.compare_versions(v1, "iris:2", days=1)
        assert found.serving is not None
        assert [s.requests for s in found.serving] == [1, 0]
        return found

    versions = eventually(served)
    assert [i.label for i in versions.items] == ["iris v1", "iris v2"]
    assert [(r.key, r.differs) for r in versions.metrics] == [("accuracy", False)]
    assert [(r.key, r.differs) for r in versions.params] == [("C", True)]
    with pytest.raises(Unprocessable):
        client.compare_runs(first)
    with pytest.raises(NotFound):
        client.compare_versions("iris:1", "iris:9")


async def test_the_async_client_compares_too(login: Login) -> None:
    async with AsyncClient(login.url, api_key=login.api_key) as client:
        a = await client.create_experiment("a", parameters={"depth": 3})
        b = await client.create_experiment("b", parameters={"depth": 3})
        await client.finish_experiment(b)
        found = await client.compare_runs(a, b)
    assert [r.differs for r in found.params] == [False]
    assert [i.status for i in found.items] == ["running", "completed"]


def test_commands_compare_and_finish(app: typer.Typer, login: Login, iris_skops: Path) -> None:
    env = as_key(login)
    ids = []
    for name, loss in (("r1", "0.4"), ("r2", "0.2")):
        created = parsed(
            run(app, "experiments", "create", name, "-p", f"lr={loss}", "--json", env=env)
        )
        run(app, "experiments", "log", created["id"], "-m", f"loss={loss}", env=env)
        ids.append(created["id"])
    listed = parsed(
        run(
            app,
            "experiments",
            "list",
            "--sort",
            "metrics.loss",
            "--order",
            "asc",
            "--json",
            env=env,
        )
    )
    assert [e["name"] for e in listed["items"]] == ["r2", "r1"]
    filtered = parsed(run(app, "experiments", "list", "-f", "metrics.loss>0.3", "--json", env=env))
    assert [e["name"] for e in filtered["items"]] == ["r1"]
    table = run(app, "experiments", "list", env=env)
    assert table.exit_code == 0, table.output
    assert "loss" in table.stdout

    finished = parsed(run(app, "experiments", "finish", ids[0], "--json", env=env))
    assert finished["status"] == "completed"
    assert finished["ended_at"] is not None

    compared = parsed(run(app, "compare", "runs", *ids, "--json", env=env))
    assert compared["kind"] == "runs"
    assert compared["metrics"] == [{"key": "loss", "values": [0.4, 0.2], "differs": True}]
    shown = run(app, "compare", "runs", *ids, env=env)
    assert shown.exit_code == 0, shown.output
    assert "r1" in shown.stdout
    assert "* " in shown.stdout
    assert "metric loss" in shown.stdout

    for _ in range(2):
        pushed = run(app, "push", str(iris_skops), "--name", "iris", "--json", env=env)
        assert pushed.exit_code == 0, pushed.output
    versions = parsed(run(app, "compare", "versions", "iris:1", "iris:2", "--json", env=env))
    assert [i["label"] for i in versions["items"]] == ["iris v1", "iris v2"]
    assert [s["requests"] for s in versions["serving"]] == [0, 0]
    shown = run(app, "compare", "versions", "iris:1", "iris:2", env=env)
    assert shown.exit_code == 0, shown.output
    assert "serving requests" in shown.stdout
    refused = run(app, "compare", "runs", ids[0], env=env)
    assert refused.exit_code == 1
    assert "compare 2 to 10" in refused.output

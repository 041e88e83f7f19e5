"""Batch jobs through the SDK (both clients) and `modelyard jobs` against a live server, on
both databases."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner, Result

from modelyard_client import AsyncClient, Client
from modelyard_client.cli import make_app
from modelyard_client.errors import Conflict, NotFound, Unprocessable, WaitTimedOut
from modelyard_client.types import BatchJob, Page
from tests.jobs.helpers import csv_bytes, iris_rows, read_csv
from tests.support.live import Login, live_on_each_database
from tests.support.polling import eventually
from tests.support.servers import ServerProcess

# A wait that reaches its bound has failed; none asserts a duration.
WAIT_SECONDS = 60.0
POLL_SECONDS = 0.05


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
def iris(client: Client, iris_skops: Path) -> None:
    client.upload(iris_skops, "iris")


def put_rows(client: Client, tmp_path: Path, path: str, rows: list[list[Any]]) -> None:
    local = tmp_path / f"{uuid.uuid4().hex}.csv"
    local.write_bytes(csv_bytes(rows))
    client.upload_file(local, path)


def expected_lines(client: Client, rows: list[list[float]]) -> list[list[str]]:
    """The output lines of a job on `rows`: direct predictions of the same rows, as CSV cells."""
    answer = client.predict("iris", rows)
    assert answer.probabilities is not None
    return [
        [str(i), str(label), *(str(p) for p in proba)]
        for i, (label, proba) in enumerate(
            zip(answer.predictions, answer.probabilities, strict=True)
        )
    ]


def test_a_job_scores_a_file_into_the_output_path(
    client: Client, iris: None, tmp_path: Path
) -> None:
    rows = iris_rows(30)
    put_rows(client, tmp_path, "data/rows.csv", rows)
    seen: list[tuple[int, int]] = []

    created = client.create_batch_job("iris", "data/rows.csv", "results/scored.csv")
    done = client.wait_for_batch_job(
        created.id,
        timeout=WAIT_SECONDS,
        poll=POLL_SECONDS,
        progress=lambda rows_done, total: seen.append((rows_done, total)),
    )
    output = client.download_file("results/scored.csv", tmp_path / "scored.csv")

    assert isinstance(created, BatchJob)
    assert (created.status, created.rows_done, created.version) == ("queued", 0, 1)
    assert (created.input_path, created.output_path, created.format) == (
        "data/rows.csv",
        "results/scored.csv",
        "csv",
    )
    assert created.links["output"] == "/api/v1/files/download/results/scored.csv"
    assert (done.id, done.status, done.error) == (created.id, "succeeded", None)
    assert done.is_finished
    assert (done.rows_done, done.rows_total) == (30, 30)
    assert done.finished_at is not None
    assert seen[-1] == (30, 30)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert read_csv(output.read_bytes())[1:] == expected_lines(client, rows)


def test_jobs_are_listed_newest_first_and_by_status(
    client: Client, iris: None, tmp_path: Path
) -> None:
    put_rows(client, tmp_path, "in.csv", iris_rows(3))
    first = client.create_batch_job("iris", "in.csv", "a.csv")
    client.wait_for_batch_job(first.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS)
    second = client.create_batch_job("iris", "in.csv", "b.csv")
    client.wait_for_batch_job(second.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS)

    page = client.list_batch_jobs()

    assert isinstance(page, Page)
    assert [j.id for j in page.items] == [second.id, first.id]
    assert page.total == 2
    assert client.list_batch_jobs(status="succeeded", limit=1).items[0].id == second.id
    assert client.list_batch_jobs(status="failed").total == 0
    assert client.get_batch_job(first.id).output_path == "a.csv"


def test_a_job_takes_a_version_by_alias_and_a_parquet_file(
    client: Client, iris_skops: Path, tmp_path: Path
) -> None:
    client.upload(iris_skops, "iris")
    client.upload(iris_skops, "iris")
    client.set_alias("iris", "champion", 1)
    rows = iris_rows(9)
    local = tmp_path / "rows.parquet"
    pd.DataFrame(rows, columns=["a", "b", "c", "d"]).to_parquet(local)
    client.upload_file(local, "rows.parquet")

    created = client.create_batch_job(
        "iris", "rows.parquet", "scored.csv", version="champion", format="parquet"
    )
    by_number = client.create_batch_job(
        "iris", "rows.parquet", "by-number.csv", version=2, format="parquet"
    )
    done = client.wait_for_batch_job(created.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS)

    assert (created.version, created.format) == (1, "parquet")
    assert by_number.version == 2
    assert (done.status, done.rows_total) == ("succeeded", 9)
    output = client.download_file("scored.csv", tmp_path / "scored.csv")
    assert read_csv(output.read_bytes())[1:] == expected_lines(client, rows)
    finished = client.wait_for_batch_job(by_number.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS)
    assert (finished.version, finished.status) == (2, "succeeded")


def test_a_value_that_is_not_a_number_fails_the_job_and_writes_nothing(
    client: Client, iris: None, tmp_path: Path
) -> None:
    rows: list[list[object]] = [list(r) for r in iris_rows(5)]
    rows[1][2] = "abc"
    put_rows(client, tmp_path, "in.csv", rows)

    created = client.create_batch_job("iris", "in.csv", "out.csv")
    done = client.wait_for_batch_job(created.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS)

    assert done.status == "failed"
    assert done.error == "row 2 (line 3), column 3: not a number"  # never the value
    with pytest.raises(NotFound):
        client.download_file("out.csv", tmp_path / "out.csv")


def test_refused_jobs_raise_the_clients_errors(client: Client, iris: None, tmp_path: Path) -> None:
    put_rows(client, tmp_path, "in.csv", iris_rows(3))

    with pytest.raises(NotFound) as missing_file:
        client.create_batch_job("iris", "nowhere.csv", "out.csv")
    with pytest.raises(NotFound):
        client.create_batch_job("nope", "in.csv", "out.csv")
    with pytest.raises(NotFound):
        client.create_batch_job("iris", "in.csv", "out.csv", version="nobody")
    with pytest.raises(Unprocessable) as same_path:
        client.create_batch_job("iris", "in.csv", "in.csv")
    with pytest.raises(Unprocessable):
        client.create_batch_job("iris", "in.csv", "out.csv", format="xlsx")
    with pytest.raises(NotFound):
        client.get_batch_job(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        client.cancel_batch_job(str(uuid.uuid4()))

    assert missing_file.value.status == 404
    assert "nowhere.csv" in (missing_file.value.detail or "")
    assert "output_path must differ from input_path" in same_path.value.message
    assert client.list_batch_jobs().total == 0


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_chunk(
    client: Client, iris: None, tmp_path: Path
) -> None:
    n = 7 * 3000  # 3,000 chunks: still running when the test cancels it
    put_rows(client, tmp_path, "big.csv", iris_rows(n))
    put_rows(client, tmp_path, "small.csv", iris_rows(3))
    running = client.create_batch_job("iris", "big.csv", "big-out.csv")

    def started() -> None:
        assert client.get_batch_job(running.id).rows_done > 0

    eventually(started, seconds=WAIT_SECONDS)
    # The server runs one job at a time: this one waits behind the running one.
    queued = client.create_batch_job("iris", "small.csv", "small-out.csv")
    with pytest.raises(WaitTimedOut) as timed_out:
        client.wait_for_batch_job(queued.id, timeout=0.2, poll=POLL_SECONDS)
    cancelled_queued = client.cancel_batch_job(queued.id)
    cancelling = client.cancel_batch_job(running.id)
    stopped = client.wait_for_batch_job(running.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS)

    assert timed_out.value.job.id == queued.id
    assert timed_out.value.job.status == "queued"
    assert f"batch job {queued.id} has not finished after 0.2 s: it is queued" in str(
        timed_out.value
    )
    assert cancelled_queued.status == "cancelled"
    assert cancelling.cancel_requested is True
    assert stopped.status == "cancelled"
    assert 0 < stopped.rows_done < n
    with pytest.raises(NotFound):
        client.download_file("big-out.csv", tmp_path / "big-out.csv")
    with pytest.raises(Conflict):  # a job that has finished cannot be cancelled
        client.cancel_batch_job(
            client.wait_for_batch_job(
                client.create_batch_job("iris", "small.csv", "again.csv").id,
                timeout=WAIT_SECONDS,
                poll=POLL_SECONDS,
            ).id
        )


def test_a_wait_needs_a_positive_poll_interval(client: Client) -> None:
    with pytest.raises(ValueError, match="poll"):
        client.wait_for_batch_job(str(uuid.uuid4()), poll=0)
    with pytest.raises(ValueError, match="timeout"):
        client.wait_for_batch_job(str(uuid.uuid4()), timeout=-1)


async def test_the_async_client_runs_and_waits_for_jobs_alike(
    login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    rows = iris_rows(10)
    local = tmp_path / "rows.csv"
    local.write_bytes(csv_bytes(rows))
    seen: list[tuple[int, int]] = []

    async with AsyncClient(login.url, api_key=login.api_key) as sdk:
        await sdk.upload(iris_skops, "iris")
        await sdk.upload_file(local, "rows.csv")
        created = await sdk.create_batch_job("iris", "rows.csv", "out.csv", version=1)
        done = await sdk.wait_for_batch_job(
            created.id,
            timeout=WAIT_SECONDS,
            poll=POLL_SECONDS,
            progress=lambda rows_done, total: seen.append((rows_done, total)),
        )
        listed = await sdk.list_batch_jobs(status="succeeded")
        again = await sdk.get_batch_job(created.id)
        with pytest.raises(Conflict):
            await sdk.cancel_batch_job(created.id)
        with pytest.raises(NotFound):
            await sdk.create_batch_job("iris", "nowhere.csv", "out.csv")

    assert (done.status, done.rows_done, done.rows_total) == ("succeeded", 10, 10)
    assert seen[-1] == (10, 10)
    assert [j.id for j in listed.items] == [created.id]
    assert (again.id, again.status) == (done.id, "succeeded")


# --- the `modelyard jobs` commands ------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    return make_app()


def run(cli: typer.Typer, login: Login, *args: str) -> Result:
    env = {"MODELYARD_URL": login.url, "MODELYARD_API_KEY": login.api_key}
    return CliRunner().invoke(cli, list(args), env=env, prog_name="modelyard")


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_jobs_create_wait_shows_progress_and_the_final_state(
    cli: typer.Typer, login: Login, client: Client, iris: None, tmp_path: Path
) -> None:
    put_rows(client, tmp_path, "in.csv", iris_rows(30))

    human = run(cli, login, "jobs", "create", "iris", "-i", "in.csv", "-o", "out.csv", "--wait",
                "--poll", "0.05")  # fmt: skip
    as_json = run(cli, login, "jobs", "create", "iris", "--input", "in.csv", "--output",
                  "again.csv", "--version", "1", "--wait", "--poll", "0.05", "--json")  # fmt: skip

    assert human.exit_code == 0, human.output
    job_id = human.stdout.strip()
    assert re.search(r"iris .*30/30 rows", human.stderr), human.stderr  # the bar, to the end
    said = " ".join(human.stderr.split())  # rich wraps messages at the terminal's width
    assert f"job {job_id} succeeded: 30 rows scored into out.csv" in said
    assert client.get_batch_job(job_id).status == "succeeded"
    job = parsed(as_json)
    assert (job["status"], job["rows_done"], job["version"]) == ("succeeded", 30, 1)
    assert job["output_path"] == "again.csv"
    assert (
        client.download_file("again.csv", tmp_path / "again.csv")
        .read_bytes()
        .startswith(b"row,prediction")
    )


def test_jobs_create_wait_exits_1_when_the_job_fails(
    cli: typer.Typer, login: Login, client: Client, iris: None, tmp_path: Path
) -> None:
    rows: list[list[object]] = [list(r) for r in iris_rows(5)]
    rows[3][0] = "n/a"
    put_rows(client, tmp_path, "in.csv", rows)

    human = run(cli, login, "jobs", "create", "iris", "-i", "in.csv", "-o", "out.csv", "--wait",
                "--poll", "0.05", "--no-progress")  # fmt: skip
    as_json = run(cli, login, "jobs", "create", "iris", "-i", "in.csv", "-o", "out.csv", "--wait",
                  "--poll", "0.05", "--json")  # fmt: skip

    assert human.exit_code == 1
    assert re.search(
        r"^error: job \S+ failed: row 4 \(line 5\), column 1: not a number$", human.stderr, re.M
    )
    assert "rows" not in human.stderr.replace("row 4", "")  # --no-progress: no bar
    assert "Traceback" not in human.output
    assert as_json.exit_code == 1
    failed = json.loads(as_json.stdout)
    assert (failed["status"], failed["error"]) == (
        "failed",
        "row 4 (line 5), column 1: not a number",
    )


def test_jobs_create_wait_exits_1_when_the_wait_times_out(
    cli: typer.Typer, login: Login, client: Client, iris: None, tmp_path: Path
) -> None:
    put_rows(client, tmp_path, "big.csv", iris_rows(7 * 3000))

    result = run(cli, login, "jobs", "create", "iris", "-i", "big.csv", "-o", "out.csv", "--wait",
                 "--timeout", "0", "--no-progress")  # fmt: skip

    assert result.exit_code == 1
    assert "has not finished after 0 s" in result.stderr
    (job,) = client.list_batch_jobs().items
    client.cancel_batch_job(job.id)  # the job went on; it is not needed
    assert client.wait_for_batch_job(job.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS).is_finished


def test_jobs_wait_goes_back_to_a_job_and_reports_how_it_ended(
    cli: typer.Typer, login: Login, client: Client, iris: None, tmp_path: Path
) -> None:
    put_rows(client, tmp_path, "in.csv", iris_rows(12))
    bad: list[list[object]] = [list(r) for r in iris_rows(3)]
    bad[1][2] = "?"
    put_rows(client, tmp_path, "bad.csv", bad)
    good = client.create_batch_job("iris", "in.csv", "out.csv")
    failing = client.create_batch_job("iris", "bad.csv", "bad-out.csv")

    waited = parsed(run(cli, login, "jobs", "wait", good.id, "--poll", "0.05", "--json"))
    failed = run(cli, login, "jobs", "wait", failing.id, "--poll", "0.05", "--no-progress")
    unknown = run(cli, login, "jobs", "wait", str(uuid.uuid4()), "--no-progress")

    assert (waited["id"], waited["status"], waited["rows_done"]) == (good.id, "succeeded", 12)
    assert failed.exit_code == 1
    assert re.search(
        rf"^error: job {failing.id} failed: row 2 \(line 3\), column \d+: not a number$",
        failed.stderr,
        re.M,
    )
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("error: 404 Not Found")


def test_jobs_list_show_and_cancel(
    cli: typer.Typer, login: Login, client: Client, iris: None, tmp_path: Path
) -> None:
    put_rows(client, tmp_path, "in.csv", iris_rows(3))
    created = parsed(run(cli, login, "jobs", "create", "iris", "-i", "in.csv", "-o", "o.csv",
                         "--json"))  # fmt: skip
    client.wait_for_batch_job(created["id"], timeout=WAIT_SECONDS, poll=POLL_SECONDS)

    listed = parsed(run(cli, login, "jobs", "list", "--status", "succeeded", "--json"))
    shown = parsed(run(cli, login, "jobs", "show", created["id"], "--json"))
    table = run(cli, login, "jobs", "list")
    record = run(cli, login, "jobs", "show", created["id"])
    none_failed = parsed(run(cli, login, "jobs", "list", "--status", "failed", "--json"))
    finished = run(cli, login, "jobs", "cancel", created["id"])

    assert created["status"] == "queued"
    assert [j["id"] for j in listed["items"]] == [created["id"]]
    assert (shown["status"], shown["rows_total"]) == ("succeeded", 3)
    assert table.exit_code == 0, table.output
    assert "succeeded" in table.stdout
    assert record.exit_code == 0, record.output
    assert "o.csv" in record.stdout
    assert none_failed["total"] == 0
    assert finished.exit_code == 1
    assert finished.stderr.startswith("error: 409 Conflict")
    assert run(cli, login, "jobs", "show", str(uuid.uuid4())).exit_code == 1
    assert run(cli, login, "jobs", "list", "--status", "done").exit_code == 2
    bad_format = run(cli, login, "jobs", "create", "iris", "-i", "in.csv", "-o", "x.csv",
                     "--format", "xlsx")  # fmt: skip
    assert bad_format.exit_code == 2


def test_jobs_cancel_of_a_queued_job(
    cli: typer.Typer, login: Login, client: Client, iris: None, tmp_path: Path
) -> None:
    put_rows(client, tmp_path, "big.csv", iris_rows(7 * 3000))
    put_rows(client, tmp_path, "in.csv", iris_rows(3))
    running = client.create_batch_job("iris", "big.csv", "big-out.csv")

    def started() -> None:
        assert client.get_batch_job(running.id).rows_done > 0

    eventually(started, seconds=WAIT_SECONDS)
    queued = client.create_batch_job("iris", "in.csv", "out.csv")  # behind the running one

    human = run(cli, login, "jobs", "cancel", queued.id)
    stopping = parsed(run(cli, login, "jobs", "cancel", running.id, "--json"))

    assert human.exit_code == 0, human.output
    assert f"cancelled job {queued.id}" in " ".join(human.stderr.split())
    assert stopping["cancel_requested"] is True
    stopped = client.wait_for_batch_job(running.id, timeout=WAIT_SECONDS, poll=POLL_SECONDS)
    assert stopped.status == "cancelled"

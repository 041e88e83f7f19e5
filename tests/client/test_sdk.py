"""The synchronous SDK against a live server: every operation, and the refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from modelyard_client import Client
from modelyard_client.errors import (
    ApiError,
    ConfigurationError,
    ConnectionFailed,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unprocessable,
    UnsupportedFormat,
)
from modelyard_client.transfer import RetryPolicy
from modelyard_client.types import (
    Experiment,
    LoggedPrediction,
    Model,
    Page,
    Prediction,
    Version,
)
from tests.serving import legit
from tests.support.live import Login
from tests.support.polling import eventually
from tests.support.servers import free_port

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture
def client(login: Login) -> Iterator[Client]:
    with Client(login.url, api_key=login.api_key) as client:
        yield client


@pytest.fixture
def iris(client: Client, iris_skops: Path) -> Version:
    return client.upload(iris_skops, "iris", metrics={"accuracy": 0.97}, tags=["demo"])


def test_client_takes_url_and_key_from_the_environment(
    login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_URL", login.url)
    monkeypatch.setenv("MODELYARD_API_KEY", login.api_key)

    with Client() as client:
        assert client.me().email == login.email


def test_a_token_authenticates_like_a_key(login: Login) -> None:
    with Client(login.url, token=login.access_token) as client:
        assert client.me().email == login.email


def test_a_wrong_key_raises_unauthorized_with_the_problem_details(login: Login) -> None:
    with Client(login.url, api_key="myd_wrong") as client, pytest.raises(Unauthorized) as caught:
        client.list_models()

    assert caught.value.status == 401
    assert caught.value.title == "Unauthorized"
    assert caught.value.detail
    assert str(caught.value).startswith("401 Unauthorized")


def test_an_unreachable_server_raises_connection_failed() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = Client(url, api_key="k", retry=RetryPolicy(retries=1, backoff=0.01))

    with client, pytest.raises(ConnectionFailed, match="cannot reach"):
        client.me()


def test_upload_returns_the_version_with_its_metadata(client: Client, iris_skops: Path) -> None:
    version = client.upload(
        iris_skops,
        "iris",
        description="first",
        metrics={"accuracy": 0.97},
        hyperparameters={"C": 1.0},
        tags=["demo"],
        metadata={"team": "a"},
    )

    assert isinstance(version, Version)
    assert (version.model_name, version.version, version.stage) == ("iris", 1, "development")
    assert (version.framework, version.format) == ("sklearn", "skops")
    assert version.metrics == {"accuracy": 0.97}
    assert version.hyperparameters == {"C": 1.0}
    assert version.metadata == {"team": "a"}
    assert version.feature_names == ["f0", "f1", "f2", "f3"]
    assert version.created_at is not None
    assert version.created_at.tzinfo is not None


def test_models_versions_stages_and_aliases(
    client: Client, iris: Version, iris_skops: Path
) -> None:
    second = client.upload(iris_skops, "iris")

    page = client.list_models(search="iri")
    assert isinstance(page, Page)
    assert [m.name for m in page.items] == ["iris"]
    assert page.total == 1
    assert [v.version for v in client.list_versions("iris").items] == [2, 1]

    promoted = client.promote("iris", 1, "production")
    assert promoted.stage == "production"
    assert client.set_alias("iris", "champion", 2).version == 2
    model = client.get_model("iris")
    assert isinstance(model, Model)
    assert model.production_version == 1
    assert model.aliases == {"champion": 2}
    assert sorted(v.version for v in model.versions) == [1, 2]
    assert client.get_version("iris").version == 1  # what predict serves: production
    assert client.get_version("iris", alias="champion").version == second.version
    assert client.get_version("iris", stage="development").version == 2

    client.delete_alias("iris", "champion")
    assert client.get_model("iris").aliases == {}
    with pytest.raises(ConfigurationError, match="no alias"):
        client.get_version("iris", alias="champion")


def test_updates_and_soft_deletes(client: Client, iris: Version) -> None:
    assert client.update_model("iris", description="flowers", tags=["x"]).description == "flowers"
    updated = client.update_version("iris", 1, description="v1", metrics={"f1": 0.9})
    assert (updated.description, updated.metrics) == ("v1", {"f1": 0.9})

    client.delete_version("iris", 1)
    assert client.get_version("iris", 1).stage == "archived"
    client.delete_model("iris")
    assert client.list_models().total == 0
    assert client.list_models(include_archived=True).total == 1


def test_an_unknown_model_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.get_model("nope")

    assert caught.value.status == 404
    assert caught.value.detail == "model 'nope' not found"


def test_a_refused_upload_carries_the_servers_reason(client: Client, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model")

    with pytest.raises(UnsupportedFormat) as caught:
        client.upload(text, "notes")
    assert caught.value.status == 415
    assert caught.value.detail


def test_a_framework_that_contradicts_the_file_is_unprocessable(
    client: Client, iris_skops: Path
) -> None:
    with pytest.raises(Unprocessable) as caught:
        client.upload(iris_skops, "iris", framework="onnx")

    assert caught.value.status == 422
    assert "onnx" in (caught.value.detail or "")


def test_an_upload_over_the_limit_raises_payload_too_large(client: Client, tmp_path: Path) -> None:
    big = tmp_path / "big.skops"
    big.write_bytes(b"\0" * (4 * 1024 * 1024))  # the live server allows 3 MiB
    seen: list[tuple[int, int]] = []

    with pytest.raises(PayloadTooLarge) as caught:
        client.upload(big, "big", progress=lambda done, total: seen.append((done, total)))

    assert caught.value.status == 413
    assert seen
    assert seen[0][1] == 4 * 1024 * 1024


def test_upload_stores_a_drift_reference_from_a_file(
    client: Client, login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    train = tmp_path / "train.csv"
    rows = np.random.default_rng(5).normal(5.0, 1.0, (60, 4))
    train.write_text(
        ",".join(IRIS_COLUMNS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    client.upload_file(train, "iris/train.csv")
    schema = {"features": [{"name": c, "type": "float"} for c in IRIS_COLUMNS]}

    with pytest.raises(NotFound):
        client.upload(iris_skops, "iris", input_schema=schema, reference_path="iris/nowhere.csv")
    version = client.upload(
        iris_skops, "iris", input_schema=schema, reference_path="iris/train.csv"
    )
    reference = httpx.get(
        f"{login.url}/api/v1/models/iris/versions/{version.version}/reference",
        headers={"X-API-Key": login.api_key},
    )

    assert version.version == 1  # the refused upload took no number
    assert reference.status_code == 200
    assert (reference.json()["source_path"], reference.json()["row_count"]) == (
        "iris/train.csv",
        60,
    )


def test_upload_reports_progress_to_the_end(client: Client, iris_skops: Path) -> None:
    seen: list[tuple[int, int]] = []

    client.upload(iris_skops, "iris", progress=lambda done, total: seen.append((done, total)))

    size = iris_skops.stat().st_size
    assert seen[-1] == (size, size)


def test_download_and_download_url(client: Client, iris: Version, tmp_path: Path) -> None:
    path = client.download("iris", 1, dest=tmp_path)

    assert path == tmp_path / "iris-v1.skops"
    assert path.stat().st_size == iris.file_size
    assert client.download("iris", 1, dest=f"{tmp_path}/new/").parent == tmp_path / "new"
    assert client.download("iris", 1, dest=tmp_path / "a" / "m.skops").is_file()
    link = client.download_url("iris", 1, expires_in=60)
    assert link.url
    assert link.expires_at is not None


def test_predict_on_rows_records_arrays_and_dataframes(client: Client, iris: Version) -> None:
    by_rows = client.predict("iris", ROWS)
    assert isinstance(by_rows, Prediction)
    assert by_rows.predictions == [0, 2]
    assert by_rows.classes == [0, 1, 2]
    assert by_rows.probabilities is not None
    assert len(by_rows.probabilities) == 2
    assert by_rows.version == 1

    assert client.predict("iris", np.array(ROWS)).predictions == [0, 2]
    assert client.predict("iris", np.array(ROWS[0])).predictions == [0]
    frame = pd.DataFrame(ROWS, columns=["f0", "f1", "f2", "f3"])[["f3", "f1", "f0", "f2"]]
    assert client.predict("iris", frame, version=1).predictions == [0, 2]


def test_predict_refusals_carry_the_reason(client: Client, iris: Version) -> None:
    with pytest.raises(Unprocessable) as caught:
        client.predict("iris", [[1.0, 2.0]])
    assert caught.value.status == 422
    with pytest.raises(NotFound):
        client.predict("nope", ROWS)
    with pytest.raises(InvalidInput, match="finite"):
        client.predict("iris", [[float("nan"), 1.0, 1.0, 1.0]])


def test_log_model_infers_the_schema_and_predict_matches_columns_by_name(client: Client) -> None:
    x, y = legit.iris()
    frame = pd.DataFrame(x, columns=IRIS_COLUMNS)
    estimator = LogisticRegression(max_iter=300).fit(frame, y)
    experiment = client.create_experiment("sweep")

    version = client.log_model(
        estimator,
        "iris-named",
        metrics={"accuracy": 0.97},
        params={"max_iter": 300},
        tags=["named"],
        input_example=frame.head(3),
        experiment=experiment,
    )

    assert version.format == "skops"
    assert version.feature_names == IRIS_COLUMNS
    assert version.hyperparameters == {"max_iter": 300}
    assert version.experiment_id == experiment.id
    shuffled = frame.head(2)[list(reversed(IRIS_COLUMNS))]
    assert client.predict("iris-named", shuffled).predictions == list(
        estimator.predict(frame.head(2))
    )


def test_load_model_gives_back_an_estimator_that_predicts_the_same(
    client: Client, iris: Version
) -> None:
    loaded = client.load_model("iris", 1)

    assert isinstance(loaded, LogisticRegression)
    assert loaded.predict(np.array(ROWS)).tolist() == [0, 2]


def test_load_model_never_unpickles(client: Client, tmp_path: Path) -> None:
    path = legit.write_joblib(legit.iris_lr(), tmp_path / "iris.joblib")
    client.upload(path, "pickled")

    with pytest.raises(ConfigurationError, match="can run code"):
        client.load_model("pickled")


def test_experiments_and_their_metrics(client: Client, iris: Version) -> None:
    created = client.create_experiment("sweep", parameters={"C": 1.0}, tags=["iris"])
    assert isinstance(created, Experiment)

    client.log_metrics(created.id, {"loss": 0.4}, step=1)
    client.log_metrics(created.id, {"loss": 0.2, "acc": 0.9}, step=2)
    client.update_version("iris", 1, experiment_id=created.id)

    assert [m.value for m in client.get_metrics(created.id, "loss")] == [0.4, 0.2]
    found = client.get_experiment(created.id)
    # The linked version's metrics joined the run's.
    assert {m.key: m.value for m in found.metrics} == {"loss": 0.2, "acc": 0.9, "accuracy": 0.97}
    assert [(v.model_name, v.version) for v in found.model_versions] == [("iris", 1)]
    assert client.update_experiment(created.id, description="d").description == "d"
    assert client.list_experiments(tag="iris").total == 1
    client.delete_experiment(created.id)
    with pytest.raises(NotFound):
        client.get_experiment(created.id)


def test_an_experiment_object_is_taken_wherever_its_id_is(client: Client, iris: Version) -> None:
    run = client.create_experiment("run")

    client.log_metrics(run, {"loss": 0.5}, step=1)
    client.update_version("iris", 1, experiment_id=run)

    assert [m.value for m in client.get_metrics(run, "loss")] == [0.5]
    assert client.get_version("iris", 1).experiment_id == run.id
    assert client.update_experiment(run, description="d").description == "d"
    assert [v.version for v in client.get_experiment(run).model_versions] == [1]
    client.delete_experiment(run)
    with pytest.raises(NotFound):
        client.get_experiment(run.id)


def test_non_finite_numbers_raise_the_input_error_before_anything_is_sent(
    client: Client, iris_skops: Path
) -> None:
    run = client.create_experiment("run")

    with pytest.raises(InvalidInput, match="finite"):
        client.log_metrics(run, {"loss": float("nan")})
    with pytest.raises(InvalidInput, match="finite"):
        client.log_metrics(run, {"loss": float("inf")}, step=1)
    with pytest.raises(InvalidInput, match="number"):
        client.log_metrics(run, {"loss": "low"})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="finite"):
        client.upload(iris_skops, "iris", metrics={"accuracy": float("nan")})
    with pytest.raises(InvalidInput, match="JSON"):
        client.create_experiment("nan", parameters={"C": float("nan")})
    with pytest.raises(InvalidInput, match="JSON"):
        client.upload(iris_skops, "iris", hyperparameters={"C": float("inf")})
    # An input error, not a configuration error: what the caller gave is wrong, not the setup.
    assert not issubclass(InvalidInput, ConfigurationError)
    assert issubclass(InvalidInput, ValueError)

    assert client.get_metrics(run) == []
    assert client.list_models().total == 0
    assert client.list_experiments().total == 1


def test_files(client: Client, tmp_path: Path) -> None:
    source = tmp_path / "iris.csv"
    source.write_text("a,b\n1,2\n")

    stored = client.upload_file(source, "datasets/iris.csv")
    assert (stored.path, stored.size) == ("datasets/iris.csv", 8)
    assert [f.path for f in client.list_files(prefix="datasets/").items] == ["datasets/iris.csv"]
    target = client.download_file("datasets/iris.csv", tmp_path / "copy.csv")
    assert target.read_text() == "a,b\n1,2\n"
    assert client.file_url("datasets/iris.csv").url
    client.delete_file("datasets/iris.csv")
    assert client.list_files().total == 0


def test_prediction_log_and_analytics(client: Client, iris: Version) -> None:
    made = client.predict("iris", ROWS)
    with pytest.raises(ApiError):
        client.predict("iris", [[1.0]])

    logged = eventually(lambda: client.get_prediction(made.prediction_id))
    assert (logged.status, logged.version, logged.n_rows) == ("success", 1, 2)

    def both_logged() -> Page[LoggedPrediction]:
        page = client.list_predictions(model_id=iris.model_id)
        assert len(page.items) == page.total == 2  # separate reads: the writer may commit between
        return page

    eventually(both_logged)
    failed = client.list_predictions(model_id=iris.model_id, status="error")
    assert all(p.status == "error" for p in failed.items)
    stats = client.model_analytics()
    assert [(s.model_name, s.version) for s in stats] == [("iris", 1)]
    assert stats[0].total_predictions >= 2
    assert stats[0].failed_predictions >= 1
    days = client.usage(days=7)
    assert sum(d.prediction_count for d in days) >= 2
    # A naive time is local time (the server wants a zone: it would answer 422).
    assert client.list_predictions(since=datetime(2000, 1, 1)).total == 2  # noqa: DTZ001
    assert client.list_predictions(since=datetime(2999, 1, 1)).total == 0  # noqa: DTZ001


def test_api_keys_need_a_session_and_stop_working_once_revoked(login: Login) -> None:
    with Client(login.url, token=login.access_token) as session:
        created = session.create_api_key("ci")
        assert created.key
        assert created.id in [k.id for k in session.list_api_keys().items]
        with Client(login.url, api_key=created.key) as keyed:
            assert keyed.me().email == login.email
            session.revoke_api_key(created.id)
            with pytest.raises(Unauthorized):
                keyed.me()


def test_api_keys_are_made_with_the_scopes_and_models_asked_for(login: Login) -> None:
    with Client(login.url, token=login.access_token) as session:
        created = session.create_api_key("serving", scopes=["predict", "read"], models=["iris"])
        assert (created.scopes, created.models) == (["read", "predict"], ["iris"])
        [listed] = [k for k in session.list_api_keys().items if k.id == created.id]
        assert (listed.scopes, listed.models) == (["read", "predict"], ["iris"])


def test_login_with_email_and_password(login: Login) -> None:
    with Client(login.url) as client:
        tokens = client.login(login.email, login.password)
        assert tokens.access_token
        assert client.me().email == login.email


def test_version_json_round_trips_through_the_cli_encoder(client: Client, iris: Version) -> None:
    from modelyard_client.cli.output import jsonable

    data = json.loads(json.dumps(jsonable(client.get_version("iris", 1))))
    assert data["version"] == 1
    assert data["created_at"].endswith("+00:00")

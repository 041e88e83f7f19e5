"""log_model and load_model beyond scikit-learn: ONNX, XGBoost and LightGBM in their native
formats, against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelyard_client import Client
from modelyard_client.errors import InvalidInput
from tests.serving import legit
from tests.support.live import Login

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture
def client(login: Login) -> Iterator[Client]:
    with Client(login.url, api_key=login.api_key) as client:
        yield client


def test_an_onnx_model_is_logged_and_loaded_as_onnx(client: Client) -> None:
    from skl2onnx import to_onnx

    model = legit.iris_lr()
    x = legit.iris()[0]
    proto = to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}})

    version = client.log_model(proto, "iris-onnx", input_example=x[:2].astype(np.float32))

    assert (version.framework, version.format) == ("onnx", "onnx")
    assert client.predict("iris-onnx", ROWS).predictions == [0, 2]
    session = client.load_model("iris-onnx")
    (labels, _) = session.run(None, {session.get_inputs()[0].name: np.array(ROWS, np.float32)})
    assert labels.tolist() == [0, 2]


def test_an_xgboost_classifier_is_logged_as_its_booster(client: Client) -> None:
    import xgboost as xgb

    x, y = legit.iris()
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(x, y)

    version = client.log_model(model, "iris-xgb", metrics={"accuracy": 0.9}, input_example=x[:2])

    assert (version.framework, version.format) == ("xgboost", "xgboost-json")
    assert version.feature_names == ["f0", "f1", "f2", "f3"]
    assert client.predict("iris-xgb", ROWS).predictions == model.predict(np.array(ROWS)).tolist()
    assert isinstance(client.load_model("iris-xgb"), xgb.Booster)


def test_a_lightgbm_classifier_is_logged_as_text(client: Client) -> None:
    import lightgbm as lgb

    x, y = legit.iris()
    model = lgb.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1, n_jobs=1).fit(x, y)

    version = client.log_model(model, "iris-lgb")

    assert (version.framework, version.format) == ("lightgbm", "lightgbm-text")
    expected = np.asarray(model.predict(np.array(ROWS))).tolist()
    assert client.predict("iris-lgb", ROWS).predictions == expected
    assert isinstance(client.load_model("iris-lgb"), lgb.Booster)


def test_a_model_file_path_is_uploaded_as_is(client: Client, iris_skops: Path) -> None:
    version = client.log_model(iris_skops, "from-file", tags=["file"])

    assert (version.format, version.tags) == ("skops", ["file"])


def test_an_object_that_is_no_model_is_refused_before_any_upload(client: Client) -> None:
    with pytest.raises(InvalidInput, match="cannot log a dict"):
        client.log_model({"not": "a model"}, "nothing")

    assert client.list_models().total == 0

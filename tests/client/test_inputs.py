"""Prediction inputs as JSON rows, and input schemas inferred from examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard_client.artifacts import infer_input_schema
from modelyard_client.errors import InvalidInput
from modelyard_client.inputs import read_input_file, to_inputs, to_rows


def test_arrays_become_rows_of_plain_numbers() -> None:
    rows = to_rows(np.array([[1, 2], [3, 4]], dtype=np.int64))

    assert rows == [[1, 2], [3, 4]]
    assert type(rows[0][0]) is int  # type: ignore[index]
    assert to_rows(np.array([1.5, 2.5])) == [[1.5, 2.5]]
    assert to_rows([1.0, 2.0]) == [[1.0, 2.0]]
    assert to_rows((np.float32(1.5), 2)) == [[1.5, 2]]


def test_dataframes_become_records_by_column_name() -> None:
    frame = pd.DataFrame({"b": [1.0, 2.0], "a": [3, 4]})

    assert to_rows(frame) == [{"b": 1.0, "a": 3}, {"b": 2.0, "a": 4}]
    assert to_rows({"a": 1}) == [{"a": 1}]


def test_non_finite_values_are_refused_before_sending() -> None:
    with pytest.raises(InvalidInput, match="finite"):
        to_rows(pd.DataFrame({"a": [np.nan]}))
    with pytest.raises(InvalidInput, match="cannot predict on str"):
        to_rows("1,2,3")


def test_a_dict_of_tensors_is_a_network_s_inputs_by_name_and_a_dict_of_scalars_a_record() -> None:
    ids = np.array([[3, 1, 2]], dtype=np.int64)
    images = np.zeros((1, 2, 2, 2), dtype=np.float32)

    assert to_inputs({"input_ids": ids, "attention_mask": [[1, 1, 0]], "scale": 0.5}) == {
        "input_ids": [[3, 1, 2]],
        "attention_mask": [[1, 1, 0]],
        "scale": 0.5,
    }
    # One tensor by name goes alone, nested as its shape: a one-input network takes it so.
    assert to_inputs({"images": images}) == images.tolist()
    assert to_inputs(images) == images.tolist()
    assert to_inputs({"a": 1, "b": np.float64(2.5)}) == [{"a": 1, "b": 2.5}]
    assert to_inputs([[1, 2]]) == [[1, 2]]
    with pytest.raises(InvalidInput, match="finite"):
        to_inputs({"x": np.array([[[1.0, np.inf]]]), "y": [[1]]})
    with pytest.raises(InvalidInput, match="finite"):
        to_inputs([[[1.0, float("nan")]]])


def test_torch_tensors_become_nested_lists() -> None:
    torch = pytest.importorskip("torch")

    assert to_rows(torch.tensor([[1.5, 2.0]])) == [[1.5, 2.0]]
    assert to_rows(torch.tensor([1, 2])) == [[1, 2]]
    mask = torch.tensor([[True, False]])
    assert to_inputs({"ids": torch.tensor([[7, 8]]), "mask": mask}) == {
        "ids": [[7, 8]],
        "mask": [[True, False]],
    }
    assert to_inputs({"x": torch.ones(1, 2, dtype=torch.bfloat16)}) == [[1.0, 1.0]]
    with pytest.raises(InvalidInput, match="finite"):
        to_inputs({"x": torch.tensor([[float("nan")]]), "y": torch.ones(1)})


def test_the_schema_of_a_dataframe_names_and_types_its_columns() -> None:
    frame = pd.DataFrame({"x": [1.0], "n": [1], "flag": [True], "city": ["Oslo"]})

    assert infer_input_schema(frame) == {
        "features": [
            {"name": "x", "type": "float"},
            {"name": "n", "type": "int"},
            {"name": "flag", "type": "bool"},
            {"name": "city", "type": "str"},
        ]
    }


def test_unnamed_features_are_f0_f1_like_the_servers() -> None:
    assert infer_input_schema(np.zeros((3, 2))) == {
        "features": [{"name": "f0", "type": "float"}, {"name": "f1", "type": "float"}]
    }
    assert infer_input_schema([[1, 2.5]]) == {
        "features": [{"name": "f0", "type": "int"}, {"name": "f1", "type": "float"}]
    }
    assert infer_input_schema([{"a": 1.0}]) == {"features": [{"name": "a", "type": "float"}]}


def test_csv_files_are_records_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,c\n1,2.5,x\n")

    assert read_input_file(path) == [{"a": 1, "b": 2.5, "c": "x"}]


def test_json_files_take_rows_records_or_an_inputs_object(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    for text in ("[[1, 2]]", '{"inputs": [[1, 2]]}'):
        path.write_text(text)
        assert read_input_file(path) == [[1, 2]]
    path.write_text('{"inputs": {"input_ids": [[1, 2]], "attention_mask": [[1, 0]]}}')
    assert read_input_file(path) == {"input_ids": [[1, 2]], "attention_mask": [[1, 0]]}
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        read_input_file(path)

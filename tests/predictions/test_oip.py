"""The V2 codec: round trips through the real tritonclient, docs/architecture/oip.md's examples, every refusal."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from modelyard.predictions.oip import (
    DATATYPES,
    MAX_TENSORS,
    QUOTE_MAX_CHARS,
    InferRequest,
    OIPError,
    RequestedOutput,
    Tensor,
    decode_inputs,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    read_infer_request,
    select_outputs,
    server_metadata,
    to_datatype,
    to_numpy_dtype,
    wanted_binary_outputs,
)

SHAPES = [[1, 4], [3, 4], [2, 2, 2]]


def sample(datatype: str, shape: list[int], *, utf8: bool = False) -> npt.NDArray[Any]:
    """Return a deterministic array of `datatype` with edge values where the type has them."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        # JSON carries only UTF-8; binary carries any bytes.
        odd = b"\x00\x7f" if utf8 else b"\x00\xff\x10"
        words = [b"", b"a", "h\u00e9llo".encode(), odd, b"x" * 300]
        strings = np.empty(count, dtype=np.object_)
        strings[:] = [words[i % len(words)] for i in range(count)]
        return strings.reshape(shape)
    if datatype == "BOOL":
        flags: npt.NDArray[np.bool_] = np.arange(count) % 3 == 0
        return flags.reshape(shape)
    dtype = to_numpy_dtype(datatype)
    if dtype.kind == "f":
        floats = (np.linspace(-1e3, 1e3, count) / 7).astype(dtype)
        floats[0] = 0.1
        return floats.reshape(shape)
    info = np.iinfo(dtype)
    integers = np.arange(count, dtype=dtype) - (count // 2 if info.min < 0 else 0)
    integers[-1] = info.max
    integers[0] = info.min
    return integers.astype(dtype).reshape(shape)


def client_request(
    inputs: list[Any], outputs: list[Any] | None = None, request_id: str = ""
) -> tuple[bytes, int | None]:
    """Build a request body with tritonclient's own builder, as `InferenceServerClient.infer` does."""
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    return body, json_size


def client_result(body: bytes, headers: dict[str, str]) -> Any:
    """Parse a response body with tritonclient's own parser."""
    length = headers.get("Inference-Header-Content-Length")
    return triton.InferResult.from_response_body(
        body, verbose=False, header_length=None if length is None else int(length)
    )


def request_json(document: dict[str, Any]) -> InferRequest:
    return parse_infer_request(orjson.dumps(document), json_length=None)


def refused(body: bytes, json_length: int | None = None, **kwargs: Any) -> str:
    with pytest.raises(OIPError) as caught:
        parse_infer_request(body, json_length=json_length, **kwargs)
    assert caught.value.status == 400
    return caught.value.message


def refused_json(document: Any) -> str:
    return refused(orjson.dumps(document))


def one_input(**fields: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}
    tensor.update(fields)
    return {"inputs": [tensor]}


def assert_same(actual: npt.NDArray[Any], expected: npt.NDArray[Any]) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == np.object_:
        assert actual.dtype == np.object_
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)


# Round trips through tritonclient


ROUND_TRIP_TYPES = ["FP32", "FP64", "INT64", "INT32", "BOOL", "BYTES", "FP16", "UINT8", "UINT64"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", ROUND_TRIP_TYPES)
def test_parse_reads_tritonclient_request(datatype: str, shape: list[int], binary: bool) -> None:
    array = sample(datatype, shape, utf8=not binary)
    tensor = triton.InferInput("in", shape, datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = client_request([tensor])
    assert (json_size is not None) is binary

    request = parse_infer_request(body, json_length=json_size)

    (parsed,) = request.inputs
    assert (parsed.name, parsed.datatype, parsed.shape) == ("in", datatype, shape)
    assert_same(parsed.data, array)


def test_parse_reads_tritonclient_mixed_request_with_outputs() -> None:
    first = sample("FP32", [3, 4])
    second = sample("BYTES", [2, 2, 2])
    third = sample("INT64", [1, 4])
    inputs = [
        triton.InferInput("a", [3, 4], "FP32").set_data_from_numpy(first, binary_data=True),
        triton.InferInput("b", [2, 2, 2], "BYTES").set_data_from_numpy(second, binary_data=True),
        triton.InferInput("c", [1, 4], "INT64").set_data_from_numpy(third, binary_data=False),
    ]
    outputs = [
        triton.InferRequestedOutput("p", binary_data=True),
        triton.InferRequestedOutput("q", binary_data=False),
    ]
    body, json_size = client_request(inputs, outputs, request_id="req-7")

    request = parse_infer_request(body, json_length=json_size)

    assert request.id == "req-7"
    for parsed, expected in zip(request.inputs, [first, second, third], strict=True):
        assert_same(parsed.data, expected)
    assert request.outputs == [
        RequestedOutput("p", True, {"binary_data": True}),
        RequestedOutput("q", False, {"binary_data": False}),
    ]
    assert request.binary_data_output is False
    assert wanted_binary_outputs(request, ["p", "q"]) == {"p"}


def test_tritonclient_without_outputs_asks_for_all_binary() -> None:
    tensor = triton.InferInput("a", [1, 4], "FP32").set_data_from_numpy(sample("FP32", [1, 4]))
    body, json_size = client_request([tensor])

    request = parse_infer_request(body, json_length=json_size)

    assert request.binary_data_output is True
    assert select_outputs(request, ["p", "q"]) == ["p", "q"]
    assert wanted_binary_outputs(request, ["p", "q"]) == {"p", "q"}


def test_aligned_binary_input_is_a_read_only_view() -> None:
    array = sample("FP64", [3, 4])
    # The request id pads the JSON so that the tensor starts at a multiple of 8.
    for pad in range(8):
        tensor = triton.InferInput("a", [3, 4], "FP64").set_data_from_numpy(array)
        body, json_size = client_request([tensor], request_id="r" * (pad + 1))
        if json_size is not None and json_size % 8 == 0:
            break

    (parsed,) = parse_infer_request(body, json_length=json_size).inputs

    assert not parsed.data.flags.writeable
    assert parsed.data.flags.aligned


def test_unaligned_binary_input_is_copied_aligned() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "datatype": "FP64",
                    "shape": [2],
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    )
    header += b" " * (8 - len(header) % 8 + 1)  # JSON allows trailing whitespace
    body = header + np.array([1.5, -2.5]).tobytes()

    (parsed,) = parse_infer_request(body, json_length=len(header)).inputs

    assert parsed.data.flags.aligned
    assert parsed.data.tolist() == [1.5, -2.5]


def response_outputs() -> list[Tensor]:
    proba = np.array([[0.97, 0.03, 0.0], [0.0, 0.1, 0.9]])
    return [
        Tensor("predict", "INT64", [2, 1], np.array([0, 2])),
        Tensor("predict_proba", "FP64", [2, 3], proba),
        Tensor("labels", "BYTES", [2], np.array(["setosa", "virgini\u00e7a"], dtype=np.object_)),
        Tensor("f32", "FP32", [2, 2, 2], sample("FP32", [2, 2, 2])),
        Tensor("flags", "BOOL", [1, 4], sample("BOOL", [1, 4])),
        Tensor("raw", "BYTES", [3, 4], sample("BYTES", [3, 4])),
    ]


JSON_SAFE = {"predict", "predict_proba", "labels", "f32", "flags"}


@pytest.mark.parametrize(
    "binary",
    [
        set(),
        {"predict_proba"},
        {"predict", "labels", "raw"},
        {tensor.name for tensor in response_outputs()},
    ],
    ids=["json", "one-binary", "mixed", "all-binary"],
)
def test_tritonclient_reads_encoded_response(binary: set[str]) -> None:
    outputs = response_outputs()
    if "raw" not in binary:
        outputs = [tensor for tensor in outputs if tensor.name in JSON_SAFE]

    body, headers = encode_infer_response(
        model_name="iris",
        model_version="3",
        request_id="req-42",
        outputs=outputs,
        binary_outputs=binary,
    )

    result = client_result(body, headers)
    assert result.get_response()["model_name"] == "iris"
    assert result.get_response()["id"] == "req-42"
    for tensor in outputs:
        expected = np.asarray(tensor.data).reshape(tensor.shape)
        received = result.as_numpy(tensor.name)
        if tensor.datatype == "BYTES" and tensor.name not in binary:
            # tritonclient hands JSON BYTES back as the str it parsed.
            expected = np.array(
                [v.decode() if isinstance(v, bytes) else v for v in expected.ravel()],
                dtype=np.object_,
            ).reshape(tensor.shape)
        elif tensor.datatype == "BYTES":
            expected = np.array(
                [v if isinstance(v, bytes) else v.encode() for v in expected.ravel()],
                dtype=np.object_,
            ).reshape(tensor.shape)
        assert_same(received, expected)


def test_binary_response_headers_and_layout() -> None:
    values = np.array([[1, 2], [3, 4]], dtype=np.uint32)
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[Tensor("output0", "UINT32", [2, 2], values)],
        binary_outputs={"output0"},
    )

    length = int(headers["Inference-Header-Content-Length"])
    assert headers["Content-Type"] == "application/octet-stream"
    assert orjson.loads(body[:length]) == {
        "model_name": "m",
        "outputs": [
            {
                "name": "output0",
                "datatype": "UINT32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 16},
            }
        ],
    }
    assert body[length:] == struct.pack("<4I", 1, 2, 3, 4)


def test_json_response_matches_oip_example() -> None:
    proba = np.array([[0.97, 0.03, 0.0], [0.0, 0.1, 0.9]])
    body, headers = encode_infer_response(
        model_name="iris",
        model_version="3",
        request_id="req-42",
        outputs=[
            Tensor("predict", "INT64", [2, 1], np.array([0, 2]), {"content_type": "np"}),
            Tensor("predict_proba", "FP64", [2, 3], proba, {"content_type": "np"}),
        ],
        binary_outputs=set(),
        parameters={},
    )

    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "iris",
        "model_version": "3",
        "id": "req-42",
        "parameters": {},
        "outputs": [
            {
                "name": "predict",
                "shape": [2, 1],
                "datatype": "INT64",
                "parameters": {"content_type": "np"},
                "data": [0, 2],
            },
            {
                "name": "predict_proba",
                "shape": [2, 3],
                "datatype": "FP64",
                "parameters": {"content_type": "np"},
                "data": [0.97, 0.03, 0.0, 0.0, 0.1, 0.9],
            },
        ],
    }


def test_response_omits_absent_optional_fields() -> None:
    body, _ = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[Tensor("y", "FP32", [1], np.array([0.5], dtype=np.float32))],
        binary_outputs=set(),
    )

    assert (
        body
        == b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[0.5]}]}'
    )


def test_response_json_data_is_flat_row_major_even_for_fortran_arrays() -> None:
    data = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    body, _ = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[Tensor("y", "INT32", [2, 3], data)],
        binary_outputs=set(),
    )

    assert orjson.loads(body)["outputs"][0]["data"] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_response_refuses_non_finite_json_floats(value: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[Tensor("y", "FP32", [2], np.array([1.0, value], dtype=np.float32))],
            binary_outputs=set(),
        )


def test_response_sends_non_finite_floats_as_binary() -> None:
    data = np.array([np.nan, np.inf])
    body, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[Tensor("y", "FP64", [2], data)],
        binary_outputs={"y"},
    )

    received = client_result(body, headers).as_numpy("y")
    assert np.isnan(received[0])
    assert received[1] == np.inf


def test_response_refuses_non_utf8_bytes_in_json() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[Tensor("y", "BYTES", [1], np.array([b"\xff"], dtype=np.object_))],
            binary_outputs=set(),
        )


def test_response_refuses_data_that_does_not_fill_the_shape() -> None:
    with pytest.raises(ValueError, match="needs 4 elements"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[Tensor("y", "FP64", [2, 2], np.zeros(3))],
            binary_outputs=set(),
        )


def test_response_refuses_lossy_cast() -> None:
    with pytest.raises(ValueError, match="cannot be sent as INT64"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[Tensor("y", "INT64", [1], np.array([1.5]))],
            binary_outputs=set(),
        )


def test_response_refuses_unknown_binary_output() -> None:
    with pytest.raises(ValueError, match="not among the outputs"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[Tensor("y", "FP64", [1], np.zeros(1))],
            binary_outputs={"z"},
        )


# docs/architecture/oip.md's JSON examples


def test_parse_oip_example_flat_request() -> None:
    body = (
        b'{"id":"req-42","parameters":{"content_type":"np"},"inputs":[{"name":"input-0","shape":[2,4],'
        b'"datatype":"FP64","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}],'
        b'"outputs":[{"name":"predict"},{"name":"predict_proba"}]}'
    )

    request = parse_infer_request(body, json_length=None)

    assert request.id == "req-42"
    assert request.parameters == {"content_type": "np"}
    assert request.binary_data_output is False
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("input-0", "FP64", [2, 4])
    assert_same(tensor.data, np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    assert tensor.data.flags.writeable
    assert request.outputs == [RequestedOutput("predict"), RequestedOutput("predict_proba")]
    assert select_outputs(request, ["predict_proba", "predict"]) == ["predict", "predict_proba"]
    assert wanted_binary_outputs(request, ["predict", "predict_proba"]) == set()


def test_parse_nested_data_without_id() -> None:
    request = request_json(
        {
            "inputs": [
                {"name": "input-0", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [4, 5]]}
            ]
        }
    )

    assert request.id is None
    assert request.outputs == []
    assert request.parameters == {}
    assert_same(request.inputs[0].data, np.array([[1, 2], [4, 5]], dtype=np.int32))


def test_parse_oip_example_pandas_columns() -> None:
    request = request_json(
        {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {"name": "sepal_length", "shape": [2], "datatype": "FP64", "data": [5.1, 6.7]},
                {"name": "species_hint", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
            ],
        }
    )

    assert_same(request.inputs[0].data, np.array([5.1, 6.7]))
    assert_same(request.inputs[1].data, np.array([b"a", b"b"], dtype=np.object_))


def test_parse_oip_example_binary_request() -> None:
    header = (
        b'{"model_name":"mymodel","inputs":[{"name":"input0","shape":[2,2],"datatype":"UINT32",'
        b'"parameters":{"binary_data_size":16}},{"name":"input1","shape":[3],"datatype":"BOOL",'
        b'"parameters":{"binary_data_size":3}}],"outputs":[{"name":"output0","parameters":{"binary_data":true}}]}'
    )
    body = header + struct.pack("<4I", 1, 2, 3, 4) + b"\x01\x00\x01"

    request = parse_infer_request(body, json_length=len(header))

    assert_same(request.inputs[0].data, np.array([[1, 2], [3, 4]], dtype=np.uint32))
    assert_same(request.inputs[1].data, np.array([True, False, True]))
    assert wanted_binary_outputs(request, ["output0"]) == {"output0"}


def test_parse_nested_bytes_and_empty_tensor() -> None:
    request = request_json(
        {
            "inputs": [
                {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["x"], ["\u00e9"]]},
                {"name": "e", "shape": [0, 4], "datatype": "FP32", "data": []},
            ]
        }
    )

    assert_same(request.inputs[0].data, np.array([[b"x"], ["\u00e9".encode()]], dtype=np.object_))
    assert_same(request.inputs[1].data, np.zeros((0, 4), dtype=np.float32))


def test_parse_accepts_integers_for_floats() -> None:
    (tensor,) = request_json(one_input(datatype="FP32", data=[1, 2.5])).inputs

    assert_same(tensor.data, np.array([1.0, 2.5], dtype=np.float32))


def test_binary_output_choice_per_output_overrides_request_level() -> None:
    request = request_json(
        {
            **one_input(),
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
        }
    )

    assert wanted_binary_outputs(request, ["a", "b"]) == {"b"}


# Refusals


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [NaN]}]}',
            "not valid JSON",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [Infinity]}]}',
            "not valid JSON",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1e400]}]}',
            "not valid JSON",
        ),
        (b"[]", "must be a JSON object"),
    ],
)
def test_refuses_malformed_json(body: bytes, message: str) -> None:
    assert message in refused(body)


@pytest.mark.parametrize(
    "document",
    [{}, {"inputs": []}, {"inputs": {"name": "x"}}, {"inputs": None}],
    ids=["missing", "empty", "object", "null"],
)
def test_refuses_missing_inputs(document: dict[str, Any]) -> None:
    assert refused_json(document) == "inputs must be a non-empty list"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": 3}, "inputs[0]: name must be a non-empty string"),
        ({"name": ""}, "inputs[0]: name must be a non-empty string"),
        ({"datatype": "FLOAT64"}, "input 'x': unknown datatype 'FLOAT64'"),
        ({"datatype": "BF16"}, "input 'x': unknown datatype 'BF16'"),
        ({"datatype": ["FP64"]}, "input 'x': unknown datatype ['FP64']"),
        ({"shape": [-1]}, "input 'x': shape must be a list of at most 64 non-negative integers"),
        ({"shape": [2.0]}, "input 'x': shape must be a list"),
        ({"shape": [True, 2]}, "input 'x': shape must be a list"),
        ({"shape": "2"}, "input 'x': shape must be a list"),
        ({"data": None}, "input 'x': data is missing"),
        ({"data": 1.0}, "input 'x': data must be a list"),
        ({"parameters": []}, "input 'x': parameters must be an object"),
    ],
)
def test_refuses_bad_input_fields(fields: dict[str, Any], message: str) -> None:
    assert refused_json(one_input(**fields)).startswith(message)


def test_refuses_flat_data_of_the_wrong_length() -> None:
    message = refused_json(
        one_input(name="input-0", shape=[2, 4], data=[5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2])
    )

    assert message == "input 'input-0': shape [2,4] needs 8 elements, got 7"


def test_refuses_nested_data_that_does_not_match_the_shape() -> None:
    message = refused_json(one_input(shape=[3, 2], data=[[1, 2, 3], [4, 5, 6]]))

    assert message == "input 'x': data nested as [2,3] does not match shape [3,2]"


def test_refuses_ragged_nested_data() -> None:
    message = refused_json(one_input(shape=[2, 2], data=[[1, 2], [3]]))

    assert message == (
        "input 'x': data is ragged (nested lists of different lengths) or nested too deeply"
    )


def test_refuses_bytes_data_that_does_not_match_the_shape() -> None:
    message = refused_json(one_input(datatype="BYTES", shape=[2, 2], data=[["a", "b", "c"], ["d"]]))

    assert message == "input 'x': data is neither flat with 4 elements nor nested as shape [2,2]"


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT64", [1, 2.5], "INT64 data must be integers, got non-integer numbers"),
        ("INT32", [1.0, 2.0], "INT32 data must be integers, got non-integer numbers"),
        ("FP64", ["1.5", "2"], "FP64 data must be numbers, got strings"),
        ("FP32", [True, False], "FP32 data must be numbers, got booleans"),
        ("FP64", [1.0, None], "FP64 data must be numbers, got mixed or non-scalar values"),
        ("FP64", [1.0, {"a": 1}], "FP64 data must be numbers, got mixed or non-scalar values"),
        ("BOOL", [1, 0], "BOOL data must be booleans, got integers"),
        ("BYTES", ["a", 1], "BYTES data must be strings, got int"),
        ("BYTES", [None, "a"], "BYTES data must be strings, got NoneType"),
        ("UINT8", [1, 256], "a value is out of range for UINT8"),
        ("UINT64", [-1, 1], "a value is out of range for UINT64"),
        ("INT8", [-129, 1], "a value is out of range for INT8"),
        ("INT64", [18446744073709551615, 1], "a value is out of range for INT64"),
        ("FP16", [1.0, 70000.0], "a value is out of range for FP16"),
        ("FP32", [1.0, 1e39], "a value is out of range for FP32"),
    ],
)
def test_refuses_values_that_do_not_fit_the_datatype(
    datatype: str, data: list[Any], message: str
) -> None:
    assert refused_json(one_input(datatype=datatype, data=data)) == f"input 'x': {message}"


def test_refuses_duplicate_input_names() -> None:
    tensor = one_input()["inputs"][0]

    assert refused_json({"inputs": [tensor, tensor]}) == "input 'x' appears more than once"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**one_input(), "id": 42}, "id must be a string"),
        ({**one_input(), "parameters": "np"}, "request: parameters must be an object"),
        (
            {**one_input(), "parameters": {"binary_data_output": "yes"}},
            "request: parameters.binary_data_output must be a boolean",
        ),
        ({**one_input(), "outputs": {"name": "y"}}, "outputs must be a list"),
        ({**one_input(), "outputs": ["y"]}, "outputs[0] must be an object"),
        ({**one_input(), "outputs": [{}]}, "outputs[0]: name must be a non-empty string"),
        (
            {**one_input(), "outputs": [{"name": "y"}, {"name": "y"}]},
            "output 'y' is requested more than once",
        ),
        (
            {**one_input(), "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            "output 'y': parameters.binary_data must be a boolean",
        ),
        (
            {**one_input(), "outputs": [{"name": "y", "parameters": {"classification": 3}}]},
            "output 'y': the classification extension is not supported",
        ),
        (
            {
                **one_input(),
                "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}],
            },
            "output 'y': shared memory is not supported",
        ),
        (
            one_input(data=None, parameters={"shared_memory_region": "r"}),
            "input 'x': shared memory is not supported",
        ),
    ],
)
def test_refuses_bad_request_fields(document: dict[str, Any], message: str) -> None:
    assert refused_json(document) == message


def test_refuses_requests_past_the_element_limit() -> None:
    assert refused(orjson.dumps(one_input(shape=[3])), max_elements=2).startswith(
        "input 'x': shape [3] holds 3 elements, more than the limit of 2"
    )
    two = {"inputs": [one_input()["inputs"][0], {**one_input()["inputs"][0], "name": "y"}]}
    assert (
        refused(orjson.dumps(two), max_elements=3)
        == "inputs hold 4 elements, more than the limit of 3"
    )
    assert refused(orjson.dumps(one_input(shape=[0, 10**18], data=[]))).startswith(
        "input 'x': shape [0,1000000000000000000] has a dimension above 50000000"
    )


def binary_body(*inputs: tuple[dict[str, Any], bytes]) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": [tensor for tensor, _ in inputs]})
    return header + b"".join(raw for _, raw in inputs), len(header)


def binary_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


def test_refuses_binary_size_that_does_not_match_the_shape() -> None:
    body, length = binary_body((binary_input("x", "FP32", [2, 2], 12), b"\x00" * 12))

    assert (
        refused(body, length)
        == "input 'x': binary_data_size is 12 bytes but shape [2,2] of FP32 needs 16"
    )


def test_refuses_binary_sizes_that_do_not_add_up_to_the_body() -> None:
    body, length = binary_body((binary_input("x", "FP32", [2], 8), b"\x00" * 8))

    assert refused(body + b"\x00", length) == (
        "binary_data_size of the inputs adds up to 8 bytes but 9 bytes follow the JSON header"
    )
    assert refused(body[:-1], length) == (
        "binary_data_size of the inputs adds up to 8 bytes but 7 bytes follow the JSON header"
    )


def test_refuses_header_length_beyond_the_body() -> None:
    body, _ = binary_body((binary_input("x", "FP32", [2], 8), b"\x00" * 8))

    assert refused(body, len(body) + 1) == (
        f"Inference-Header-Content-Length {len(body) + 1} is beyond the body length {len(body)}"
    )
    assert refused(body, -1).startswith("Inference-Header-Content-Length -1 is beyond")


def test_refuses_header_length_cutting_the_json() -> None:
    body, length = binary_body((binary_input("x", "FP32", [2], 8), b"\x00" * 8))

    assert "not valid JSON" in refused(body, length - 1)


def test_refuses_binary_input_without_the_header() -> None:
    body, _ = binary_body((binary_input("x", "FP32", [2], 8), b"\x00" * 8))

    assert "not valid JSON" in refused(body)
    header, _ = binary_body((binary_input("x", "FP32", [2], 8), b""))
    assert refused(header) == (
        "input 'x' has binary_data_size but the request has no Inference-Header-Content-Length header"
    )


def test_refuses_both_data_and_binary_size() -> None:
    tensor = {**binary_input("x", "FP32", [2], 8), "data": [1.0, 2.0]}
    body, length = binary_body((tensor, b"\x00" * 8))

    assert refused(body, length) == "input 'x': has both data and binary_data_size"


@pytest.mark.parametrize("size", [-1, 2.5, "8", True])
def test_refuses_bad_binary_size(size: Any) -> None:
    body, length = binary_body((binary_input("x", "FP32", [2], size), b""))

    assert refused(body, length) == "input 'x': binary_data_size must be a non-negative integer"


def test_refuses_bool_bytes_other_than_zero_and_one() -> None:
    body, length = binary_body((binary_input("x", "BOOL", [2], 2), b"\x01\x02"))

    assert refused(body, length) == "input 'x': BOOL bytes must be 0 or 1"


def bytes_elements(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (bytes_elements(b"ab"), "shape [2] needs 2 BYTES elements, the binary data holds 1"),
        (
            bytes_elements(b"a", b"b", b"c"),
            "shape [2] needs 2 BYTES elements, the binary data holds more",
        ),
        (bytes_elements(b"a") + b"\x05\x00", "BYTES data ends inside an element's length prefix"),
        (
            bytes_elements(b"a") + struct.pack("<I", 9) + b"abc",
            "a BYTES element runs past its binary_data_size",
        ),
    ],
)
def test_refuses_malformed_binary_bytes(raw: bytes, message: str) -> None:
    body, length = binary_body((binary_input("x", "BYTES", [2], len(raw)), raw))

    assert refused(body, length) == f"input 'x': {message}"


def test_reading_a_request_leaves_its_values_for_decoding() -> None:
    raw = bytes_elements(b"a") + b"\x05\x00"  # a torn element: decoding refuses it
    body, length = binary_body((binary_input("x", "BYTES", [2], len(raw)), raw))

    header = read_infer_request(body, json_length=length)

    assert [(t.name, t.datatype, t.shape, t.count) for t in header.inputs] == [
        ("x", "BYTES", [2], 2)
    ]
    with pytest.raises(OIPError, match="ends inside an element's length prefix"):
        decode_inputs(header)


def test_refuses_more_tensors_than_the_limit() -> None:
    tensor = one_input()["inputs"][0]
    many = [{**tensor, "name": f"x{i}"} for i in range(MAX_TENSORS + 1)]

    assert refused_json({"inputs": many}) == (
        f"inputs has {MAX_TENSORS + 1} tensors, more than the limit of {MAX_TENSORS}"
    )
    outputs = [{"name": f"y{i}"} for i in range(MAX_TENSORS + 1)]
    assert refused_json({**one_input(), "outputs": outputs}) == (
        f"outputs has {MAX_TENSORS + 1} tensors, more than the limit of {MAX_TENSORS}"
    )


def test_a_duplicate_among_many_inputs_is_found_in_one_pass() -> None:
    tensor = one_input(shape=[1], data=[1.0])["inputs"][0]
    names = [f"x{i}" for i in range(MAX_TENSORS - 1)] + ["x0"]

    assert refused_json({"inputs": [{**tensor, "name": n} for n in names]}) == (
        "input 'x0' appears more than once"
    )


def test_client_chosen_names_are_quoted_cut_short() -> None:
    name = "n" * 10_000

    assert refused_json(one_input(name=name, datatype="FP99")).startswith(
        f"input {'n' * QUOTE_MAX_CHARS!r}... (10000 characters): unknown datatype 'FP99'"
    )
    assert refused_json(one_input(datatype=["FP64"] * 10_000)).startswith(
        "input 'x': unknown datatype ['FP64', 'FP64', 'FP64', 'FP64', ...]"
    )
    request = request_json({**one_input(), "outputs": [{"name": name}]})
    with pytest.raises(OIPError) as caught:
        select_outputs(request, ["predict"])
    assert caught.value.message == (
        f"unknown output {'n' * QUOTE_MAX_CHARS!r}... (10000 characters); the model has predict"
    )


def test_select_outputs_refuses_an_unknown_output() -> None:
    request = request_json({**one_input(), "outputs": [{"name": "predict"}, {"name": "nope"}]})

    with pytest.raises(OIPError) as caught:
        select_outputs(request, ["predict", "predict_proba"])

    assert caught.value.status == 400
    assert caught.value.message == "unknown output 'nope'; the model has predict, predict_proba"


# Datatypes and metadata


def test_datatypes_map_both_ways() -> None:
    for datatype in DATATYPES:
        assert to_datatype(to_numpy_dtype(datatype)) == datatype
    assert to_numpy_dtype("BYTES") == np.dtype(object)
    assert to_datatype(np.dtype("<U3")) == "BYTES"
    assert to_datatype(np.dtype("S3")) == "BYTES"
    assert to_datatype(np.dtype(">f8")) == "FP64"


def test_datatype_conversions_refuse_unknowns() -> None:
    with pytest.raises(OIPError, match="unknown datatype 'BF16'"):
        to_numpy_dtype("BF16")
    with pytest.raises(ValueError, match="no Open Inference Protocol datatype"):
        to_datatype(np.dtype(np.complex128))


def test_server_metadata_lists_binary_tensor_data() -> None:
    assert server_metadata(name="modelyard", version="1.0") == {
        "name": "modelyard",
        "version": "1.0",
        "extensions": ["binary_tensor_data"],
    }


def test_model_metadata_matches_oip_example() -> None:
    document = model_metadata(
        name="iris",
        versions=["1", "2", "3"],
        platform="sklearn",
        inputs=[{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        outputs=[
            {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ],
    )

    assert orjson.dumps(document) == (
        b'{"name":"iris","versions":["1","2","3"],"platform":"sklearn","inputs":[{"name":"input-0",'
        b'"datatype":"FP64","shape":[-1,4]}],"outputs":[{"name":"predict","datatype":"INT64",'
        b'"shape":[-1,1]},{"name":"predict_proba","datatype":"FP64","shape":[-1,3]}]}'
    )

"""The Open Inference Protocol (KServe V2) wire codec: request parsing, response encoding, metadata.

Pure functions over bytes and numpy arrays, no HTTP and no database: the V2 router feeds them the
body and the `Inference-Header-Content-Length` header and sends back what they return. Follows
docs/architecture/oip.md, including Triton's binary tensor data extension, which stock `tritonclient`
uses by default.
"""

from __future__ import annotations

import math
import reprlib
import struct
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

import numpy as np
import numpy.typing as npt
import orjson


class OIPError(Exception):
    """A request the protocol refuses; rendered by the router as {"error": message} with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


_NUMPY_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
DATATYPES: Final[frozenset[str]] = frozenset(_NUMPY_DTYPES)

# (kind, itemsize) -> datatype, so that non-native byte orders map too.
_DATATYPE_OF: Final[dict[tuple[str, int], str]] = {
    (dtype.kind, dtype.itemsize): datatype
    for datatype, dtype in _NUMPY_DTYPES.items()
    if datatype != "BYTES"
}

# The kinds numpy infers from JSON values that each datatype accepts. Integers are valid floats;
# nothing else converts: numpy would otherwise parse "1.5" into a float or truncate 1.5 to 1.
_ACCEPTED_KINDS: Final[dict[str, frozenset[str]]] = {
    "b": frozenset("b"),
    "i": frozenset("iu"),
    "u": frozenset("iu"),
    "f": frozenset("iuf"),
}
_EXPECTED_WORDS: Final[dict[str, str]] = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "numbers",
}

# numpy's limit on dimensions; a longer shape could never be built.
_MAX_DIMS: Final = 64
# Most input or output tensors one request may name: a bound on the per-tensor work done before
# a server can tell whether the request fits its model.
MAX_TENSORS: Final = 1024
# Longest client-chosen text (a name, a datatype) an error message quotes in full.
QUOTE_MAX_CHARS: Final = 64
_LENGTH_PREFIX: Final = struct.Struct("<I")

EXTENSIONS: Final[tuple[str, ...]] = ("binary_tensor_data",)


def _bounded_repr() -> reprlib.Repr:
    bounded = reprlib.Repr()  # keyword arguments only from Python 3.12
    bounded.maxlevel, bounded.maxlist, bounded.maxdict = 2, 4, 4
    bounded.maxstring = bounded.maxlong = bounded.maxother = QUOTE_MAX_CHARS
    return bounded


_QUOTE: Final = _bounded_repr()


# The request header that says how long the JSON part of a body with binary tensors is.
HEADER_LENGTH: Final = "inference-header-content-length"
# Longest decimal a byte count or a version may take; also keeps int() far from its digit limit.
_MAX_DIGITS: Final = 18


def ascii_number(raw: str) -> int | None:
    """Return a client's decimal (ASCII digits only, at most 18 of them), or None if it is not one.

    `str.isdigit()` and `int()` alone accept other scripts' digits, and `isdigit()` even accepts
    some that `int()` then refuses ("²"): the cause of a 500 on a header.
    """
    if not raw or len(raw) > _MAX_DIGITS or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def version_number(raw: str) -> int:
    """Parse a path's version.

    Raises:
        OIPError: not a version number (400).
    """
    number = ascii_number(raw)
    if number is None or not 1 <= number < 2**31:
        raise OIPError(f"version {quote(raw)} is not a version number of this server")
    return number


def header_length_value(raw: str | None) -> int | None:
    """Parse the Inference-Header-Content-Length header (None when absent).

    Raises:
        OIPError: present but not a byte count (400).
    """
    if raw is None:
        return None
    number = ascii_number(raw)
    if number is None:
        raise OIPError(f"{HEADER_LENGTH} must be a byte count")
    return number


def to_numpy_dtype(datatype: str) -> np.dtype[Any]:
    """Return the numpy dtype of an OIP datatype (BYTES is `object`).

    Raises:
        OIPError: the datatype is not one of DATATYPES.
    """
    try:
        return _NUMPY_DTYPES[datatype]
    except (KeyError, TypeError):
        raise OIPError(
            f"unknown datatype {quote(datatype)}; expected one of {', '.join(sorted(DATATYPES))}"
        ) from None


def to_datatype(dtype: np.dtype[Any]) -> str:
    """Return the OIP datatype of a numpy dtype (object, str and bytes arrays are BYTES).

    Raises:
        ValueError: the dtype has no OIP datatype (complex, datetime, void...).
    """
    if dtype.kind in "OUS":
        return "BYTES"
    try:
        return _DATATYPE_OF[dtype.kind, dtype.itemsize]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


# Not frozen, as a value object would be: every request builds several of these, and a frozen
# dataclass's __init__ costs twice as much (object.__setattr__ per field). Nothing mutates them.
@dataclass(slots=True)
class Tensor:
    """A named tensor of a request or a response.

    `data` is shaped to `shape` on the request side. JSON inputs are fresh writable arrays; binary
    numeric inputs are zero-copy, read-only views over the request body (copied only when their
    offset leaves them unaligned), so copy before writing. BYTES inputs are object arrays of
    `bytes`. On the response side `data` only needs `prod(shape)` elements, and BYTES outputs may
    hold `str` or `bytes` (object, `U` or `S` arrays).
    """

    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the request names, with its `parameters.binary_data` choice if given."""

    name: str
    binary_data: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)  # not frozen: see Tensor
class InferRequest:
    """A parsed and validated inference request; empty `outputs` means all outputs."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput]
    parameters: dict[str, Any]
    binary_data_output: bool


def quote(value: object) -> str:
    """Return `repr(value)` for an error message, bounded: a long string is cut, its length told.

    A client chooses names and datatypes; quoting a 10 MB one would send and log it back whole.
    """
    if isinstance(value, str):
        if len(value) <= QUOTE_MAX_CHARS:
            return repr(value)
        return f"{value[:QUOTE_MAX_CHARS]!r}... ({len(value)} characters)"
    # reprlib reads only the first few items of a list or an object, however long it is.
    return _QUOTE.repr(value)


def _shape_text(shape: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _is_int(value: object) -> bool:
    # bool is an int subclass, but true is not a dimension or a size.
    return isinstance(value, int) and not isinstance(value, bool)


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OIPError(f"{where}: parameters must be an object")
    return value


@dataclass(slots=True)
class InputHeader:
    """An input's JSON part, validated before any array is built: what it declares costs O(1)."""

    name: str
    datatype: str
    shape: list[int]
    count: int
    parameters: dict[str, Any]
    data: list[Any]  # empty for binary inputs
    binary_size: int | None


@dataclass(slots=True)  # not frozen: see Tensor
class InferHeader:
    """An inference request read up to its tensors' values: the JSON document validated, every
    input's datatype, shape, element count and binary size known, no array built yet.

    What a server checks against its model here costs no per-element work; `decode_inputs` then
    builds the arrays.
    """

    id: str | None
    inputs: list[InputHeader]
    outputs: list[RequestedOutput]
    parameters: dict[str, Any]
    binary_data_output: bool
    body: bytes
    binary_offset: int  # where the first binary tensor starts in `body`


def parse_infer_request(
    body: bytes, *, json_length: int | None, max_elements: int = 50_000_000
) -> InferRequest:
    """Parse and validate an inference request body, JSON or JSON plus binary tensors.

    `read_infer_request` then `decode_inputs`; see them.

    Raises:
        OIPError: anything the protocol or these limits refuse (status 400), message naming it.
    """
    return decode_inputs(
        read_infer_request(body, json_length=json_length, max_elements=max_elements)
    )


def read_infer_request(
    body: bytes, *, json_length: int | None, max_elements: int = 50_000_000
) -> InferHeader:
    """Read and validate an inference request up to its tensors' values (no array is built).

    `json_length` is the `Inference-Header-Content-Length` header: the JSON is `body[:json_length]`
    and the binary tensors follow in input order. Without it the whole body is JSON. At most
    `max_elements` elements over all inputs and `MAX_TENSORS` inputs and outputs are accepted;
    those bounds are checked from the declared shapes, before any value is read.

    Raises:
        OIPError: anything the protocol or these limits refuse (status 400), message naming it.
    """
    if json_length is None:
        header_bytes: bytes | memoryview = body
        binary_length = 0
    else:
        if json_length < 0 or json_length > len(body):
            raise OIPError(
                f"Inference-Header-Content-Length {json_length} is beyond the body length "
                f"{len(body)}"
            )
        header_bytes = memoryview(body)[:json_length]
        binary_length = len(body) - json_length
    try:
        document = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise OIPError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OIPError("request body must be a JSON object")

    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OIPError("id must be a string")
    parameters = _parameters(document.get("parameters"), "request")
    binary_data_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_data_output, bool):
        raise OIPError("request: parameters.binary_data_output must be a boolean")

    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise OIPError("inputs must be a non-empty list")
    if len(raw_inputs) > MAX_TENSORS:
        raise OIPError(
            f"inputs has {len(raw_inputs)} tensors, more than the limit of {MAX_TENSORS}"
        )
    headers = [
        _parse_input_header(raw, index, max_elements) for index, raw in enumerate(raw_inputs)
    ]
    seen: set[str] = set()
    total = 0
    for header in headers:
        if header.name in seen:
            raise OIPError(f"input {quote(header.name)} appears more than once")
        seen.add(header.name)
        total += header.count
    if total > max_elements:
        raise OIPError(f"inputs hold {total} elements, more than the limit of {max_elements}")

    binary_total = 0
    for header in headers:
        if header.binary_size is not None:
            if json_length is None:
                raise OIPError(
                    f"input {quote(header.name)} has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            binary_total += header.binary_size
    if binary_total != binary_length:
        raise OIPError(
            f"binary_data_size of the inputs adds up to {binary_total} bytes but {binary_length} "
            "bytes follow the JSON header"
        )

    return InferHeader(
        id=request_id,
        inputs=headers,
        outputs=_parse_outputs(document.get("outputs")),
        parameters=parameters,
        binary_data_output=binary_data_output,
        body=body,
        binary_offset=0 if json_length is None else json_length,
    )


def decode_inputs(header: InferHeader) -> InferRequest:
    """Build the input arrays of a request read by `read_infer_request`.

    This is the per-element work (bounded by the `max_elements` the header was read with).

    Raises:
        OIPError: values that do not fit their datatype or shape (status 400).
    """
    inputs: list[Tensor] = []
    offset = header.binary_offset
    for tensor in header.inputs:
        if tensor.binary_size is None:
            array = _array_from_json(tensor)
        else:
            array = _array_from_binary(tensor, tensor.binary_size, header.body, offset)
            offset += tensor.binary_size
        inputs.append(
            Tensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tensor.shape,
                data=array,
                parameters=tensor.parameters,
            )
        )
    return InferRequest(
        id=header.id,
        inputs=inputs,
        outputs=header.outputs,
        parameters=header.parameters,
        binary_data_output=header.binary_data_output,
    )


def json_tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> npt.NDArray[Any]:
    """Build the array of a tensor given as JSON `data` (nested as `shape`, or flat).

    The same reading as a V2 JSON input's: values must fit `datatype` (no "1.5" for a number,
    no 1.5 for an integer, nothing out of range), `shape` must hold at most what the caller
    has checked.

    Raises:
        OIPError: data that does not fit the datatype or the shape, naming the input.
    """
    header = InputHeader(name, datatype, shape, math.prod(shape), {}, data, None)
    return _array_from_json(header)


def _input(name: str) -> str:
    """Name an input in an error message (quoted cut short; built only when refusing)."""
    return f"input {quote(name)}"


def _is_shape(shape: object) -> TypeGuard[list[int]]:
    """Tell whether `shape` is a list of at most _MAX_DIMS non-negative integers."""
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        return False
    # `type(d) is int`: bool is an int subclass, but true is not a dimension.
    return all(type(d) is int and d >= 0 for d in shape)


def _parse_input_header(raw: object, index: int, max_elements: int) -> InputHeader:
    if not isinstance(raw, dict):
        raise OIPError(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise OIPError(f"inputs[{index}]: name must be a non-empty string")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise OIPError(
            f"{_input(name)}: unknown datatype {quote(datatype)}; expected one of "
            f"{', '.join(sorted(DATATYPES))}"
        )
    shape = raw.get("shape")
    if not _is_shape(shape):
        raise OIPError(
            f"{_input(name)}: shape must be a list of at most {_MAX_DIMS} non-negative integers"
        )
    count = math.prod(shape)
    if count > max_elements:
        raise OIPError(
            f"{_input(name)}: shape {_shape_text(shape)} holds {count} elements, more than the "
            f"limit of {max_elements}"
        )
    # Only an empty tensor can have a dimension past the limit; numpy cannot build it anyway.
    if count == 0 and any(d > max_elements for d in shape):
        raise OIPError(
            f"{_input(name)}: shape {_shape_text(shape)} has a dimension above {max_elements}"
        )
    parameters = raw.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise OIPError(f"{_input(name)}: parameters must be an object")
    elif "shared_memory_region" in parameters:
        raise OIPError(f"{_input(name)}: shared memory is not supported")
    binary_size = parameters.get("binary_data_size")
    data = raw.get("data")
    if binary_size is not None:
        if not _is_int(binary_size) or binary_size < 0:
            raise OIPError(f"{_input(name)}: binary_data_size must be a non-negative integer")
        if "data" in raw:
            raise OIPError(f"{_input(name)}: has both data and binary_data_size")
    elif data is None:
        raise OIPError(f"{_input(name)}: data is missing (and no binary_data_size is given)")
    elif not isinstance(data, list):
        raise OIPError(f"{_input(name)}: data must be a list")
    return InputHeader(name, datatype, shape, count, parameters, data or [], binary_size)


def _array_from_json(header: InputHeader) -> npt.NDArray[Any]:
    if header.datatype == "BYTES":
        return _bytes_from_json(header, header.data)
    dtype = _NUMPY_DTYPES[header.datatype]
    try:
        # Infer first, convert after: converting directly would turn "1.5" into 1.5 and 1.5 into 1.
        # A boolean mixed into numbers still becomes 0/1 (numpy's promotion): only all-boolean
        # data is refused, as catching the mix would cost a Python loop per element.
        inferred = np.asarray(header.data)
    except ValueError:
        raise OIPError(
            f"{_input(header.name)}: data is ragged (nested lists of different lengths) or nested too deeply"
        ) from None
    shape = tuple(header.shape)
    if inferred.shape != shape:
        if inferred.ndim == 1 and inferred.size == header.count:
            inferred = inferred.reshape(shape)
        elif inferred.ndim == 1:
            raise OIPError(
                f"{_input(header.name)}: shape {_shape_text(shape)} needs {header.count} elements, "
                f"got {inferred.size}"
            )
        else:
            raise OIPError(
                f"{_input(header.name)}: data nested as {_shape_text(inferred.shape)} does not match shape "
                f"{_shape_text(shape)}"
            )
    if inferred.size == 0:
        return np.zeros(shape, dtype=dtype)
    if dtype.kind in "iu" and inferred.dtype.kind == "f":
        inferred = _large_integers(header, inferred)
    if inferred.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise OIPError(
            f"{_input(header.name)}: {header.datatype} data must be {_EXPECTED_WORDS[dtype.kind]}, "
            f"got {_describe_kind(inferred)}"
        )
    if dtype.kind in "iu" and inferred.dtype != dtype:
        info = np.iinfo(dtype)
        if int(inferred.min()) < info.min or int(inferred.max()) > info.max:
            raise OIPError(f"{_input(header.name)}: a value is out of range for {header.datatype}")
    if dtype.kind == "f" and dtype.itemsize < 8:
        # Values past FP16/FP32's range would silently become infinity.
        with np.errstate(over="ignore"):
            array = inferred.astype(dtype, copy=False)
        if not np.isfinite(array).all():
            raise OIPError(f"{_input(header.name)}: a value is out of range for {header.datatype}")
        return array
    return inferred.astype(dtype, copy=False)


def _large_integers(header: InputHeader, inferred: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Return integers numpy promoted to float64 exactly, as the datatype, or else `inferred`."""
    # numpy promotes a list mixing ints of int64's range and ints past it (up to UINT64's
    # maximum) to float64, losing precision; only then is a loop over the values worth it.
    values: list[Any] = np.asarray(header.data, dtype=np.object_).ravel().tolist()
    if not all(type(value) is int for value in values):
        return inferred
    dtype = _NUMPY_DTYPES[header.datatype]
    info = np.iinfo(dtype)
    if min(values) < info.min or max(values) > info.max:
        raise OIPError(f"input {quote(header.name)}: a value is out of range for {header.datatype}")
    return np.array(values, dtype=dtype).reshape(inferred.shape)


def _describe_kind(array: npt.NDArray[Any]) -> str:
    kind = array.dtype.kind
    if kind == "U":
        return "strings"
    if kind == "b":
        return "booleans"
    if kind == "f":
        return "non-integer numbers"
    if kind in "iu":
        return "integers"
    return "mixed or non-scalar values"


def _bytes_from_json(header: InputHeader, data: list[Any]) -> npt.NDArray[Any]:
    shape = header.shape
    elements: list[bytes] = []

    def add(value: object) -> None:
        if not isinstance(value, str):
            raise OIPError(
                f"{_input(header.name)}: BYTES data must be strings, got {type(value).__name__}"
            )
        elements.append(value.encode())

    if len(data) == header.count and not (data and isinstance(data[0], list)):
        for value in data:
            add(value)
    else:

        def walk(node: object, depth: int) -> None:
            if depth == len(shape):
                add(node)
            elif isinstance(node, list) and len(node) == shape[depth]:
                for child in node:
                    walk(child, depth + 1)
            else:
                raise OIPError(
                    f"{_input(header.name)}: data is neither flat with {header.count} elements nor nested "
                    f"as shape {_shape_text(shape)}"
                )

        walk(data, 0)
    array = np.empty(header.count, dtype=np.object_)
    array[:] = elements
    return array.reshape(shape)


def _array_from_binary(
    header: InputHeader, size: int, body: bytes, offset: int
) -> npt.NDArray[Any]:
    if header.datatype == "BYTES":
        return _bytes_from_binary(header, size, body, offset)
    dtype = _NUMPY_DTYPES[header.datatype]
    if header.count * dtype.itemsize != size:
        raise OIPError(
            f"{_input(header.name)}: binary_data_size is {size} bytes but shape {_shape_text(header.shape)} "
            f"of {header.datatype} needs {header.count * dtype.itemsize}"
        )
    array = np.frombuffer(body, dtype=dtype.newbyteorder("<"), count=header.count, offset=offset)
    if dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        # Other byte values make numpy bools that compare unequal to True.
        raise OIPError(f"{_input(header.name)}: BOOL bytes must be 0 or 1")
    if not array.dtype.isnative or not array.flags.aligned:
        # Unaligned views are slow and refused by some native model code; copying fixes both.
        array = array.astype(dtype)
    return array.reshape(header.shape)


def _bytes_from_binary(
    header: InputHeader, size: int, body: bytes, offset: int
) -> npt.NDArray[Any]:
    end = offset + size
    elements: list[bytes] = []
    position = offset
    while position < end:
        if position + 4 > end:
            raise OIPError(
                f"{_input(header.name)}: BYTES data ends inside an element's length prefix"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(body, position)
        position += 4
        if position + length > end:
            raise OIPError(f"{_input(header.name)}: a BYTES element runs past its binary_data_size")
        elements.append(body[position : position + length])
        position += length
        if len(elements) > header.count:
            break
    if len(elements) != header.count:
        raise OIPError(
            f"{_input(header.name)}: shape {_shape_text(header.shape)} needs {header.count} BYTES elements, "
            f"the binary data holds {'more' if len(elements) > header.count else len(elements)}"
        )
    array = np.empty(header.count, dtype=np.object_)
    array[:] = elements
    return array.reshape(header.shape)


def _parse_outputs(raw_outputs: object) -> list[RequestedOutput]:
    if raw_outputs is None:
        return []
    if not isinstance(raw_outputs, list):
        raise OIPError("outputs must be a list")
    if len(raw_outputs) > MAX_TENSORS:
        raise OIPError(
            f"outputs has {len(raw_outputs)} tensors, more than the limit of {MAX_TENSORS}"
        )
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict):
            raise OIPError(f"outputs[{index}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise OIPError(f"outputs[{index}]: name must be a non-empty string")
        where = f"output {quote(name)}"
        if name in seen:
            raise OIPError(f"{where} is requested more than once")
        seen.add(name)
        parameters = _parameters(raw.get("parameters"), where)
        binary_data = parameters.get("binary_data")
        if binary_data is not None and not isinstance(binary_data, bool):
            raise OIPError(f"{where}: parameters.binary_data must be a boolean")
        # Ignoring these would answer with something other than what the client asked for.
        if parameters.get("classification"):
            raise OIPError(f"{where}: the classification extension is not supported")
        if "shared_memory_region" in parameters:
            raise OIPError(f"{where}: shared memory is not supported")
        outputs.append(RequestedOutput(name=name, binary_data=binary_data, parameters=parameters))
    return outputs


def select_outputs(request: InferRequest | InferHeader, available: list[str]) -> list[str]:
    """Return the outputs to send: those requested, in request order, or all available.

    Raises:
        OIPError: a requested output is not one the model has (status 400).
    """
    if not request.outputs:
        return list(available)
    known = set(available)
    for output in request.outputs:
        if output.name not in known:
            raise OIPError(
                f"unknown output {quote(output.name)}; the model has {', '.join(available) or 'none'}"
            )
    return [output.name for output in request.outputs]


def wanted_binary_outputs(request: InferRequest | InferHeader, available: list[str]) -> set[str]:
    """Return which outputs to send as binary: per-output binary_data, else binary_data_output."""
    choices = {output.name: output.binary_data for output in request.outputs}
    wanted: set[str] = set()
    for name in available:
        choice = choices.get(name)
        if choice if choice is not None else request.binary_data_output:
            wanted.add(name)
    return wanted


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: list[Tensor],
    binary_outputs: set[str],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference response, returning the body and its headers.

    Outputs named in `binary_outputs` follow the JSON as raw little-endian bytes (BYTES as
    length-prefixed elements), and the headers then carry `Inference-Header-Content-Length`.
    JSON data is flat (row-major). Absent optional fields are omitted, never null.

    Raises:
        ValueError: an output cannot be encoded: NaN or infinity in JSON data, data that does not
            fit its datatype or shape, non-UTF-8 BYTES in JSON, or an unknown binary output name.
    """
    unknown = binary_outputs - {output.name for output in outputs}
    if unknown:
        raise ValueError(f"binary outputs {sorted(unknown)} are not among the outputs")
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters is not None:
        document["parameters"] = parameters
    encoded: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in outputs:
        flat = _flat_output(output)
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if output.name in binary_outputs:
            chunk = _binary_chunk(output, flat)
            chunks.append(chunk)
            entry["parameters"] = {**output.parameters, "binary_data_size": len(chunk)}
        else:
            if output.parameters:
                entry["parameters"] = output.parameters
            entry["data"] = _json_data(output, flat)
        encoded.append(entry)
    document["outputs"] = encoded
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _flat_output(output: Tensor) -> npt.NDArray[Any]:
    # The messages are built only when refusing: this runs for every output of every answer.
    if output.datatype not in DATATYPES:
        raise ValueError(f"output {output.name!r}: unknown datatype {output.datatype!r}")
    if not _is_shape(output.shape):
        raise ValueError(
            f"output {output.name!r}: shape {output.shape} is not a list of non-negative integers"
        )
    data = np.asarray(output.data)
    if data.size != (count := math.prod(output.shape)):
        raise ValueError(
            f"output {output.name!r}: shape {_shape_text(output.shape)} needs {count} "
            f"elements, the data has {data.size}"
        )
    # C order: the protocol is row-major, and orjson only serializes contiguous arrays.
    flat = data.ravel(order="C")
    if output.datatype == "BYTES":
        if flat.dtype.kind not in "OUS":
            raise ValueError(
                f"output {output.name!r}: BYTES data must be strings or bytes, not {flat.dtype}"
            )
        return flat
    dtype = _NUMPY_DTYPES[output.datatype]
    if flat.dtype != dtype:
        try:
            flat = flat.astype(dtype, casting="same_kind")
        except TypeError:
            raise ValueError(
                f"output {output.name!r}: {flat.dtype} data cannot be sent as {output.datatype}"
            ) from None
    return flat


def _json_data(output: Tensor, flat: npt.NDArray[Any]) -> Any:
    if output.datatype == "BYTES":
        values: list[str] = []
        for value in flat.tolist():
            if isinstance(value, bytes):
                try:
                    values.append(value.decode())
                except UnicodeDecodeError:
                    raise ValueError(
                        f"output {output.name!r}: BYTES element is not UTF-8, which JSON cannot "
                        "carry; request the output as binary"
                    ) from None
            elif isinstance(value, str):
                values.append(value)
            else:
                raise ValueError(
                    f"output {output.name!r}: BYTES element is a {type(value).__name__}, "
                    "not str or bytes"
                )
        return values
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise ValueError(
            f"output {output.name!r} holds NaN or infinity, which JSON cannot carry; request it "
            "as binary"
        )
    # orjson writes every datatype's array natively (checked for FP16 through UINT64 and BOOL).
    return flat


def _binary_chunk(output: Tensor, flat: npt.NDArray[Any]) -> bytes:
    if output.datatype != "BYTES":
        return flat.astype(flat.dtype.newbyteorder("<"), copy=False).tobytes()
    parts: list[bytes] = []
    for value in flat.tolist():
        if isinstance(value, str):
            value = value.encode()
        elif not isinstance(value, bytes):
            raise ValueError(
                f"output {output.name!r}: BYTES element is a {type(value).__name__}, "
                "not str or bytes"
            )
        parts.append(_LENGTH_PREFIX.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def server_metadata(*, name: str, version: str) -> dict[str, Any]:
    """Return the server metadata document, listing the protocol extensions implemented."""
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(
    *,
    name: str,
    versions: list[str],
    platform: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
) -> dict[str, Any]:
    """Return a model metadata document; tensors are {"name", "datatype", "shape"}, -1 variable."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [_metadata_tensor(tensor) for tensor in inputs],
        "outputs": [_metadata_tensor(tensor) for tensor in outputs],
    }


def _metadata_tensor(tensor: dict[str, Any]) -> dict[str, Any]:
    # Key order as in the protocol's examples; extra keys (MLServer's "parameters") pass through.
    return {
        "name": tensor["name"],
        "datatype": tensor["datatype"],
        "shape": list(tensor["shape"]),
        **{key: value for key, value in tensor.items() if key not in {"name", "datatype", "shape"}},
    }

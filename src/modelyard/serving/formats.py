"""Model file formats and frameworks, told apart by their bytes, and the errors uploads raise."""

from __future__ import annotations

import gzip
import zipfile
from enum import StrEnum
from pathlib import Path

from modelyard.errors import Unprocessable, UnsupportedMediaType


class Framework(StrEnum):
    """The library a model runs on."""

    SKLEARN = "sklearn"
    ONNX = "onnx"
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"


class ModelFormat(StrEnum):
    """The file format of a model artifact."""

    SKOPS = "skops"
    JOBLIB = "joblib"
    PICKLE = "pickle"
    ONNX = "onnx"
    XGBOOST_JSON = "xgboost-json"
    XGBOOST_UBJ = "xgboost-ubj"
    LIGHTGBM_TEXT = "lightgbm-text"


FRAMEWORK_OF: dict[ModelFormat, Framework] = {
    ModelFormat.SKOPS: Framework.SKLEARN,
    ModelFormat.JOBLIB: Framework.SKLEARN,
    ModelFormat.PICKLE: Framework.SKLEARN,
    ModelFormat.ONNX: Framework.ONNX,
    ModelFormat.XGBOOST_JSON: Framework.XGBOOST,
    ModelFormat.XGBOOST_UBJ: Framework.XGBOOST,
    ModelFormat.LIGHTGBM_TEXT: Framework.LIGHTGBM,
}

PICKLE_FORMATS: frozenset[ModelFormat] = frozenset({ModelFormat.JOBLIB, ModelFormat.PICKLE})


class UnsupportedModelFormat(UnsupportedMediaType):
    """The file is not a model format Modelyard loads (or that this server accepts)."""

    type = "unsupported-model-format"


class ModelRejected(Unprocessable):
    """The file is in a known format but failed the safety checks, loading or probing."""

    type = "model-rejected"


# How much of the head of a file detection reads: enough for the magic and the first keys,
# never the whole upload.
HEAD_BYTES = 4096
PICKLE_PROTO = 0x80
# Compression magics joblib writes (joblib.compressor): zlib's default header, gzip, bz2, xz, lzma.
ZLIB_PREFIX = b"\x78"
GZIP_PREFIX = b"\x1f\x8b"
BZ2_PREFIX = b"BZh"
XZ_PREFIX = b"\xfd7zXZ"
LZMA_PREFIX = b"\x5d\x00"
# Globals only joblib's own pickler writes; their presence marks a stream as joblib's.
JOBLIB_MARKERS = (b"joblib.numpy_pickle", b"NumpyArrayWrapper")
# UBJSON length markers that may follow the opening "{" of an XGBoost UBJ model.
UBJ_INT_MARKERS = b"iUIlL"


def detect_format(path: Path) -> ModelFormat:
    """Tell a model file's format from its bytes, never its name.

    Raises:
        UnsupportedModelFormat: the bytes match no supported format.
    """
    with path.open("rb") as file:
        head = file.read(HEAD_BYTES)
    if head.startswith(b"PK\x03\x04"):
        return _detect_zip(path)
    if head.startswith((ZLIB_PREFIX, GZIP_PREFIX, BZ2_PREFIX, XZ_PREFIX, LZMA_PREFIX)):
        return _detect_compressed(path, head)
    if head[:1] == bytes([PICKLE_PROTO]) and len(head) > 2:
        return ModelFormat.JOBLIB if any(m in head for m in JOBLIB_MARKERS) else ModelFormat.PICKLE
    if head.startswith(b"tree\n") and b"\nversion=v" in head:
        return ModelFormat.LIGHTGBM_TEXT
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        if len(stripped) > 1 and stripped[1] in UBJ_INT_MARKERS and b"learner" in head[:64]:
            return ModelFormat.XGBOOST_UBJ
        if b'"learner"' in head:
            return ModelFormat.XGBOOST_JSON
    # ONNX ModelProto: field 1 (ir_version) as a varint comes first in what every exporter
    # writes; the probe confirms by parsing.
    if head.startswith(b"\x08") and len(head) > 2 and b"\x3a" in head:
        return ModelFormat.ONNX
    raise UnsupportedModelFormat(
        "unrecognised model file: expected skops, joblib, pickle, ONNX, XGBoost JSON/UBJ or "
        "LightGBM text"
    )


def _detect_zip(path: Path) -> ModelFormat:
    """Tell a skops zip from any other zip (reads only the central directory)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedModelFormat("corrupt zip file") from exc
    if "schema.json" in names:
        return ModelFormat.SKOPS
    raise UnsupportedModelFormat("zip file without schema.json: not a skops model")


def _detect_compressed(path: Path, head: bytes) -> ModelFormat:
    """Tell a compressed joblib file by the pickle stream in its first decompressed bytes."""
    try:
        if head.startswith(GZIP_PREFIX):
            with gzip.open(path, "rb") as stream:
                inner = stream.read(HEAD_BYTES)
        elif head.startswith(ZLIB_PREFIX):
            import zlib

            # A bounded decompression of the first bytes only: never the whole stream.
            inner = zlib.decompressobj().decompress(head, HEAD_BYTES)
        else:
            # bz2/xz/lzma joblib files: the restricted loader decompresses them; the pickle
            # PROTO byte is checked there.
            return ModelFormat.JOBLIB
    except (OSError, EOFError, ValueError) as exc:
        raise UnsupportedModelFormat("corrupt compressed file") from exc
    if inner[:1] == bytes([PICKLE_PROTO]):
        return ModelFormat.JOBLIB
    raise UnsupportedModelFormat("compressed file that is not a joblib model")

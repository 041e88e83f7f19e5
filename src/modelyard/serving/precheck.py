"""Checks on an upload's container that read no model data, cheap enough for the server process."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Final

from modelyard.serving.formats import ModelRejected

# Zip bounds checked before skops reads a byte of the members (docs/architecture/security-notes.md, item 5: a 2 MiB
# skops zip reached 4.2 GiB): member count, total declared size and compression ratio.
MAX_ZIP_MEMBERS: Final = 100_000
MAX_ZIP_RATIO: Final = 200
# Members smaller than this may be compressed any amount (a zero-filled array compresses well).
RATIO_EXEMPT_BYTES: Final = 1024**2
MAX_MEMBER_NAME: Final = 1024
DEFAULT_MAX_EXPANDED_BYTES: Final = 1024**3


def check_zip_bounds(path: Path, max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> None:
    """Refuse a zip whose declared contents are too many, too large or too compressed.

    Reads only the central directory, never a member. Declared sizes bind: Python's zipfile
    stops reading a member at its declared size.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelRejected("model refused: corrupt zip file") from exc
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ModelRejected(f"model refused: more than {MAX_ZIP_MEMBERS} files in the archive")
    total = 0
    for info in infos:
        name = info.filename
        if len(name) > MAX_MEMBER_NAME or "\x00" in name or name.startswith("/"):
            raise ModelRejected("model refused: bad file name in the archive")
        total += info.file_size
        ratio_limit = MAX_ZIP_RATIO * max(info.compress_size, 1)
        if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > ratio_limit:
            raise ModelRejected(
                f"model refused: archive member compressed more than {MAX_ZIP_RATIO}:1"
            )
    if total > max_expanded_bytes:
        raise ModelRejected(
            f"model refused: archive expands to more than {max_expanded_bytes // 1024**2} MiB"
        )

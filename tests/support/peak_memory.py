"""Peak memory of one call, measured in a fresh interpreter: how far the process's resident set
grows past where it stood just before the call (Linux: `VmHWM` after resetting it through
`/proc/self/clear_refs`). Whatever allocates it counts, Python objects, numpy and pyarrow alike.

The call runs twice, on a small input first, so that imports and first-use caches are paid
before the measured run. No time is measured.

    python -m tests.support.peak_memory MODULE:FUNCTION WARM_UP_PATH MEASURED_PATH

`FUNCTION` is an `async def f(path: Path) -> None` of an importable module.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 1024 * 1024
# A call that hangs fails the test instead of stalling it.
TIMEOUT_SECONDS = 600


def peak_growth(target: str, warm_up: Path, measured: Path) -> int:
    """Return the bytes the process grew by, at its peak, while `target` read `measured`."""
    if not sys.platform.startswith("linux"):
        pytest.skip("peak memory is read from /proc (Linux)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(  # noqa: S603 - our own interpreter and this module
        [sys.executable, "-m", "tests.support.peak_memory", target, str(warm_up), str(measured)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return int(done.stdout.split()[-1])


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def _main() -> None:
    target, warm_up, measured = sys.argv[1:]
    module, _, name = target.partition(":")
    call = getattr(importlib.import_module(module), name)
    asyncio.run(call(Path(warm_up)))
    gc.collect()
    CLEAR_REFS.write_text("5")  # the peak (VmHWM) starts again from the current size
    before = _status("VmRSS")
    asyncio.run(call(Path(measured)))
    print(_status("VmHWM") - before)  # noqa: T201 - the parent reads it


if __name__ == "__main__":
    _main()

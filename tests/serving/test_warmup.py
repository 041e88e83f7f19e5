"""The start-up warm-up: a process imports what its registry's models need, and no more."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.servers import SRC

# Run in a fresh interpreter: the test process has imported everything already.
SCRIPT = """
import json, sys
from modelyard.serving.formats import Framework
from modelyard.serving.warmup import warm_up

warm_up([Framework.SKLEARN])
warmed = {name: name in sys.modules for name in ("sklearn", "skops.io", "pandas", "pyarrow")}
import pyarrow.parquet  # what a Parquet reader does later: it is still there
print(json.dumps({"warmed": warmed, "pyarrow_later": "pyarrow.parquet" in sys.modules}))
"""


def test_warming_up_scikit_learn_leaves_pyarrow_to_the_parquet_readers() -> None:
    result = subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
        [sys.executable, "-c", SCRIPT],
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    # scikit-learn imports pandas, which would import pyarrow (~35 MiB) if it could.
    assert report["warmed"] == {"sklearn": True, "skops.io": True, "pandas": True, "pyarrow": False}
    assert report["pyarrow_later"] is True


# The registry is asked by the caller (the app's lifespan): warm-up imports what it is told.
TOLD = """
import asyncio, json, sys
from modelyard.serving.formats import Framework
from modelyard.serving.probe import NoProber
from modelyard.serving.warmup import warm_up_process

async def in_use():
    if sys.argv[1] == "fails":
        raise OSError("the database is down")
    return {Framework(sys.argv[1])}

asyncio.run(warm_up_process(NoProber(), in_use))
names = ("sklearn", "onnxruntime", "modelyard.registry.service")
print(json.dumps({name: name in sys.modules for name in names}))
"""


def run_told(answer: str) -> dict[str, bool]:
    result = subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
        [sys.executable, "-c", TOLD, answer],
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, bool] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_warm_up_imports_the_frameworks_its_caller_names_and_never_the_registry() -> None:
    assert run_told("onnx") == {
        "sklearn": False,
        "onnxruntime": True,
        "modelyard.registry.service": False,
    }


def test_warm_up_falls_back_to_scikit_learn_when_the_registry_cannot_answer() -> None:
    assert run_told("fails") == {
        "sklearn": True,
        "onnxruntime": False,
        "modelyard.registry.service": False,
    }

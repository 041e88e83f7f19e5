"""The child-process probe: legit models are described, hostile files refused and contained."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import Settings
from modelyard.errors import ModelyardError, RateLimited, ServiceUnavailable
from modelyard.serving.formats import (
    Framework,
    ModelFormat,
    ModelRejected,
    UnsupportedModelFormat,
    detect_format,
)
from modelyard.serving.probe import ModelProber, ProbeReport
from tests.serving import hostile, legit
from tests.support.settings import PROBE_SOCKET

TEST_MEMORY_BYTES = 512 * 1024**2


async def assert_lr_probe_works(prober: ModelProber, legit_files: dict[str, Path]) -> None:
    report = await prober.probe(legit_files["lr_joblib"], ModelFormat.JOBLIB)
    assert report.classes == legit.IRIS_CLASSES


@pytest.mark.parametrize("case", legit.LEGIT_FILES, ids=lambda case: case.name)
async def test_probe_describes_legit_model(
    case: legit.LegitCase, legit_files: dict[str, Path], prober: ModelProber
) -> None:
    report = await prober.probe(legit_files[case.name], case.format)
    assert isinstance(report, ProbeReport)
    assert (report.framework, report.format) == (case.framework, case.format)
    assert report.task_type == case.task_type
    assert report.n_features == case.n_features
    assert report.classes == case.classes
    assert report.feature_names == case.feature_names
    assert report.has_proba == (case.task_type == "classification")
    assert report.outputs[0]["shape"][0] == -1


async def test_probe_reports_sklearn_details(
    legit_files: dict[str, Path], prober: ModelProber
) -> None:
    report = await prober.probe(legit_files["pipeline_skops"], ModelFormat.SKOPS)
    assert report.model_class == "sklearn.pipeline.Pipeline"
    assert report.outputs == [
        {"name": "predictions", "type": "int", "shape": [-1]},
        {"name": "probabilities", "type": "float", "shape": [-1, 3]},
    ]


@pytest.mark.parametrize("case", hostile.HOSTILE_FILES, ids=lambda case: case.name)
async def test_probe_refuses_hostile_file(
    case: hostile.HostileCase, tmp_path: Path, legit_files: dict[str, Path], prober: ModelProber
) -> None:
    marker = tmp_path / "marker"
    path = case.build(tmp_path, marker)
    with pytest.raises(ModelyardError) as info:
        await prober.probe(path, detect_format(path))
    assert info.value.status == case.status
    assert case.reason in info.value.detail
    assert not marker.exists()
    await assert_lr_probe_works(prober, legit_files)


async def test_probe_refuses_zlib_bomb_by_memory_limit(
    tmp_path: Path, legit_files: dict[str, Path]
) -> None:
    prober = ModelProber(
        timeout_seconds=30,
        memory_limit_bytes=TEST_MEMORY_BYTES,
        allow_pickle=True,
        socket_path=PROBE_SOCKET,
    )
    path = hostile.joblib_zlib_bomb(tmp_path, tmp_path / "marker")
    assert path.stat().st_size < 8 * 1024**2
    with pytest.raises(ModelRejected, match="needs more than 512 MiB"):
        await prober.probe(path, detect_format(path))
    await assert_lr_probe_works(prober, legit_files)


async def test_probe_times_out_on_slow_model(tmp_path: Path, legit_files: dict[str, Path]) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y = legit.iris()
    forest = RandomForestClassifier(n_estimators=400, random_state=0).fit(x, y)
    path = legit.write_joblib(forest, tmp_path / "big_forest.joblib")
    prober = ModelProber(
        timeout_seconds=0.05,
        memory_limit_bytes=2 * 1024**3,
        allow_pickle=True,
        socket_path=PROBE_SOCKET,
    )
    with pytest.raises(ModelRejected, match=r"took longer than 0\.05 s"):
        await prober.probe(path, ModelFormat.JOBLIB)


@pytest.mark.parametrize("name", ["lr_joblib", "lr_pickle", "lr_joblib_zlib"])
async def test_probe_refuses_pickle_when_disabled(name: str, legit_files: dict[str, Path]) -> None:
    prober = ModelProber(
        timeout_seconds=30,
        memory_limit_bytes=2 * 1024**3,
        allow_pickle=False,
        socket_path=PROBE_SOCKET,
    )
    with pytest.raises(UnsupportedModelFormat, match="pickle and joblib uploads are disabled"):
        await prober.probe(legit_files[name], detect_format(legit_files[name]))


async def test_probe_accepts_skops_when_pickle_disabled(legit_files: dict[str, Path]) -> None:
    prober = ModelProber.from_settings(Settings(allow_pickle=False, probe_socket=PROBE_SOCKET))
    report = await prober.probe(legit_files["lr_skops"], ModelFormat.SKOPS)
    assert report.framework is Framework.SKLEARN
    await prober.aclose()


async def test_probe_refuses_model_without_known_width(tmp_path: Path, prober: ModelProber) -> None:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(legit.iris()[0])
    path = legit.write_skops(scaler, tmp_path / "scaler.skops")
    with pytest.raises(ModelRejected, match="no predict method"):
        await prober.probe(path, ModelFormat.SKOPS)


def bounded_prober(*, max_concurrent: int, per_owner: int) -> ModelProber:
    return ModelProber(
        timeout_seconds=30,
        memory_limit_bytes=TEST_MEMORY_BYTES,
        allow_pickle=True,
        max_concurrent=max_concurrent,
        max_concurrent_per_owner=per_owner,
        socket_path=PROBE_SOCKET,
    )


async def test_probe_past_the_per_user_bound_answers_429_with_retry_after(
    legit_files: dict[str, Path],
) -> None:
    prober = bounded_prober(max_concurrent=2, per_owner=1)
    path = legit_files["onnx_regressor"]
    with prober.slot("alice"):
        with pytest.raises(RateLimited) as info:
            await prober.probe(path, ModelFormat.ONNX, owner="alice")
        assert info.value.status == 429
        assert info.value.headers["Retry-After"] == "5"
        assert "already have 1 uploads being checked" in info.value.detail
        # Another user still gets the process's second slot.
        report = await prober.probe(path, ModelFormat.ONNX, owner="bob")
        assert report.n_features == 5
    assert (await prober.probe(path, ModelFormat.ONNX, owner="alice")).n_features == 5
    await prober.aclose()


async def test_probe_past_the_process_bound_answers_503_with_retry_after(
    legit_files: dict[str, Path],
) -> None:
    prober = bounded_prober(max_concurrent=1, per_owner=1)
    path = legit_files["onnx_regressor"]
    with prober.slot("alice"):
        with pytest.raises(ServiceUnavailable) as info:
            await prober.probe(path, ModelFormat.ONNX, owner="bob")
        assert info.value.status == 503
        assert info.value.headers["Retry-After"] == "5"
    assert (await prober.probe(path, ModelFormat.ONNX, owner="bob")).n_features == 5
    await prober.aclose()


async def test_refused_probe_gives_back_no_slot(legit_files: dict[str, Path]) -> None:
    prober = bounded_prober(max_concurrent=1, per_owner=1)
    with pytest.raises(ModelRejected):
        await prober.probe(legit_files["lr_skops"], ModelFormat.ONNX, owner="alice")
    assert (await prober.probe(legit_files["onnx_regressor"], ModelFormat.ONNX)).n_features == 5
    await prober.aclose()


class RecordingExecutor(ThreadPoolExecutor):
    """A default executor that records what is submitted to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted: list[Callable[..., Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted.append(fn)
        return super().submit(fn, *args, **kwargs)


async def test_probe_waits_outside_the_default_thread_pool(
    legit_files: dict[str, Path], prober: ModelProber
) -> None:
    # The pool password hashing and file I/O share: 12 waiting probes once starved a login.
    executor = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)

    await prober.probe(legit_files["onnx_regressor"], ModelFormat.ONNX, owner="alice")
    await prober.probe(legit_files["lr_skops"], ModelFormat.SKOPS, owner="alice")

    assert executor.submitted == []

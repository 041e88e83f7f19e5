"""The numbers of drift, against numpy and scipy computed independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from modelyard.drift import stats


def summarise(values: np.ndarray, chunk: int = 997) -> dict[str, object]:
    accumulator = stats.FeatureAccumulator(stats.new_rng())
    for start in range(0, values.size, chunk):
        accumulator.add(values[start : start + chunk])
    return accumulator.summary()


def test_moments_are_exact_whatever_the_chunks() -> None:
    values = np.random.default_rng(1).normal(3.0, 2.0, 25_000)
    summary = summarise(values)
    assert summary["count"] == values.size
    assert summary["missing"] == 0
    assert summary["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert summary["std"] == pytest.approx(values.std(ddof=1), rel=1e-10)
    assert (summary["min"], summary["max"]) == (values.min(), values.max())


def test_nan_and_infinities_count_as_missing() -> None:
    values = np.array([1.0, np.nan, 2.0, np.inf, -np.inf, 3.0] * 20)
    summary = summarise(values, chunk=7)
    assert (summary["count"], summary["missing"]) == (60, 60)
    assert summary["mean"] == pytest.approx(2.0)


def test_small_references_keep_exact_deciles_and_every_value() -> None:
    values = np.random.default_rng(2).exponential(1.0, 1_500)
    summary = summarise(values)
    cuts = np.quantile(values, np.arange(1, 10) / 10)
    assert summary["cuts"] == pytest.approx(cuts.tolist())
    counts, _ = np.histogram(values, bins=[-np.inf, *cuts, np.inf])
    assert summary["proportions"] == pytest.approx((counts / values.size).tolist())
    assert summary["sample"] == sorted(values.tolist())


def test_large_references_keep_bounded_uniform_samples() -> None:
    values = np.random.default_rng(3).uniform(0, 1, 60_000)
    summary = summarise(values, chunk=4_096)
    sample = np.asarray(summary["sample"])
    assert sample.size == stats.KS_SAMPLE_SIZE
    assert len(set(sample.tolist()) - set(values.tolist())) == 0
    # A uniform sample of a uniform variable: a KS test against U(0, 1) does not reject it...
    assert scipy_stats.kstest(sample, "uniform").pvalue > 0.01
    # ...and the reservoir's deciles are close to the true ones (values arrive sorted here, the
    # worst order for a sample that would only keep the first or the last values).
    ordered = summarise(np.sort(values), chunk=4_096)
    assert ordered["cuts"] == pytest.approx(np.arange(1, 10) / 10, abs=0.02)
    assert ordered["proportions"] == pytest.approx([0.1] * 10, abs=1e-3)


def test_ties_merge_cuts_and_values_on_a_cut_go_above() -> None:
    values = np.array([0.0] * 85 + [1.0] * 15)
    summary = summarise(values)
    assert summary["cuts"] == [0.0, 1.0]
    assert summary["proportions"] == [0.0, 0.85, 0.15]


def test_psi_is_the_floored_sum_and_reads_by_the_thresholds() -> None:
    expected = np.array([0.5, 0.5, 0.0])
    actual = np.array([0.25, 0.5, 0.25])
    floor = 1e-4
    by_hand = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.25 - floor) * np.log(0.25 / floor)
    assert stats.psi(expected, actual) == pytest.approx(by_hand)
    assert stats.psi(expected, expected) == 0.0
    assert [stats.psi_level(x) for x in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "significant",
        "significant",
    ]


def test_compare_needs_enough_rows() -> None:
    reference = summarise(np.random.default_rng(4).normal(size=500))
    few = stats.compare(reference, np.array([0.0] * (stats.MIN_WINDOW_ROWS - 1) + [np.nan]))
    assert few.psi is None
    assert few.drifted is False
    assert few.missing == 1
    assert few.reason is not None
    assert str(stats.MIN_WINDOW_ROWS) in few.reason


def test_wide_models_keep_smaller_ks_samples_within_a_total() -> None:
    assert stats.ks_sample_size(4) == stats.KS_SAMPLE_SIZE
    assert stats.ks_sample_size(200) == stats.KS_SAMPLE_SIZE
    assert stats.ks_sample_size(1_000) == 400
    assert stats.ks_sample_size(100_000) == stats.KS_MIN_SAMPLE_SIZE
    accumulator = stats.FeatureAccumulator(stats.new_rng())
    accumulator.add(np.arange(5_000, dtype=np.float64))
    assert len(accumulator.summary(400)["sample"]) == 400

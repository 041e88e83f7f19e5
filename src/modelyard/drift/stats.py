"""The numbers behind drift: a feature's reference summary, built in one bounded pass, and the
population stability index and two-sample Kolmogorov-Smirnov test that compare a window with it.

A reference keeps, per numeric feature: count, missing, mean, std, min, max (exact, whatever the
number of rows), the decile cuts and the share of the reference in each of the ten bins, and a
sample of at most `KS_SAMPLE_SIZE` values for the KS test (fewer past 200 features, see
`ks_sample_size`). Cuts and shares come from a uniform reservoir of at most
`QUANTILE_SAMPLE_SIZE` values: exact up to that many rows, estimated from the reservoir beyond
it. Memory per feature is bounded by the reservoir, not by the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The population stability index's usual reading (Siddiqi, "Credit Risk Scorecards"):
# below 0.1 stable, 0.1 up to 0.25 a moderate shift, 0.25 and above a significant one.
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
# A bin that holds no value on one side would make the index infinite: shares are floored here.
PSI_EPSILON = 1e-4
# The KS test flags a feature below this p-value...
KS_P_VALUE = 0.01
# ...and neither test says anything on fewer rows than this in the window.
MIN_WINDOW_ROWS = 50
DECILES = tuple(i / 10 for i in range(1, 10))
QUANTILE_SAMPLE_SIZE = 10_000
KS_SAMPLE_SIZE = 2_000
# Values kept for KS tests over all of a version's features, so that a reference of a very wide
# model stays a row of a few MB: past 200 features each keeps fewer, never fewer than 200.
KS_TOTAL_VALUES = 400_000
KS_MIN_SAMPLE_SIZE = 200
# Fixed, so that the same file always gives the same reference.
SEED = 20261129

NUMERIC_TYPES = frozenset({"float", "int", "bool"})


class FeatureAccumulator:
    """Summarises one numeric feature's values, fed in chunks, in bounded memory.

    Moments are merged chunk by chunk (Chan et al.); the reservoir is Vitter's algorithm R.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.count = 0
        self.missing = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._reservoir = np.empty(QUANTILE_SAMPLE_SIZE, dtype=np.float64)

    def add(self, values: np.ndarray) -> None:
        """Add a chunk of values; NaN and infinities count as missing."""
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        self.missing += int(values.size - finite.sum())
        values = values[finite]
        n = int(values.size)
        if n == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self._mean
        self._mean += delta * n / total
        self._m2 += m2 + delta * delta * self.count * n / total
        self._min = min(self._min, float(values.min()))
        self._max = max(self._max, float(values.max()))
        self._sample(values)
        self.count = total

    def _sample(self, values: np.ndarray) -> None:
        seen = self.count
        room = max(0, QUANTILE_SAMPLE_SIZE - seen)
        head = values[:room]
        self._reservoir[seen : seen + head.size] = head
        rest = values[head.size :]
        if rest.size:
            # Value i (0-based, over all values seen) replaces a random slot with chance K/(i+1).
            positions = np.arange(seen + head.size, seen + values.size, dtype=np.int64)
            slots = self._rng.integers(0, positions + 1)
            kept = slots < QUANTILE_SAMPLE_SIZE
            self._reservoir[slots[kept]] = rest[kept]

    def summary(self, ks_sample_size: int = KS_SAMPLE_SIZE) -> dict[str, Any]:
        """Return the feature's reference summary (see the module's docstring), keeping at most
        `ks_sample_size` values for the KS test.

        Raises:
            ValueError: no finite value was added.
        """
        if self.count == 0:
            raise ValueError("no numeric values")
        sample = self._reservoir[: min(self.count, QUANTILE_SAMPLE_SIZE)]
        cuts = decile_cuts(sample)
        proportions = bin_proportions(sample, cuts)
        if sample.size > ks_sample_size:
            ks_sample = self._rng.choice(sample, ks_sample_size, replace=False)
        else:
            ks_sample = sample.copy()
        std = math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0
        return {
            "kind": "numeric",
            "count": self.count,
            "missing": self.missing,
            "mean": self._mean,
            "std": std,
            "min": self._min,
            "max": self._max,
            "cuts": cuts.tolist(),
            "proportions": proportions.tolist(),
            "sample": np.sort(ks_sample).tolist(),
        }


def ks_sample_size(numeric_features: int) -> int:
    """Return the KS sample size of each feature of a reference with this many numeric ones."""
    share = KS_TOTAL_VALUES // max(1, numeric_features)
    return max(KS_MIN_SAMPLE_SIZE, min(KS_SAMPLE_SIZE, share))


def new_rng() -> np.random.Generator:
    """Return the generator references are built with (fixed seed: reproducible references)."""
    return np.random.default_rng(SEED)


def decile_cuts(values: np.ndarray) -> np.ndarray:
    """Return the distinct inner decile edges of `values`: the nine deciles, ties merged.

    The outer bins are open, so values outside the reference's range still fall in a bin.
    """
    return np.unique(np.quantile(values, DECILES))


def bin_proportions(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Return the share of `values` in each bin `cuts` make (a value equal to a cut goes above)."""
    counts = np.bincount(np.searchsorted(cuts, values, side="right"), minlength=cuts.size + 1)
    return counts / max(1, values.size)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Return the population stability index of two bin shares: sum of (a - e) * ln(a / e).

    Shares are floored at `PSI_EPSILON` first, so an empty bin costs much, never infinity.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_EPSILON)
    return float(((a - e) * np.log(a / e)).sum())


def psi_level(value: float) -> str:
    """Read a PSI: "stable" (< 0.1), "moderate" (< 0.25) or "significant"."""
    if value < PSI_MODERATE:
        return "stable"
    if value < PSI_SIGNIFICANT:
        return "moderate"
    return "significant"


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """How a window's values of one numeric feature compare with its reference."""

    rows: int
    missing: int
    mean: float | None
    psi: float | None
    psi_level: str | None
    ks_statistic: float | None
    ks_p_value: float | None
    ks_flagged: bool
    drifted: bool
    reason: str | None


def compare(reference: dict[str, Any], window: np.ndarray) -> FeatureDrift:
    """Compare a window's values of a feature (NaN: missing) with its reference summary.

    Below `MIN_WINDOW_ROWS` finite values nothing is computed and the reason says so.
    """
    finite = window[np.isfinite(window)]
    rows, missing = int(finite.size), int(window.size - finite.size)
    if rows < MIN_WINDOW_ROWS:
        return FeatureDrift(
            rows=rows, missing=missing, mean=float(finite.mean()) if rows else None,
            psi=None, psi_level=None, ks_statistic=None, ks_p_value=None, ks_flagged=False,
            drifted=False, reason=f"{rows} values in the window; at least {MIN_WINDOW_ROWS} needed",
        )  # fmt: skip
    cuts = np.asarray(reference["cuts"], dtype=np.float64)
    index = psi(np.asarray(reference["proportions"]), bin_proportions(finite, cuts))
    # Imported here: scipy.stats weighs ~70 MiB, and only a drift report needs it.
    from scipy import stats as scipy_stats

    test = scipy_stats.ks_2samp(np.asarray(reference["sample"], dtype=np.float64), finite)
    statistic, p_value = float(test.statistic), float(test.pvalue)
    level = psi_level(index)
    flagged = p_value < KS_P_VALUE
    return FeatureDrift(
        rows=rows, missing=missing, mean=float(finite.mean()), psi=index, psi_level=level,
        ks_statistic=statistic, ks_p_value=p_value, ks_flagged=flagged,
        drifted=flagged or level == "significant", reason=None,
    )  # fmt: skip

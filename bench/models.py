"""The two benchmark models, built the same way in every interpreter that serves them.

Run by the project's venv (skops files for Modelyard and the floor) and by MLServer's own venv
(joblib files, so they load with that venv's scikit-learn): `python bench/models.py DIR FORMAT`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

SEED = 42
MODEL_NAMES = ("lr", "rf")


def dataset(name: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Return the features and labels a model is trained on (and requests are drawn from)."""
    if name == "lr":
        x, y = load_iris(return_X_y=True)
        return np.asarray(x, dtype=np.float64), np.asarray(y)
    if name == "rf":
        x, y = make_classification(
            n_samples=2000, n_features=20, n_informative=10, n_classes=3, random_state=SEED
        )
        return np.asarray(x, dtype=np.float64), np.asarray(y)
    raise ValueError(f"unknown model {name!r}")


def build(name: str) -> Any:
    """Fit one benchmark model: iris logistic regression or a 100-tree random forest."""
    x, y = dataset(name)
    if name == "lr":
        return LogisticRegression(max_iter=500).fit(x, y)
    return RandomForestClassifier(n_estimators=100, random_state=SEED, n_jobs=1).fit(x, y)


def save(model: Any, path: Path, fmt: str) -> None:
    """Write `model` to `path` as skops or joblib."""
    if fmt == "skops":
        import skops.io

        skops.io.dump(model, path)
    elif fmt == "joblib":
        import joblib

        joblib.dump(model, path)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def main(argv: list[str]) -> int:
    out, fmt = Path(argv[1]), argv[2]
    out.mkdir(parents=True, exist_ok=True)
    for name in argv[3:] or MODEL_NAMES:
        save(build(name), out / f"{name}.{fmt}", fmt)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

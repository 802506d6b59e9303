"""The scikit-learn sets read from their shipped files match scikit-learn's own loaders."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from p2pfl.datasets import sklearn_sets
from p2pfl.datasets.base import Source

ROOT = Path(__file__).resolve().parents[3]

SETS = [
    (sklearn_sets.digits_source, load_digits),
    (sklearn_sets.breast_cancer_source, load_breast_cancer),
]


def features(source: Source, rows: int) -> np.ndarray:
    every = np.arange(rows)
    transform = source.fit(every)
    return np.asarray(transform(every))


@pytest.mark.parametrize(("source", "loader"), SETS)
def test_the_file_read_gives_what_the_loader_gives(
    source: Callable[[], Source], loader: Callable[..., tuple[np.ndarray, np.ndarray]]
) -> None:
    x, y = loader(return_X_y=True)
    read = source()
    np.testing.assert_array_equal(read.labels, y)
    assert read.input_shape == (x.shape[1],) and read.num_classes == int(y.max()) + 1
    expected = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
    np.testing.assert_allclose(features(read, len(y)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("source", "loader"), SETS)
def test_without_the_files_the_loaders_are_used(
    source: Callable[[], Source],
    loader: Callable[..., tuple[np.ndarray, np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    direct = source()
    monkeypatch.setattr(sklearn_sets, "_shipped", lambda name: None)
    fallback = source()
    np.testing.assert_array_equal(fallback.labels, direct.labels)
    rows = len(direct.labels)
    np.testing.assert_array_equal(features(fallback, rows), features(direct, rows))


def test_reading_digits_does_not_import_sklearn() -> None:
    code = (
        "import sys\n"
        "from p2pfl.datasets.sklearn_sets import digits_source\n"
        "digits_source()\n"
        "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

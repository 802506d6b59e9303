"""UCI Heart Disease, four real hospitals, from the CSV vendored in ``p2pfl/data``.

Target: ``num > 0`` (any angiographic disease), so two classes. The sites are
the column ``dataset``: Cleveland (304 rows), Hungary (293), Switzerland (123)
and VA Long Beach (200). ``id`` and ``dataset`` are not features.

Preprocessing, fixed by the schema below so every node has the same layout:

- Missing values are blank cells. A cholesterol of 0 (all of Switzerland and
  49 VA rows) and a resting blood pressure of 0 (one VA row) are physiologically
  impossible and are recorded as missing too.
- Numeric columns (age, trestbps, chol, thalch, oldpeak, ca) are standardised;
  a missing value becomes 0 after standardising, i.e. it is imputed with the
  training mean. Columns with many missing values (over 5% of the table; all
  numeric ones but age) also get a 0/1 missingness indicator, because here
  missingness is informative (it mostly says which hospital a row comes from).
- Categorical columns (sex, cp, fbs, restecg, exang, slope, thal) are one-hot,
  each with an explicit ``missing`` level; they are not standardised.

The standardisation mean and std are computed from the training rows only (the
union of the nodes' training splits), never from a node's or the global test
set. That pools the sites' training rows, which a real federation would not do
in the clear: it would compute them per site, or pool the per-site sums and
sums of squares with secure aggregation, which gives these same numbers. The
missingness indicators and category levels are part of the schema, not learnt
from data, so they leak nothing.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np

from p2pfl.datasets.base import Source, Transform
from p2pfl.errors import DataError

SITES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")
ZERO_IS_MISSING = ("trestbps", "chol")
MISSING_INDICATORS = ("trestbps", "chol", "thalch", "oldpeak", "ca")
MISSING = "missing"
CATEGORICAL: dict[str, tuple[str, ...]] = {
    "sex": ("Female", "Male"),
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "fbs": ("FALSE", "TRUE"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
    "exang": ("FALSE", "TRUE"),
    "slope": ("upsloping", "flat", "downsloping"),
    "thal": ("normal", "fixed defect", "reversable defect"),
}
COLUMNS = ("id", "dataset", *NUMERIC, *CATEGORICAL, "num")


def feature_names() -> tuple[str, ...]:
    """Names of the feature columns, in order."""
    return (
        *NUMERIC,
        *(f"{c}_missing" for c in MISSING_INDICATORS),
        *(f"{c}={level}" for c, levels in CATEGORICAL.items() for level in (*levels, MISSING)),
    )


def read_rows() -> list[dict[str, str]]:
    """The vendored CSV as dictionaries, checked for the expected columns."""
    text = resources.files("p2pfl").joinpath("data/heart_disease_uci.csv").read_text("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    absent = set(COLUMNS) - set(reader.fieldnames or ())
    if absent:
        raise DataError(f"heart_disease_uci.csv lacks columns: {', '.join(sorted(absent))}")
    return list(reader)


def _number(row: dict[str, str], column: str, line: int) -> float:
    cell = row[column].strip()
    if not cell:
        return np.nan
    try:
        value = float(cell)
    except ValueError:
        msg = f"heart_disease_uci.csv row {line}: {column}={cell!r} is not a number"
        raise DataError(msg) from None
    return np.nan if value == 0 and column in ZERO_IS_MISSING else value


def _one_hot(rows: list[dict[str, str]]) -> np.ndarray:
    blocks = []
    for column, levels in CATEGORICAL.items():
        all_levels = (*levels, MISSING)
        block = np.zeros((len(rows), len(all_levels)), dtype=np.float32)
        for i, row in enumerate(rows):
            value = row[column].strip() or MISSING
            if value not in all_levels:
                raise DataError(f"heart_disease_uci.csv row {i + 2}: unknown {column}={value!r}")
            block[i, all_levels.index(value)] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def heart_source() -> Source:
    """The 920 rows, labels ``num > 0``, sites in the order of ``SITES``."""
    rows = read_rows()
    site_of = {name: code for code, name in enumerate(SITES)}
    unknown = {r["dataset"] for r in rows} - set(SITES)
    if unknown:
        raise DataError(f"heart_disease_uci.csv names unknown sites: {', '.join(sorted(unknown))}")
    sites = np.array([site_of[r["dataset"]] for r in rows], dtype=np.int64)
    try:
        labels = np.array([int(r["num"]) > 0 for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"heart_disease_uci.csv: bad value in column num: {exc}") from exc
    numeric = np.array(
        [[_number(r, c, i + 2) for c in NUMERIC] for i, r in enumerate(rows)], dtype=np.float64
    )
    indicators = np.isnan(numeric[:, [NUMERIC.index(c) for c in MISSING_INDICATORS]])
    categorical = _one_hot(rows)

    def fit(train_rows: np.ndarray) -> Transform:
        mean, std = _observed_stats(numeric[train_rows])

        def transform(which: np.ndarray) -> np.ndarray:
            z = np.nan_to_num((numeric[which] - mean) / std, nan=0.0)
            parts = [z, indicators[which], categorical[which]]
            return np.concatenate(parts, axis=1).astype(np.float32)

        return transform

    return Source(
        labels=labels,
        num_classes=2,
        input_shape=(len(feature_names()),),
        fit=fit,
        sites=sites,
        site_names=SITES,
    )


def _observed_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of the non-missing values (0 and 1 for a column with none)."""
    observed = ~np.isnan(values)
    count = observed.sum(axis=0)
    filled = np.where(observed, values, 0.0)
    safe = np.maximum(count, 1)
    mean = filled.sum(axis=0) / safe
    var = (np.where(observed, values - mean, 0.0) ** 2).sum(axis=0) / safe
    std = np.sqrt(var)
    return mean, np.where(std > 1e-12, std, 1.0)

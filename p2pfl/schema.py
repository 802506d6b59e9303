"""The plan's data schema, and a check of local data against it that sends nothing anywhere.

Every site of a federation must hand the model the same columns, in the same
units and ranges: a site whose cholesterol is in mmol/L where the others use
mg/dL, or whose missing values arrive as NaN where the others impute them,
silently spoils the shared model. The plan names the columns the data
entrypoint returns (after the site's own preprocessing), and each node checks
its data against them before it trains::

    [data.schema]
    label = "disease"                      # optional: what the label means
    classes = ["no disease", "disease"]    # optional: class names, label value = index
    features = [
      { name = "age", type = "float", unit = "years", min = 18.0, max = 100.0 },
      { name = "sex", type = "category", values = [0, 1] },
      { name = "chol", type = "float", unit = "mg/dL", max_missing_rate = 0.1 },
    ]

A feature's ``type`` is ``float`` (any finite number), ``int`` (whole
numbers) or ``category`` (one of ``values``); ``min``/``max`` bound the
values (inclusive); ``max_missing_rate`` is the largest fraction of NaN cells
allowed (0 by default). Features are the flattened columns of one sample, in
order, unless the data names its columns.

``validate`` reports counts and fractions only: never a value, never a row
index. The report is what a node writes to its audit log and prints, so it
must say what is wrong without showing the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pfl.errors import ConfigError
from p2pfl.tables import build

TYPES = ("float", "int", "category")


@dataclass(frozen=True)
class Feature:
    """One column: its name, type, unit, bounds or allowed values, and missing-value budget."""

    name: str
    type: str = "float"
    unit: str = ""
    min: float | None = None
    max: float | None = None
    values: list[float] | None = None
    max_missing_rate: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a feature needs a non-empty name")
        if self.type not in TYPES:
            raise ConfigError(f"type {self.type!r} is not one of {', '.join(TYPES)}")
        if self.type == "category":
            if not self.values:
                raise ConfigError("a category needs its allowed values (key 'values')")
            if self.min is not None or self.max is not None:
                raise ConfigError("a category takes 'values', not 'min'/'max'")
        elif self.values is not None:
            raise ConfigError(f"'values' is for categories; a {self.type} takes 'min'/'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"min {self.min} is above max {self.max}")
        if not 0.0 <= self.max_missing_rate <= 1.0:
            raise ConfigError(f"max_missing_rate {self.max_missing_rate} is not in [0, 1]")


@dataclass(frozen=True)
class Schema:
    """The columns every site's data must have, and optionally what the label means."""

    features: tuple[Feature, ...]
    label: str = ""
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"feature names repeat: {', '.join(repeated)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


@dataclass(frozen=True)
class _SchemaTable:
    """The TOML form of ``Schema`` (features as tables), for ``p2pfl.tables.build``."""

    features: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""
    classes: list[str] = field(default_factory=list)


def parse_schema(table: Any, where: str = "plan [data.schema]") -> Schema:
    """A ``Schema`` from its TOML table; ``ConfigError`` naming the key or feature at fault."""
    raw = build(_SchemaTable, table, where)
    if not raw.features:
        raise ConfigError(f"{where}: 'features' must list at least one feature")
    features = []
    for index, item in enumerate(raw.features):
        name = item.get("name") if isinstance(item, dict) else None
        at = f"{where} features[{index}]" + (f" ({name!r})" if name else "")
        try:
            features.append(build(Feature, item, at))
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if message.startswith(at) else f"{at}: {message}") from None
    try:
        return Schema(tuple(features), raw.label, tuple(raw.classes))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# -- validation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One thing wrong with one column: its kind, how many cells, what fraction of the rows."""

    feature: str
    kind: str  # missing-column, unexpected-column, out-of-range, not-allowed, wrong-type,
    #            missing-values, label
    count: int
    fraction: float
    rule: str  # what the schema allows (never what the data holds)

    def describe(self) -> str:
        if self.kind in ("missing-column", "unexpected-column"):
            return f"{self.feature}: {self.kind.replace('-', ' ')}"
        return (
            f"{self.feature}: {self.count} {self.kind.replace('-', ' ')} "
            f"({100 * self.fraction:.1f}% of rows; {self.rule})"
        )


@dataclass(frozen=True)
class SchemaReport:
    """What ``validate`` found: the rows checked and the violations (empty when the data fit)."""

    rows: int
    features: int
    violations: tuple[Violation, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> dict[str, Any]:
        """Counts only, for the audit log and status: safe to show anyone."""
        return {
            "rows": self.rows,
            "features": self.features,
            "ok": self.ok,
            "violations": [
                {"feature": v.feature, "kind": v.kind, "count": v.count,
                 "fraction": round(v.fraction, 6), "rule": v.rule}
                for v in self.violations
            ],
        }  # fmt: skip

    def describe(self) -> str:
        head = f"{self.rows} rows, {self.features} features checked against the plan's schema"
        if self.ok:
            return f"{head}: no violations"
        lines = [f"{head}: {len(self.violations)} violations"]
        lines += [f"  {v.describe()}" for v in self.violations]
        return "\n".join(lines)


def validate(
    schema: Schema,
    x: Any,
    feature_names: Sequence[str] | None = None,
    y: Any = None,
) -> SchemaReport:
    """Check samples ``x`` (rows of any shape, flattened) and labels ``y`` against ``schema``.

    Columns are matched by ``feature_names`` when given (the data's own column
    names), else by position. Nothing but counts leaves this function.
    """
    table = _as_rows(x)
    rows = table.shape[0]
    columns, violations = _match_columns(schema, table.shape[1], feature_names)
    for feature in schema.features:
        j = columns.get(feature.name)
        if j is not None:
            violations += _check_column(feature, table[:, j], rows)
    if y is not None:
        violations += _check_labels(schema, y)
    return SchemaReport(rows, len(schema.features), tuple(violations))


def _as_rows(x: Any) -> npt.NDArray[Any]:
    array = np.asarray(x)
    if array.ndim == 0:
        raise ConfigError("the data to check is a single value, not rows of samples")
    return array.reshape(array.shape[0], -1)


def _match_columns(
    schema: Schema, width: int, feature_names: Sequence[str] | None
) -> tuple[dict[str, int], list[Violation]]:
    """Where each schema feature is in the data, and the columns missing or unexpected."""
    if feature_names is None:
        known = list(schema.names[:width])
        names = known + [f"column {j}" for j in range(len(known), width)]
    else:
        if len(feature_names) != width:
            raise ConfigError(
                f"the data names {len(feature_names)} columns but has {width} per sample"
            )
        names = list(feature_names)
    where = {name: j for j, name in enumerate(names)}
    missing = [n for n in schema.names if n not in where]
    extra = [n for n in names if n not in set(schema.names)]
    violations = [Violation(n, "missing-column", 0, 0.0, "the schema needs it") for n in missing]
    violations += [Violation(n, "unexpected-column", 0, 0.0, "not in the schema") for n in extra]
    return {n: j for n, j in where.items() if n in set(schema.names)}, violations


def _check_column(feature: Feature, column: npt.NDArray[Any], rows: int) -> list[Violation]:
    values, unreadable = _numbers(column)
    found: list[Violation] = []

    def add(kind: str, count: int, rule: str) -> None:
        if count:
            found.append(Violation(feature.name, kind, count, count / max(rows, 1), rule))

    nan = np.isnan(values)
    missing = int((nan & ~unreadable).sum())
    if rows and missing / rows > feature.max_missing_rate:
        add("missing-values", missing, f"at most {100 * feature.max_missing_rate:g}% missing")
    present = values[~nan]
    infinite = int(np.isinf(present).sum())
    add("wrong-type", int(unreadable.sum()) + infinite, f"{feature.type}: finite numbers only")
    present = present[np.isfinite(present)]
    if feature.type in ("int", "category"):
        fractional = int((present != np.round(present)).sum())
        add("wrong-type", fractional, f"{feature.type}: whole numbers")
    if feature.type == "category":
        allowed = np.asarray(feature.values, dtype=np.float64)
        add("not-allowed", int((~np.isin(present, allowed)).sum()), f"one of {_values(feature)}")
    low = feature.min if feature.min is not None else -math.inf
    high = feature.max if feature.max is not None else math.inf
    outside = int(((present < low) | (present > high)).sum())
    bounds = f"[{_bound(feature.min, '-inf')}, {_bound(feature.max, 'inf')}]"
    add("out-of-range", outside, f"allowed {bounds}")
    return found


def _numbers(
    column: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The column as float64 (NaN where missing or unreadable), and where it is not a number."""
    bad = np.zeros(column.shape, dtype=bool)
    if column.dtype.kind in "biuf":
        return column.astype(np.float64), bad
    out = np.full(column.shape, np.nan)
    for i, cell in enumerate(column.tolist()):
        if cell is None:
            continue
        try:
            if isinstance(cell, str | bytes):
                raise TypeError
            out[i] = float(cell)
        except (TypeError, ValueError):
            bad[i] = True
    return out, bad


def _check_labels(schema: Schema, y: Any) -> list[Violation]:
    labels = np.asarray(y).reshape(-1)
    if not schema.classes or labels.size == 0:
        return []
    values, unreadable = _numbers(labels)
    bad = int((unreadable | ~np.isin(values, np.arange(len(schema.classes)))).sum())
    if not bad:
        return []
    name = schema.label or "label"
    rule = f"0..{len(schema.classes) - 1} ({', '.join(schema.classes)})"
    return [Violation(name, "label", bad, bad / labels.size, rule)]


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"


def _values(feature: Feature) -> str:
    shown = [f"{v:g}" for v in (feature.values or [])[:8]]
    more = len(feature.values or []) - len(shown)
    return "{" + ", ".join(shown) + (f", ... {more} more" if more > 0 else "") + "}"


def schema_table(schema: Schema) -> dict[str, Any]:
    """The TOML/ledger form of ``schema`` (what ``parse_schema`` reads back)."""
    features = []
    for f in schema.features:
        item: dict[str, Any] = {"name": f.name, "type": f.type}
        optional: Mapping[str, Any] = {
            "unit": f.unit or None,
            "min": f.min,
            "max": f.max,
            "values": f.values,
            "max_missing_rate": f.max_missing_rate or None,
        }
        item.update({k: v for k, v in optional.items() if v is not None})
        features.append(item)
    table: dict[str, Any] = {"features": features}
    if schema.label:
        table["label"] = schema.label
    if schema.classes:
        table["classes"] = list(schema.classes)
    return table

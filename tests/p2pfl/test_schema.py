"""``p2pfl.schema``: parsing the plan's data schema, and validating data against it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfl.cli.federation import read_plan
from p2pfl.datasets.heart import feature_names
from p2pfl.errors import ConfigError
from p2pfl.node.errors import PlanError
from p2pfl.node.examples import HEART_SITES, heart_schema, heart_site
from p2pfl.schema import parse_schema, schema_table, validate
from p2pfl.spec import plan_from_table

ROOT = Path(__file__).resolve().parents[2]

TABLE: dict[str, Any] = {
    "label": "disease",
    "classes": ["no", "yes"],
    "features": [
        {"name": "age", "type": "float", "unit": "years", "min": 18, "max": 100},
        {"name": "sex", "type": "category", "values": [0, 1]},
        {"name": "visits", "type": "int", "min": 0},
        {"name": "chol", "type": "float", "unit": "mg/dL", "max_missing_rate": 0.25},
    ],
}


def good_rows() -> np.ndarray:
    return np.array(
        [[40.0, 0, 1, 200.0], [65.0, 1, 0, np.nan], [33.0, 1, 7, 180.0], [80.0, 0, 2, 250.0]]
    )


# -- parsing -------------------------------------------------------------------------------


def test_a_schema_parses_and_round_trips() -> None:
    schema = parse_schema(TABLE)
    assert schema.names == ("age", "sex", "visits", "chol")
    assert schema.features[0].unit == "years" and schema.features[0].min == 18.0
    assert schema.features[1].values == [0.0, 1.0]
    assert schema.features[3].max_missing_rate == 0.25 and schema.classes == ("no", "yes")
    assert parse_schema(schema_table(schema)) == schema


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mn": 3}, r"features\[0\] \('age'\): unknown key 'mn'"),
        ({"type": "text"}, r"features\[0\] \('age'\): type 'text' is not one of"),
        ({"min": "low"}, r"features\[0\] \('age'\): key 'min'"),
        ({"min": 200}, r"features\[0\] \('age'\): min 200.0 is above max 100.0"),
        ({"max_missing_rate": 2}, r"max_missing_rate 2.0 is not in \[0, 1\]"),
        ({"values": [1, 2]}, r"'values' is for categories"),
        ({"name": ""}, r"features\[0\].*non-empty name"),
    ],
)
def test_a_bad_feature_is_named_with_the_key_at_fault(change: dict[str, Any], message: str) -> None:
    table = {**TABLE, "features": [{**TABLE["features"][0], **change}, *TABLE["features"][1:]]}
    with pytest.raises(ConfigError, match=message):
        parse_schema(table)


def test_schema_level_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'featurs'"):
        parse_schema({"featurs": []})
    with pytest.raises(ConfigError, match="at least one feature"):
        parse_schema({"features": []})
    with pytest.raises(ConfigError, match="needs its allowed values"):
        parse_schema({"features": [{"name": "sex", "type": "category"}]})
    with pytest.raises(ConfigError, match="repeat: age"):
        parse_schema({"features": [{"name": "age"}, {"name": "age"}]})
    with pytest.raises(ConfigError, match="expected a table"):
        parse_schema(["age", "sex"])  # the old list-of-names form is not a schema


# -- validation ----------------------------------------------------------------------------


def test_data_that_fit_have_no_violations() -> None:
    report = validate(parse_schema(TABLE), good_rows(), y=np.array([0, 1, 1, 0]))
    assert report.ok and report.rows == 4 and report.features == 4
    assert "no violations" in report.describe()


def test_out_of_range_values_are_counted_never_shown() -> None:
    x = good_rows()
    x[0, 0], x[2, 0] = 4.2, 123.456  # age in decades at one row, a typo at another
    report = validate(parse_schema(TABLE), x)
    (violation,) = report.violations
    assert (violation.feature, violation.kind, violation.count) == ("age", "out-of-range", 2)
    assert violation.fraction == 0.5 and violation.rule == "allowed [18, 100]"
    text = report.describe() + repr(report.summary())
    assert "4.2" not in text and "123.456" not in text  # the values never leave
    assert "age: 2 out of range (50.0% of rows; allowed [18, 100])" in text


def test_missing_values_above_the_allowed_rate() -> None:
    schema = parse_schema(TABLE)
    x = good_rows()
    x[0, 3] = np.nan  # chol: 2 of 4 missing, 25% allowed
    x[1, 0] = np.nan  # age: none allowed
    kinds = {(v.feature, v.kind, v.count) for v in validate(schema, x).violations}
    assert kinds == {("chol", "missing-values", 2), ("age", "missing-values", 1)}
    assert validate(schema, good_rows()).ok  # one of four chol missing is within 25%


def test_wrong_types_and_categories() -> None:
    x = good_rows()
    x[0, 1] = 2  # sex outside {0, 1}
    x[1, 2] = 1.5  # visits is an int
    x[2, 0] = math.inf
    found = {(v.feature, v.kind) for v in validate(parse_schema(TABLE), x).violations}
    assert found == {("sex", "not-allowed"), ("visits", "wrong-type"), ("age", "wrong-type")}
    rows = np.array([[40.0, 0, 1, "high"], [50.0, 1, 0, 190.0]], dtype=object)
    (violation,) = validate(parse_schema(TABLE), rows).violations
    assert (violation.feature, violation.kind, violation.count) == ("chol", "wrong-type", 1)


def test_columns_are_matched_by_name_or_position() -> None:
    schema = parse_schema(TABLE)
    reordered = good_rows()[:, [3, 0, 1, 2]]
    assert validate(schema, reordered, ["chol", "age", "sex", "visits"]).ok
    report = validate(schema, reordered[:, :3], ["cholesterol", "age", "sex"])
    found = {(v.feature, v.kind) for v in report.violations}
    assert found == {
        ("chol", "missing-column"),
        ("visits", "missing-column"),
        ("cholesterol", "unexpected-column"),
    }
    narrow = validate(schema, good_rows()[:, :3])
    assert [(v.feature, v.kind) for v in narrow.violations] == [("chol", "missing-column")]
    with pytest.raises(ConfigError, match="names 2 columns but has 4"):
        validate(schema, good_rows(), ["a", "b"])


def test_labels_outside_the_classes() -> None:
    report = validate(parse_schema(TABLE), good_rows(), y=np.array([0, 1, 2, 1]))
    (violation,) = report.violations
    assert (violation.feature, violation.kind, violation.count) == ("disease", "label", 1)
    assert "0..1 (no, yes)" in violation.rule


# -- the plan ------------------------------------------------------------------------------

PLAN: dict[str, Any] = {
    "data": {"input_shape": [4], "num_classes": 2},
    "model": {"name": "logreg"},
    "training": {"rounds": 2},
    "topology": {"kind": "complete"},
}


def test_the_schema_is_optional_in_a_plan_and_must_fit_its_shapes() -> None:
    assert plan_from_table(PLAN).data.schema is None  # existing plans stay valid
    plan = plan_from_table({**PLAN, "data": {**PLAN["data"], "schema": TABLE}})
    assert plan.data.schema is not None and plan.data.schema.names[0] == "age"
    with pytest.raises(PlanError, match="4 features, but input_shape \\[3\\] has 3 values"):
        plan_from_table({**PLAN, "data": {"input_shape": [3], "num_classes": 2, "schema": TABLE}})
    with pytest.raises(PlanError, match="classes: 2 names, but num_classes is 3"):
        plan_from_table({**PLAN, "data": {"input_shape": [4], "num_classes": 3, "schema": TABLE}})
    bad = {**TABLE, "features": [{"name": "age", "kind": "float"}]}
    with pytest.raises(PlanError, match=r"plan \[data.schema\] features\[0\].*unknown key 'kind'"):
        plan_from_table({**PLAN, "data": {**PLAN["data"], "schema": bad}})


def test_the_example_plan_carries_the_heart_schema_and_every_site_fits_it() -> None:
    table = read_plan(str(ROOT / "simulations" / "plans" / "heart_disease.toml"))
    assert table["data"]["schema"] == heart_schema()
    plan = plan_from_table(table)  # the example plan is runnable by the daemon
    assert plan.data.schema is not None and plan.data.schema.names == feature_names()
    for site in HEART_SITES:
        data = heart_site(site)
        report = validate(plan.data.schema, data.x_train, y=data.y_train)
        assert report.ok, (site, report.describe())
        assert validate(plan.data.schema, data.x_test, y=data.y_test).ok
    raw = heart_site("Hungary").x_train.numpy().copy()
    raw[:, 2] = 240.0  # cholesterol in raw mg/dL instead of standardised
    (violation,) = validate(plan.data.schema, raw).violations
    assert (violation.feature, violation.kind, violation.fraction) == ("chol", "out-of-range", 1.0)

"""Private metrics: a site's own loss and accuracy never leave it, only the federation's sum.

- ``protocols.secagg.metrics``: each masked record looks random, the records of the
  whole roster sum to the true figures, a missing member leaves the sum unknown;
- the protocol path (real masks) and the vectorized path (the fixed-point codes added
  directly) give the same summary;
- the must-show: with ``privacy.private_metrics`` and no opt-in, no site's own figure
  (computed here independently from the nodes' final models) appears anywhere in the
  report or in ``metrics.json``; opting a site in shows that site's row only.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from p2pfl.engines import prepare, run_engine, vectorized
from p2pfl.engines.privacy import masked_summary, private_summary, site_metrics
from p2pfl.privacy.metrics import NAMES, fixed_point_sum, summary
from p2pfl.report import print_tables
from p2pfl.scenario import Scenario, scenario_from_table
from p2pfl.simulate import simulate
from p2pfl.training import evaluate
from protocols.errors import LocalProtocolError
from protocols.secagg.keys import box_public_key
from protocols.secagg.metrics import (
    SCALE,
    decode_values,
    encode_values,
    mask_metrics,
    sum_metrics,
)

FED = b"f" * 32
ROSTER = ["a", "b", "c", "d"]
SITE_TABLE = "accuracy on each site's own test split"


def keys(roster: list[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    private = {name: hashlib.sha256(f"key/{name}".encode()).digest() for name in roster}
    return private, {name: box_public_key(k) for name, k in private.items()}


def masked_all(
    values: dict[str, dict[str, float]], roster: list[str], round: int = 0
) -> dict[str, dict[str, int]]:
    private, public = keys(roster)
    return {
        name: mask_metrics(
            values[name],
            me=name,
            roster=roster,
            my_box_private=private[name],
            public_keys=public,
            federation_id=FED,
            round=round,
        )
        for name in roster
    }


FIGURES = {
    "a": {"correct": 60.0, "samples": 76.0, "loss_sum": 31.25},
    "b": {"correct": 64.0, "samples": 73.0, "loss_sum": 22.5},
    "c": {"correct": 26.0, "samples": 31.0, "loss_sum": 9.125},
    "d": {"correct": 39.0, "samples": 50.0, "loss_sum": 20.0},
}


# --- masks over the roster ---------------------------------------------------------


def test_masked_records_look_random_and_sum_to_the_truth():
    masked = masked_all(FIGURES, ROSTER)
    near_zero = 2**40  # the plain codes of these figures are below 2^31
    for name in ROSTER:
        names = sorted(FIGURES[name])
        plain = encode_values([FIGURES[name][k] for k in names])
        assert sorted(masked[name]) == names
        for k, code in zip(names, plain, strict=True):
            assert masked[name][k] != int(code)
            assert near_zero < masked[name][k] < 2**64 - near_zero
    total = sum_metrics(masked, ROSTER)
    assert total == {k: sum(FIGURES[n][k] for n in ROSTER) for k in FIGURES["a"]}


def test_masks_change_with_the_round():
    first, second = masked_all(FIGURES, ROSTER, 0), masked_all(FIGURES, ROSTER, 1)
    assert all(first[n]["correct"] != second[n]["correct"] for n in ROSTER)
    assert sum_metrics(first, ROSTER) == sum_metrics(second, ROSTER)


def test_a_missing_member_leaves_the_sum_unknown():
    masked = masked_all(FIGURES, ROSTER)
    del masked["c"]
    assert sum_metrics(masked, ROSTER) is None
    # and a sub-roster's records do not sum to anything meaningful
    partial = sum_metrics(masked, ["a", "b", "d"])
    assert partial is not None
    assert partial["samples"] != sum(FIGURES[n]["samples"] for n in ("a", "b", "d"))


def test_mismatched_names_are_refused():
    masked = masked_all(FIGURES, ROSTER)
    masked["b"] = {**masked["b"], "extra": 1}
    with pytest.raises(LocalProtocolError, match="b published metrics"):
        sum_metrics(masked, ROSTER)


def test_misuse_is_refused():
    private, public = keys(ROSTER)
    with pytest.raises(LocalProtocolError, match="not in the roster"):
        mask_metrics(
            FIGURES["a"],
            me="z",
            roster=ROSTER,
            my_box_private=private["a"],
            public_keys=public,
            federation_id=FED,
            round=0,
        )
    for bad in ([math.nan], [math.inf], [2.0**40]):
        with pytest.raises(LocalProtocolError, match="fixed-point range"):
            encode_values(bad)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e6, 1e6, allow_nan=False)),
        min_size=2,
        max_size=5,
    ),
    st.integers(0, 2**32),
)
def test_masks_cancel_for_any_figures(rows, round):
    roster = [f"n{i}" for i in range(len(rows))]
    values = {name: {"x": x, "y": y} for name, (x, y) in zip(roster, rows, strict=True)}
    total = sum_metrics(masked_all(values, roster, round), roster)
    assert total is not None
    step = len(rows) / SCALE  # each value rounds to the nearest 2^-24
    assert total["x"] == pytest.approx(sum(x for x, _ in rows), abs=step)
    assert total["y"] == pytest.approx(sum(y for _, y in rows), abs=step)


def test_codes_round_trip_negative_values():
    values = [-3.5, 0.0, 1234.125, -(2.0**30)]
    assert decode_values(encode_values(values)) == values


# --- the two paths in the engines ----------------------------------------------------


def heart_table(**sections: object) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": "private-metrics",
        "seed": 0,
        "device": "cpu",
        "data": {"dataset": "heart", "partition": "natural", "nodes": 4, "test_fraction": 0.25},
        "training": {"rounds": 5, "batch_size": 32, "lr": 0.02},
        "topology": {"kind": "ring"},
        "privacy": {"private_metrics": True},
        "baselines": {"pooled": True, "local": True, "personalised_steps": 2},
    }
    table.update(sections)
    return table


def heart(**sections: object) -> Scenario:
    return scenario_from_table(heart_table(**sections))


@pytest.fixture(scope="module")
def setup():
    return prepare(heart())


def test_masked_summary_equals_private_summary(setup):
    g = torch.Generator().manual_seed(0)
    params = torch.randn(setup.n, setup.dim, generator=g)
    figures = site_metrics(setup, params, range(setup.n))
    assert [f["samples"] for f in figures] == [nd.x_test.shape[0] for nd in setup.data.nodes]
    for round in (0, 7):
        assert masked_summary(setup, round, figures) == private_summary(figures)
    correct = sum(f["correct"] for f in figures)
    samples = sum(f["samples"] for f in figures)
    acc, loss = private_summary(figures)
    assert acc == correct / samples
    assert loss == pytest.approx(sum(f["loss_sum"] for f in figures) / samples, abs=1e-6)
    assert fixed_point_sum(figures)["samples"] == samples
    assert summary(dict.fromkeys(NAMES, 0.0)) == (None, None)


def test_both_engines_report_the_same_private_figures(setup):
    vec = run_engine("vectorized", setup, "v")
    pro = run_engine("protocol", setup, "p")
    assert [r.acc_mean for r in vec.rounds] == [r.acc_mean for r in pro.rounds]
    assert [r.loss_mean for r in vec.rounds] == pytest.approx(
        [r.loss_mean for r in pro.rounds], abs=1e-6
    )
    assert all(r.acc_min is None and r.acc_max is None for r in pro.rounds)


# --- the must-show ------------------------------------------------------------------


def numbers(obj: Any) -> Iterator[float]:
    """Every number in a JSON-like object (booleans are not numbers here)."""
    if isinstance(obj, dict):
        for value in obj.values():
            yield from numbers(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from numbers(value)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield float(obj)


def leaks(report: Any, secrets: dict[str, float]) -> list[str]:
    found = list(numbers(report))
    return sorted(
        name
        for name, secret in secrets.items()
        if any(math.isclose(v, secret, rel_tol=1e-6, abs_tol=0.0) for v in found)
    )


def own_figures(setup, params: torch.Tensor) -> list[tuple[float, float, int]]:
    """(accuracy, mean loss, test samples) of each node's model on its own test split."""
    out = []
    for i, nd in enumerate(setup.data.nodes):
        acc, loss = evaluate(setup.model, params[i : i + 1], nd.x_test, nd.y_test)
        out.append((float(acc[0]), float(loss[0]), int(nd.x_test.shape[0])))
    return out


@pytest.fixture(scope="module")
def private_run(setup, tmp_path_factory):
    """The private report, its metrics.json, and what every site saw along the way."""
    seen: list[list[dict[str, float]]] = []
    original = vectorized.site_metrics

    def spy(*args: Any) -> list[dict[str, float]]:
        figures = original(*args)
        seen.append(figures)
        return figures

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vectorized, "site_metrics", spy)
        out = tmp_path_factory.mktemp("private")
        report = simulate(heart(), out)
    result = run_engine("vectorized", setup, "again")  # the same run, for its final models
    return report, json.loads((out / "metrics.json").read_text()), seen, result


def secrets_of(setup, result, seen) -> dict[str, float]:
    secrets = {}
    for i, (acc, loss, _) in enumerate(own_figures(setup, result.final_params)):
        name = setup.data.nodes[i].name
        secrets[f"{name} final accuracy"] = acc
        secrets[f"{name} final loss"] = loss
    for r, figures in enumerate(seen):
        for i, f in enumerate(figures):
            name = setup.data.nodes[i].name
            secrets[f"{name} round {r} accuracy"] = f["correct"] / f["samples"]
            secrets[f"{name} round {r} loss"] = f["loss_sum"] / f["samples"]
            secrets[f"{name} round {r} loss sum"] = f["loss_sum"]
    return secrets


def test_no_site_figure_reaches_the_report(setup, private_run):
    report, written, seen, result = private_run
    assert len(seen) == 5  # every round was measured, privately
    secrets = secrets_of(setup, result, seen)
    assert leaks(report, secrets) == []
    assert leaks(written, secrets) == []
    (run,) = report["runs"]
    assert run["sites"] == []
    assert run["baselines"]["local"] is None
    assert run["metrics"] == "secure sum of the sites' own test splits"
    assert run["privacy"]["private_metrics"] is True
    assert all(r["acc_min"] is None and r["acc_max"] is None for r in run["rounds"])
    assert run["final"]["acc_min"] is None and run["final"]["acc_max"] is None
    console = io.StringIO()
    print_tables(report, Console(file=console, width=200))
    assert SITE_TABLE not in console.getvalue()


def test_the_leak_check_finds_figures_in_a_plain_report(setup, private_run):
    """Without private metrics the same run's site rows show those figures: the check has teeth."""
    _, _, seen, result = private_run
    plain = simulate(heart(privacy={"private_metrics": False}))
    found = leaks(plain, secrets_of(setup, result, seen))
    assert {f"{nd.name} final accuracy" for nd in setup.data.nodes} <= set(found)


def test_round_accuracy_is_the_secure_sum(setup, private_run):
    report, _, _, result = private_run
    figures = own_figures(setup, result.final_params)
    correct = sum(round(acc * n) for acc, _, n in figures)
    samples = sum(n for _, _, n in figures)
    final = report["runs"][0]["rounds"][-1]
    assert final["acc_mean"] == pytest.approx(correct / samples, abs=1e-12)
    loss = sum(loss * n for _, loss, n in figures) / samples
    assert final["loss_mean"] == pytest.approx(loss, abs=1e-5)
    # not the mean of the sites' accuracies, which weighs small sites up
    assert final["acc_mean"] != pytest.approx(np.mean([acc for acc, _, _ in figures]), abs=1e-9)


def test_an_opted_in_site_shows_its_own_row_only(setup, private_run):
    _, _, seen, result = private_run
    report = simulate(heart(privacy={"private_metrics": True, "opt_in": ["Hungary"]}))
    (run,) = report["runs"]
    assert [row["site"] for row in run["sites"]] == ["Hungary"]
    secrets = secrets_of(setup, result, seen)
    found = leaks(report, secrets)
    assert "Hungary final accuracy" in found
    assert all(name.startswith("Hungary") for name in found), found
    assert all(r["acc_min"] is None for r in run["rounds"])
    assert run["baselines"]["local"] is None

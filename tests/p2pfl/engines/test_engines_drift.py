"""Drift in the simulation engines: what ``[drift] inject`` schedules is detected and reported.

The detectors themselves are tested in ``test_drift.py``; here a heart-disease federation
(four hospitals on a ring) runs with drift watched, in both engines:

- a shift injected into node 1 (Hungary) at round 10 is reported as a ``data``/``ks``
  event at that round (rounds count from 0 in drift records, as in ``inject``), the same
  in both engines; a label flip is a ``labels``/``chi2`` event;
- the event names its site only when the site opted in (``privacy.opt_in``);
- an unchanged federation reports no event over 25 rounds;
- an injection naming no node or no round of the run is refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from p2pfl.datasets import heart as heart_data
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, scenario_from_table
from p2pfl.simulate import simulate

ENGINES = ("vectorized", "protocol")
SHIFT = [1, 10, "shift", 1.0]
FEATURES = len(heart_data.feature_names())


def heart(
    engine: str, rounds: int, inject: list[list[Any]], opt_in: list[str] | None = None
) -> Scenario:
    return scenario_from_table(
        {
            "name": "drift",
            "seed": 0,
            "device": "cpu",
            "engine": engine,
            "data": {
                "dataset": "heart",
                "partition": "natural",
                "nodes": 4,
                "test_fraction": 0.25,
            },
            "training": {"rounds": rounds, "batch_size": 32, "lr": 0.02},
            "topology": {"kind": "ring"},
            "drift": {"enabled": True, "inject": inject},
            "privacy": {"opt_in": opt_in or []},
        }
    )


def drift_of(scenario: Scenario) -> dict[str, Any]:
    (run,) = simulate(scenario)["runs"]
    return run["drift"]


@pytest.fixture(scope="module")
def shifted() -> dict[tuple[str, bool], dict[str, Any]]:
    """The drift report of each engine, with Hungary opted in and without."""
    return {
        (engine, opted): drift_of(heart(engine, 15, [SHIFT], ["Hungary"] if opted else None))
        for engine in ENGINES
        for opted in (False, True)
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_injected_shift_is_a_data_event_at_its_round(engine, shifted):
    report = shifted[(engine, True)]
    data = [e for e in report["events"] if e["detector"] == "data"]
    assert len(data) == 1
    (event,) = data
    assert event["site"] == "Hungary"
    assert event["round"] == 10
    assert event["statistic"] == "ks"
    assert event["p_value"] < event["threshold"]
    assert 0 < event["value"] <= 1
    assert isinstance(event["feature"], int) and 0 <= event["feature"] < FEATURES
    # nothing fires before the data changed
    assert all(e["round"] >= 10 for e in report["events"])
    assert report["injected"] == [
        {"site": "Hungary", "round": 10, "kind": "shift", "magnitude": 1.0}
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_event_names_no_site_unless_opted_in(engine, shifted):
    hidden = shifted[(engine, False)]["events"]
    shown = shifted[(engine, True)]["events"]
    assert hidden and all(e["site"] is None for e in hidden)
    assert [{**e, "site": None} for e in shown] == hidden
    # the schedule does not give the site away either
    assert [i["site"] for i in shifted[(engine, False)]["injected"]] == [None]


def test_both_engines_report_the_same_events(shifted):
    assert shifted[("vectorized", True)] == shifted[("protocol", True)]
    assert shifted[("vectorized", False)] == shifted[("protocol", False)]


def test_label_flip_is_a_labels_event():
    report = drift_of(heart("vectorized", 8, [[2, 5, "label-flip", 0.5]], ["Switzerland"]))
    labels = [e for e in report["events"] if e["detector"] == "labels"]
    assert [(e["site"], e["round"], e["statistic"]) for e in labels] == [("Switzerland", 5, "chi2")]
    assert labels[0]["p_value"] < labels[0]["threshold"]


@pytest.mark.parametrize("engine", ENGINES)
def test_no_drift_no_event(engine):
    report = drift_of(heart(engine, 25, []))
    assert report == {"events": [], "injected": []}


def test_drift_off_reports_nothing():
    scenario = scenario_from_table(
        {
            "name": "off",
            "device": "cpu",
            "data": {"dataset": "heart", "partition": "natural", "nodes": 4},
            "training": {"rounds": 2},
        }
    )
    (run,) = simulate(scenario)["runs"]
    assert run["drift"] is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([9, 3, "shift"], r"\[9, 3, 'shift'\] names no node \(0\.\.3\)"),
        ([1, 999, "shift"], r"\[1, 999, 'shift'\] names no node .* or no round \(0\.\.4\)"),
    ],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_injection_outside_the_run_is_refused(engine, entry, message):
    with pytest.raises(ConfigError, match=message):
        simulate(heart(engine, 5, [entry]))


@pytest.mark.parametrize(
    "entry", [[1, 3], [1, 3, "melt"], [-1, 3, "shift"], [1, 3, "label-flip", 2.0]]
)
def test_malformed_injection_is_refused_by_the_scenario(entry):
    with pytest.raises(ConfigError, match=r"drift\.inject"):
        heart("vectorized", 5, [entry])

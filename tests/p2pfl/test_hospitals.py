"""The issue's must-show: four heart-disease hospitals learning together by gossip.

On the global test set (the four hospitals' test splits together), gossip on
the complete graph is within one point of pooled training and above every
hospital training alone; the report lists gossip, pooled, local-only and
personalised accuracy for every hospital on its own test split.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2pfl.scenario import load_scenario
from p2pfl.simulate import simulate

HOSPITALS = Path(__file__).resolve().parents[2] / "simulations" / "hospitals.toml"
SITES = {"cleveland", "hungary", "switzerland", "va"}

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Logistic regression on 13 features: on a shared 2-core machine a second intra-op
    thread only adds synchronisation, so the module runs on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return simulate(load_scenario(HOSPITALS), tmp_path_factory.mktemp("hospitals"))


def by_topology(report, kind):
    (run,) = [r for r in report["runs"] if r["topology"] == kind]
    return run


def test_sweeps_ring_and_complete(report):
    assert sorted(r["topology"] for r in report["runs"]) == ["complete", "ring"]


def test_complete_graph_is_within_a_point_of_pooled_and_beats_local(report):
    run = by_topology(report, "complete")
    gossip = run["final"]["acc_mean"]
    pooled = run["baselines"]["pooled"]
    local = run["baselines"]["local"]
    print(f"complete-graph gossip {gossip:.4f}, pooled {pooled:.4f}, local-only {local}")
    assert gossip >= pooled - 0.01
    assert len(local) == 4
    assert all(gossip > acc for acc in local)


def test_ring_learns_too(report):
    run = by_topology(report, "ring")
    assert run["final"]["acc_mean"] > max(run["baselines"]["local"]) - 0.05


def test_per_hospital_rows(report):
    for run in report["runs"]:
        rows = run["sites"]
        names = {row["site"].lower() for row in rows}
        assert len(rows) == 4
        assert all(any(site in name for name in names) for site in SITES), names
        for row in rows:
            for key in ("gossip", "pooled", "local", "personalised"):
                assert row[key] is not None and 0 <= row[key] <= 1, (row["site"], key)
            assert row["train_samples"] > 0 and row["test_samples"] > 0


def test_switzerland_base_rate_is_shown_not_hidden(report):
    """Switzerland is ~93% positive: local-only is expected to do well there; the row exists."""
    run = by_topology(report, "complete")
    (swiss,) = [row for row in run["sites"] if "switzerland" in row["site"].lower()]
    assert swiss["local"] >= 0.8
    print(f"switzerland: {swiss}")

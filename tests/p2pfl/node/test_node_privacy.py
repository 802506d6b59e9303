"""Private metrics and DP in real daemons: only masked figures reach the ledger.

Four heart-disease hospitals run as ``p2pfl node run`` processes (the processes engine).
With ``private_metrics`` each daemon publishes its figures masked with the pairwise
masks of the whole roster; the report's accuracy is the sum any member can compute from
the ledger, and it equals what the protocol engine computes from the same models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from p2pfl.engines import prepare, run_engine
from p2pfl.engines.processes import run_processes
from p2pfl.errors import ConfigError
from p2pfl.ledger_file import load_ledger
from p2pfl.node.privacy import MASKED, OWN, federation_sum
from p2pfl.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[3]
ROUNDS = 3
pytestmark = pytest.mark.slow


def hospitals(**overrides: Any) -> Any:
    table = {
        "topology.kind": "complete",
        "training.rounds": ROUNDS,
        "privacy.private_metrics": True,
        "privacy.opt_in": ["Hungary"],
        "baselines.pooled": False,
        "baselines.local": False,
        "baselines.personalised_steps": 0,
        **overrides,
    }
    scenario = load_scenario(ROOT / "simulations" / "hospitals.toml", table)
    return dataclasses.replace(scenario, sweep={})


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    setup = prepare(hospitals())
    workdir = tmp_path_factory.mktemp("private-metrics")
    result = run_processes(setup, "private", root=workdir, timeout=240)
    return setup, result, workdir


def site_dirs(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.iterdir() if (p / "node.toml").exists())


def test_the_ledger_holds_only_masked_figures_except_where_a_site_opted_in(daemons):
    setup, result, workdir = daemons
    names = {d.name: d for d in site_dirs(workdir)}
    ledger = load_ledger(next(iter(names.values())) / "ledger")
    hungary = result.extra["node_ids"][setup.names().index(_name_of(setup, "Hungary"))]
    for r in range(1, ROUNDS + 1):  # the ledger numbers its rounds from 1
        records = ledger.metrics(r)
        assert set(records) == set(result.extra["node_ids"])
        for node, values in records.items():
            masked = {k for k in values if k.startswith(MASKED)}
            own = {k for k in values if k.startswith(OWN)}
            assert masked == {MASKED + "correct", MASKED + "loss_sum", MASKED + "samples"}
            assert set(values) == masked | own
            assert own == ({OWN + "accuracy", OWN + "loss"} if node == hungary else set())
            # a plain code of a count or a loss sum is below 2^40; a masked one is uniform
            assert all(int(values[k]) >= 2**40 for k in masked), (node, values)


def test_the_sum_of_the_masked_records_is_the_federations_figure(daemons):
    setup, result, workdir = daemons
    ledger = load_ledger(site_dirs(workdir)[0] / "ledger")
    roster = sorted(result.extra["node_ids"])
    total_test = sum(int(nd.x_test.shape[0]) for nd in setup.data.nodes)
    for r, row in enumerate(result.rounds, start=1):  # the ledger numbers its rounds from 1
        total = federation_sum(ledger.metrics(r), roster)
        assert total is not None
        assert total["samples"] == total_test
        assert 0 <= total["correct"] <= total_test
        assert row.acc_mean == pytest.approx(total["correct"] / total_test)
        assert row.acc_min is None and row.acc_max is None
    assert r == ROUNDS
    assert federation_sum(ledger.metrics(r), roster[:-1]) is not None  # a sub-roster sums...
    assert federation_sum(ledger.metrics(r), roster[:-1]) != total  # ...to garbage


def test_daemons_and_the_protocol_engine_report_the_same_private_accuracy(daemons):
    _, result, _ = daemons
    simulated = run_engine("protocol", prepare(hospitals()), "protocol")
    for daemon, sim in zip(result.rounds, simulated.rounds, strict=True):
        assert daemon.acc_mean == pytest.approx(sim.acc_mean, abs=1e-6)


def test_the_processes_engine_refuses_to_inject_drift():
    with pytest.raises(ConfigError, match=r"drift\.inject"):
        run_processes(
            prepare(hospitals(**{"drift.enabled": True, "drift.inject": [[0, 1, "shift"]]})), "x"
        )


def test_dp_sgd_daemons_report_their_epsilon(tmp_path):
    scenario = hospitals(
        **{
            "privacy.mechanism": "dp-sgd",
            "privacy.epsilon": 4.0,
            "privacy.clip": 1.0,
            "training.rounds": 2,
        }
    )
    setup = prepare(scenario)
    result = run_processes(setup, "dp", root=tmp_path, timeout=240)
    assert len(result.rounds) == 2
    for directory in site_dirs(tmp_path):
        log = (directory / "node.log").read_text()
        assert "differential privacy: dp-sgd, epsilon" in log
    assert all(0 < b.epsilon <= 4.0 for b in setup.budget.nodes)


def _name_of(setup: Any, site: str) -> str:
    (i,) = [i for i, nd in enumerate(setup.data.nodes) if nd.name == site]
    return setup.names()[i]

"""The run spec: one set of defaults, one check of every step, one plan written from a scenario."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from p2pfl.cli import main
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, load_scenario
from p2pfl.spec import (
    SPEC_FIELDS,
    Graph,
    Plan,
    PlanData,
    PlanError,
    RunSpec,
    SecureSection,
    TopologySection,
    TrainingSection,
    plan_from_table,
)
from protocols.records import plan_hash

ROOT = Path(__file__).resolve().parents[3]
TINY = str(ROOT / "simulations" / "tiny.toml")
DATA = {"input_shape": [4], "num_classes": 2}
BASE_K = {"topology": {"kind": "base-k", "k": 2}, "secure": {"enabled": True}}


def test_scenario_and_plan_share_the_run_specs_defaults() -> None:
    plan = Plan(data=PlanData([4], 2))
    for name in SPEC_FIELDS:
        assert getattr(Scenario(), name) == getattr(RunSpec(), name) == getattr(plan, name), name
    # the two defaults that used to differ, pinned: the finer fixed-point step and clip 8
    assert RunSpec().secure.scale == 262144.0 and RunSpec().secure.clip == 8.0


def test_check_validates_every_step_of_a_schedule() -> None:
    spec = RunSpec(topology=TopologySection(kind="base-k", k=2), secure=SecureSection(enabled=True))
    with pytest.raises(ConfigError, match=r"at step 1 of its schedule: .*degree 1"):
        spec.check(6)
    # the same schedule without secure aggregation, or with enough nodes per step, runs
    dataclasses.replace(spec, secure=SecureSection()).check(6)
    one_round = dataclasses.replace(spec, training=TrainingSection(rounds=1))
    one_round.check(6)  # a run of one round never reaches step 1


def test_a_plan_for_six_members_on_base_k_is_refused_naming_the_step() -> None:
    with pytest.raises(PlanError, match=r"6 members.*step 1"):
        plan_from_table({"members": 6, "data": DATA, **BASE_K})
    plan = plan_from_table({"data": DATA, **BASE_K})  # no size given: checked at the roster
    with pytest.raises(PlanError, match=r"step 1"):
        plan.graph(tuple(sorted(f"id{i}" for i in range(6))))


def test_federation_create_refuses_the_base_k_plan(tmp_path, capsys) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        "members = 6\n[data]\ninput_shape = [4]\nnum_classes = 2\n"
        '[topology]\nkind = "base-k"\nk = 2\n[secure]\nenabled = true\n'
    )
    assert main(["keys", "init", "--out", str(tmp_path / "f.key")]) == 0
    args = ["federation", "create", "--key", str(tmp_path / "f.key"), "--name", "x"]
    code = main([*args, "--plan", str(plan), "--out", str(tmp_path / "f.ledger")])
    err = capsys.readouterr().err
    assert code == 2
    assert "step 1" in err and "degree 1" in err, err
    assert not (tmp_path / "f.ledger").exists()


def test_a_daemon_refuses_a_roster_of_another_size() -> None:
    plan = plan_from_table({"members": 4, "data": DATA})
    with pytest.raises(PlanError, match="made for 4 members, but the roster has 3"):
        plan.graph(("a", "b", "c"))
    assert plan.graph(("a", "b", "c", "d")).n == 4


def test_the_daemon_roster_is_sorted_the_simulators_is_positional() -> None:
    plan = plan_from_table({"data": DATA})
    with pytest.raises(PlanError, match="sorted"):
        plan.graph(("b", "a", "c"))
    names = [f"n{i}" for i in range(12)]  # n10 sorts before n2: positions, not order
    graph = Graph.build(RunSpec(), names)
    assert graph.index("n10") == 10
    assert set(graph.neighbourhood("n0", 0).in_weights) == {"n1", "n11"}


def test_neighbourhoods_are_read_once_per_step_of_the_schedule() -> None:
    names = [f"n{i}" for i in range(8)]
    static = Graph.build(RunSpec(), names)
    assert static.topo.period == 1
    assert static.neighbourhood("n0", 0) is static.neighbourhood("n0", 57)
    varying = Graph.build(RunSpec(topology=TopologySection(kind="base-k", k=2)), names)
    period = varying.topo.period
    assert period > 1
    hoods = [varying.neighbourhood("n0", r) for r in range(2 * period)]
    for r in range(period):
        assert hoods[r] is hoods[r + period]  # one matrix per step of the period
        expected = varying._read(0, r)
        assert hoods[r] == expected
    assert len({tuple(sorted(h.in_weights)) for h in hoods[:period]}) > 1


def test_digest_follows_every_shared_key() -> None:
    spec = RunSpec()
    assert spec.digest() == RunSpec().digest()
    assert spec.digest() != dataclasses.replace(spec, seed=1).digest()
    changed = dataclasses.replace(spec, secure=SecureSection(clip=4.0))
    assert spec.digest() != changed.digest()
    # a key at its default is left out (older plans keep their hash), any other value counts
    cosine = dataclasses.replace(spec, training=TrainingSection(lr_schedule="cosine"))
    assert "lr_schedule" not in spec.table()["training"]
    assert cosine.table()["training"]["lr_schedule"] == "cosine"
    assert spec.digest() != cosine.digest()
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainingSection(lr_schedule="step")
    # a scenario's own sections are not part of what it deploys
    assert Scenario(name="a", engine="protocol").digest() == Scenario(name="b").digest()


def test_simulate_writes_the_plan_it_rehearsed(tmp_path, capsys) -> None:
    out, plan_file = tmp_path / "run", tmp_path / "plan.toml"
    argv = ["simulate", TINY, "--out", str(out), "--set", "training.rounds=2"]
    assert main([*argv, "--write-plan", str(plan_file)]) == 0
    assert "plan hash" in capsys.readouterr().out
    table = tomllib.loads(plan_file.read_text())
    report = json.loads((out / "metrics.json").read_text())
    written = report["runs"][0]["plan"]["hash"]
    assert plan_hash(table).hex() == written
    plan = plan_from_table(table)
    scenario = load_scenario(TINY, {"training.rounds": 2})
    assert plan.run_spec == scenario.run_spec  # every shared key, as simulated
    assert plan.members == 6 and plan.data.input_shape == [64] and plan.data.num_classes == 10
    assert plan.hash().hex() == written

    # the founder publishes it unchanged: the hash members approve is the rehearsed one
    assert main(["keys", "init", "--out", str(tmp_path / "f.key")]) == 0
    create = ["federation", "create", "--key", str(tmp_path / "f.key"), "--name", "tiny"]
    assert main([*create, "--plan", str(plan_file), "--out", str(tmp_path / "f.ledger")]) == 0
    assert f"plan hash {written}" in capsys.readouterr().out


def test_write_plan_refuses_a_sweep(tmp_path, capsys) -> None:
    plan_file = tmp_path / "plan.toml"
    argv = ["simulate", TINY, "--out", str(tmp_path / "run"), "--write-plan", str(plan_file)]
    sweep = '--set=sweep={"topology.kind" = ["ring", "complete"]}'
    assert main([*argv, sweep]) == 2
    assert "sweep makes 2 runs" in capsys.readouterr().err
    assert not plan_file.exists()

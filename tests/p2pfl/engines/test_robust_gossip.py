"""Byzantine-robust gossip in the simulated federation, and what one attacker does to it.

Eight nodes on scikit-learn's digits, a random 4-regular graph, logistic
regression, ten rounds; node 3 is the attacker (``[attack]``) and sends, each
round, its model sign-flipped and scaled (-100 x), scaled (100 x) or NaN.

- Without a robust rule the attack is real: the honest nodes' mean accuracy
  falls by tens of points (NaN spreads to every model).
- With clipped gossip or the trimmed mean it stays within 2 points of the same
  run without the attacker.
- The protocol engine (the daemon's round cores) and the vectorized engine
  agree on robust runs to 1e-4, as the parity tests ask of plain modes.
- In secure mode the receiver sees only the neighbourhood sum; the ``bounded``
  rule keeps a 100 x attacker from moving a node further than ``clip_radius``
  per round, and costs an honest run under a point.
- What cannot run is refused before training: a rule secure mode cannot apply,
  trimming that leaves a node no neighbour, the sharded engine, the daemons.
  Defaults leave the plan hash as it was.
- ``p2pfl simulate`` prints the attack and the honest nodes' accuracy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from p2pfl.cli import main
from p2pfl.engines import prepare, run_engine
from p2pfl.engines.common import RunResult, Setup
from p2pfl.engines.processes import run_processes
from p2pfl.engines.sharded import run as run_sharded
from p2pfl.engines.world import World
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, load_scenario
from p2pfl.spec import RunSpec, plan_from_table
from p2pfl.spec.sections import GossipSection, TopologySection
from p2pfl.training import evaluate

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "simulations" / "tiny.toml"
ATTACKER = 3
POINT = 0.01
BASE = {
    "data.nodes": 8,
    "topology.kind": "regular",
    "topology.degree": 4,
    "training.rounds": 10,
    "baselines.pooled": False,
    "baselines.local": False,
}
KINDS = ("sign-flip", "scale", "nan")
DEFAULT_DIGEST = "31fff45548053754821e1beef60da4e917b2eb5e58d9d58b98751e3a6d6d7a98"
"""``RunSpec().digest()`` before the robust keys existed (with ``secure.allow_no_dropout``)."""


@pytest.fixture(scope="module")
def cache() -> dict[str, object]:
    return {}


def scenario(**overrides: object) -> Scenario:
    return load_scenario(TINY, {**BASE, **overrides})


def attacked(kind: str, **overrides: object) -> Scenario:
    return scenario(**{"attack.nodes": [ATTACKER], "attack.kind": kind, **overrides})


def run(sc: Scenario, cache: dict[str, object], engine: str = "vectorized") -> RunResult:
    if "data" not in cache:
        cache["data"] = prepare(sc).data
    setup = prepare(sc, cache["data"])  # type: ignore[arg-type]
    cache["setup"] = setup
    return run_engine(engine, setup, engine)


def honest_accuracy(setup: Setup, result: RunResult) -> float:
    rows = [i for i in range(setup.n) if i != ATTACKER]
    data = setup.data
    acc, _ = evaluate(
        setup.model, result.final_params[rows], data.x_global_test, data.y_global_test
    )
    return float(acc.mean())


@pytest.mark.parametrize("kind", KINDS)
def test_without_a_robust_rule_one_attacker_does_real_damage(kind: str, cache) -> None:
    clean = run(scenario(), cache)
    clean_acc = honest_accuracy(cache["setup"], clean)  # type: ignore[arg-type]
    result = run(attacked(kind), cache)
    report = result.extra["attack"]
    assert report["nodes"] == [ATTACKER] and report["kind"] == kind
    assert report["honest_acc_mean"] == pytest.approx(
        honest_accuracy(cache["setup"], result)  # type: ignore[arg-type]
    )
    assert report["honest_acc_mean"] < clean_acc - 30 * POINT, (kind, report, clean_acc)
    if kind == "nan":
        honest = [i for i in range(8) if i != ATTACKER]
        assert torch.isnan(result.final_params[honest]).all()


@pytest.mark.parametrize("rule", ["clipped", "trimmed"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_robust_rule_keeps_the_honest_nodes_within_two_points(
    rule: str, kind: str, cache
) -> None:
    clean = run(scenario(**{"gossip.robust": rule}), cache)
    clean_acc = honest_accuracy(cache["setup"], clean)  # type: ignore[arg-type]
    result = run(attacked(kind, **{"gossip.robust": rule}), cache)
    acc = result.extra["attack"]["honest_acc_mean"]
    assert abs(acc - clean_acc) <= 2 * POINT, (rule, kind, acc, clean_acc)
    honest = [i for i in range(8) if i != ATTACKER]
    assert torch.isfinite(result.final_params[honest]).all()


def test_a_fixed_clipping_radius_holds_too(cache) -> None:
    over = {"gossip.robust": "clipped", "gossip.clip_radius": 0.5}
    clean = honest_accuracy(cache.get("setup") or prepare(scenario()), run(scenario(**over), cache))
    result = run(attacked("scale", **over), cache)
    assert abs(result.extra["attack"]["honest_acc_mean"] - clean) <= 2 * POINT


@pytest.mark.parametrize(
    "cell",
    [
        {"gossip.robust": "clipped", "attack.kind": "scale"},
        {"gossip.robust": "clipped", "gossip.clip_radius": 0.5, "attack.kind": "sign-flip"},
        {"gossip.robust": "trimmed", "attack.kind": "sign-flip"},
    ],
)
def test_the_protocol_and_vectorized_engines_agree_on_a_robust_run(cell, cache) -> None:
    sc = scenario(**{"attack.nodes": [ATTACKER], **cell})
    fast = run(sc, cache, "vectorized")
    slow = run(sc, cache, "protocol")
    gap = float((fast.final_params - slow.final_params).norm() / slow.final_params.norm())
    assert gap <= 1e-4, gap
    ours, theirs = slow.extra["attack"], fast.extra["attack"]
    assert ours["honest_acc_mean"] == pytest.approx(theirs["honest_acc_mean"], abs=POINT / 10)


BOUND = {"secure.enabled": True, "gossip.robust": "bounded", "gossip.clip_radius": 0.1}


@pytest.mark.parametrize("engine", ["vectorized", "protocol"])
def test_the_secure_bound_holds_a_x100_attacker(engine: str, cache) -> None:
    clean = run(scenario(**{"secure.enabled": True}), cache, "vectorized")
    clean_acc = honest_accuracy(cache["setup"], clean)  # type: ignore[arg-type]
    unbounded = run(attacked("scale", **{"secure.enabled": True}), cache, engine)
    bounded = run(attacked("scale", **BOUND), cache, engine)
    damage = clean_acc - unbounded.extra["attack"]["honest_acc_mean"]
    kept = clean_acc - bounded.extra["attack"]["honest_acc_mean"]
    assert damage > 30 * POINT and kept < 5 * POINT, (damage, kept)


def test_the_secure_bound_moves_no_node_further_than_its_radius(cache) -> None:
    one = {"training.rounds": 1, "training.lr": 1e-9}  # training barely moves: the mix does
    sc = attacked("scale", **BOUND, **one)
    result = run(sc, cache)
    start = cache["setup"].initial  # type: ignore[attr-defined]
    moved = (result.final_params - start).norm(dim=1)
    honest = [i for i in range(8) if i != ATTACKER]
    assert float(moved[honest].max()) <= 0.1 * (1 + 1e-4)
    unbounded = run(attacked("scale", **{"secure.enabled": True}, **one), cache)
    assert float((unbounded.final_params - start).norm(dim=1)[honest].max()) > 1.0


def test_the_secure_bound_costs_an_honest_run_under_a_point(cache) -> None:
    plain = run(scenario(**{"secure.enabled": True}), cache)
    plain_acc = honest_accuracy(cache["setup"], plain)  # type: ignore[arg-type]
    bounded = run(scenario(**BOUND), cache)
    assert abs(honest_accuracy(cache["setup"], bounded) - plain_acc) < POINT  # type: ignore[arg-type]


# -- what is refused, and what the plan hash keeps -------------------------------------


@pytest.mark.parametrize("rule", ["clipped", "trimmed"])
def test_secure_mode_refuses_a_rule_it_cannot_apply_and_points_to_the_docs(rule: str) -> None:
    with pytest.raises(ConfigError, match=r"secure aggregation hides.*docs/threat-model\.md"):
        scenario(**{"secure.enabled": True, "gossip.robust": rule})


def test_the_bound_needs_secure_mode_and_a_radius() -> None:
    with pytest.raises(ConfigError, match=r"without secure\.enabled"):
        scenario(**{"gossip.robust": "bounded", "gossip.clip_radius": 1.0})
    with pytest.raises(ConfigError, match=r"needs gossip\.clip_radius"):
        scenario(**{"secure.enabled": True, "gossip.robust": "bounded"})


def test_robust_mixing_runs_over_sync_only() -> None:
    with pytest.raises(ConfigError, match=r"needs gossip\.mode = 'sync'"):
        scenario(**{"gossip.mode": "choco", "gossip.robust": "clipped"})


def test_trimming_that_would_leave_a_node_no_neighbour_is_refused(cache) -> None:
    too_many = scenario(**{"gossip.robust": "trimmed", "gossip.robust_byzantine": 2})
    with pytest.raises(ConfigError, match="needs 5 in-neighbours per node, but n0 has 4"):
        prepare(too_many, cache.get("data"))  # type: ignore[arg-type]
    trimmed = scenario(**{"gossip.robust": "trimmed"})
    ring = dataclasses.replace(trimmed, topology=TopologySection(kind="ring"))
    with pytest.raises(ConfigError, match="needs 3 in-neighbours"):
        prepare(ring, cache.get("data"))  # type: ignore[arg-type]
    adaptive = scenario(**{"gossip.robust": "clipped", "gossip.robust_byzantine": 4})
    with pytest.raises(ConfigError, match="needs 5 in-neighbours"):
        prepare(adaptive, cache.get("data"))  # type: ignore[arg-type]


def test_the_sharded_engine_and_the_daemons_refuse_what_they_do_not_simulate(cache) -> None:
    world = World(0, 1, 0, "gloo", torch.device("cpu"))
    robust = prepare(scenario(**{"gossip.robust": "clipped"}), cache.get("data"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not simulated sharded"):
        run_sharded(robust, "x", world)
    attack = prepare(attacked("scale"), cache.get("data"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[attack\] is simulated by"):
        run_sharded(attack, "x", world)
    with pytest.raises(ConfigError, match=r"\[attack\] is simulated by"):
        run_processes(attack, "x")


def test_an_attack_must_name_nodes_of_the_run(cache) -> None:
    with pytest.raises(ConfigError, match=r"attack\.kind must be one of"):
        attacked("flip")
    with pytest.raises(ConfigError, match="cannot reach a secure neighbourhood"):
        attacked("nan", **{"secure.enabled": True})
    setup = prepare(scenario(**{"attack.nodes": [8]}), cache.get("data"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="names no node"):
        run_engine("vectorized", setup, "x")


def test_defaults_keep_the_plan_hash_and_a_robust_key_enters_it() -> None:
    assert RunSpec().digest().hex() == DEFAULT_DIGEST
    assert "robust" not in RunSpec().table()["gossip"]
    robust = RunSpec(gossip=GossipSection(robust="trimmed", robust_byzantine=1))
    assert robust.table()["gossip"]["robust"] == "trimmed"
    assert robust.digest() != RunSpec().digest()
    plan = dataclasses.replace(
        prepare(scenario(**{"gossip.robust": "clipped", "gossip.robust_byzantine": 2})).plan()
    )
    again = plan_from_table(plan.table())
    assert again.gossip.robust == "clipped" and again.gossip.robust_byzantine == 2
    assert again.hash() == plan.hash()


def test_the_report_names_the_attack_and_the_honest_accuracy(tmp_path, capsys) -> None:
    argv = ["simulate", str(TINY), "--out", str(tmp_path / "run")]
    sets = {**BASE, "training.rounds": 2, "attack.nodes": [ATTACKER], "attack.kind": "nan"}
    sets["baselines.personalised_steps"] = 0
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nodes [3] attack (nan); honest nodes' mean accuracy" in out
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["runs"][0]["extra"]["attack"]["kind"] == "nan"

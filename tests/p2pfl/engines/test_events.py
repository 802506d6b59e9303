"""Membership events rehearsed by the protocol engine: joins, leaves, revocations, partitions."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.engines import protocol as protocol_engine
from p2pfl.engines.common import RunResult, Setup
from p2pfl.engines.epochs import plan_epochs, start_models
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, scenario_from_table
from p2pfl.training import evaluate

SECURE = {"enabled": True, "share_timeout": 5.0, "masked_timeout": 5.0}


def scenario(nodes: int, rounds: int, events: list[dict[str, Any]], **sections: Any) -> Scenario:
    table: dict[str, Any] = {
        "name": "events",
        "seed": 0,
        "engine": "protocol",
        "data": {"dataset": "heart", "partition": "iid", "nodes": nodes, "test_fraction": 0.25},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.02},
        "topology": {"kind": "ring"},
        "gossip": {"mode": "sync"},
        "events": events,
        **sections,
    }
    return scenario_from_table(table)


def run(sc: Scenario) -> tuple[Setup, RunResult]:
    setup = prepare(sc)
    return setup, run_engine("protocol", setup, "events")


def accuracy(setup: Setup, result: RunResult, i: int) -> float:
    data = setup.data
    acc, _ = evaluate(
        setup.model, result.final_params[i : i + 1], data.x_global_test, data.y_global_test
    )
    return float(acc)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """(sender, receiver, epoch) of every frame the protocol engine delivers."""
    seen: list[tuple[str, str, int]] = []
    deliver = protocol_engine._Run._on_deliver

    def record(self: Any, now: float, payload: tuple[str, str, int, bytes]) -> None:
        seen.append(payload[:3])
        deliver(self, now, payload)

    monkeypatch.setattr(protocol_engine._Run, "_on_deliver", record)
    return seen


def test_a_fifth_site_joins_in_round_20_and_ends_level_with_the_others(
    wire: list[Any], models: dict[tuple[str, int, str], torch.Tensor]
) -> None:
    setup, result = run(scenario(5, 30, [{"round": 20, "kind": "join", "nodes": [4]}]))
    first = (models[("n0", 20, "end")] + models[("n3", 20, "end")]) / 2
    assert torch.allclose(models[("n4", 21, "start")], first)  # its new neighbours' mean
    assert ("n4", 20, "end") not in models
    assert [(e["start"], e["members"]) for e in result.extra["epochs"]] == [
        (0, ["n0", "n1", "n2", "n3"]),
        (21, ["n0", "n1", "n2", "n3", "n4"]),
    ]
    assert [r.round for r in result.rounds] == list(range(1, 31))
    assert all(r.acc_mean is not None for r in result.rounds)
    assert {epoch for s, r, epoch in wire if "n4" in (s, r)} == {1}  # no frame before it joined
    assert any(s == "n4" for s, _, _ in wire)  # and it gossips once it has
    others = [accuracy(setup, result, i) for i in range(4)]
    joiner = accuracy(setup, result, 4)
    assert abs(joiner - sum(others) / 4) <= 0.01


def test_a_joiner_starts_from_the_mean_of_its_established_neighbours() -> None:
    sc = scenario(5, 30, [{"round": 20, "kind": "join", "nodes": [4]}])
    setup = prepare(sc)
    line, epochs = plan_epochs(sc, setup.graph)
    last = torch.randn(5, setup.dim)
    index = {f"n{i}": i for i in range(5)}
    models = start_models(line, epochs[1], last, index)
    assert set(models) == {"n4"}
    hood = epochs[1].graph_of["n4"].neighbourhood("n4", 21)  # type: ignore[union-attr]
    assert set(hood.in_weights) == {"n0", "n3"}  # a ring over the five
    assert torch.allclose(models["n4"], (last[0] + last[3]) / 2)


def test_a_leaver_and_a_revoked_member_stop_and_the_rest_finish(wire: list[Any]) -> None:
    events = [
        {"round": 10, "kind": "leave", "nodes": [1]},
        {"round": 15, "kind": "revoke", "nodes": [2]},
    ]
    _, result = run(scenario(5, 24, events, secure=SECURE))
    epochs = result.extra["epochs"]
    assert [(e["start"], e["members"]) for e in epochs] == [
        (0, ["n0", "n1", "n2", "n3", "n4"]),
        (11, ["n0", "n2", "n3", "n4"]),
        (16, ["n0", "n3", "n4"]),
    ]
    assert len(result.rounds) == 24
    assert all(epoch == 0 for s, r, epoch in wire if "n1" in (s, r))
    assert all(epoch <= 1 for s, r, epoch in wire if "n2" in (s, r))
    stayed = result.final_params[[0, 3, 4]]
    assert (stayed - stayed.mean(0)).norm() < (result.final_params[1] - stayed.mean(0)).norm()
    assert torch.equal(result.averaged, stayed.mean(0))  # the saved model: the stayers' only


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, int, str], torch.Tensor]:
    """Each node's model as it begins (``"start"``) and ends (``"end"``) each round."""
    seen: dict[tuple[str, int, str], torch.Tensor] = {}
    train, mixed = protocol_engine._Run._on_train, protocol_engine._Run._mixed

    def on_train(self: Any, now: float, index: int) -> None:
        node = self.nodes[index]
        seen[(node.name, node.round, "start")] = node.params[0].clone()
        train(self, now, index)

    def on_mixed(self: Any, node: Any, now: float, round: int) -> None:
        seen[(node.name, round, "end")] = node.params[0].clone()
        mixed(self, node, now, round)

    monkeypatch.setattr(protocol_engine._Run, "_on_train", on_train)
    monkeypatch.setattr(protocol_engine._Run, "_mixed", on_mixed)
    return seen


def test_a_site_cut_off_for_ten_rounds_is_absent_then_catches_up(
    wire: list[Any], models: dict[tuple[str, int, str], torch.Tensor]
) -> None:
    events = [
        {"round": 10, "kind": "partition", "groups": [[2]]},
        {"round": 20, "kind": "heal"},
    ]
    setup, result = run(scenario(5, 30, events, secure=SECURE))
    neighbours = (models[("n1", 19, "end")] + models[("n3", 19, "end")]) / 2
    assert torch.allclose(models[("n2", 20, "start")], neighbours)  # not its own stale model
    assert not torch.allclose(models[("n2", 19, "end")], neighbours)
    epochs = result.extra["epochs"]
    assert [(e["start"], e["absent"]) for e in epochs] == [(0, []), (10, ["n2"]), (20, [])]
    assert len(result.rounds) == 30
    assert not [w for w in wire if w[2] == 1 and "n2" in w[:2]]  # nothing crossed the cut
    _, whole = run(scenario(5, 30, [], secure=SECURE))
    assert result.rounds[-1].consensus < 2 * whole.rounds[-1].consensus
    others = [accuracy(setup, result, i) for i in (0, 1, 3, 4)]
    assert abs(accuracy(setup, result, 2) - sum(others) / 4) <= 0.02


def test_two_halves_train_apart_and_mix_again_once_healed() -> None:
    split = [{"round": 4, "kind": "partition", "groups": [[0, 1, 2]]}]
    _, apart = run(scenario(6, 16, split))
    assert [e["absent"] for e in apart.extra["epochs"]] == [[], []]  # no half holds a quorum
    final = apart.final_params
    within = max((final[:3] - final[:3].mean(0)).norm(), (final[3:] - final[3:].mean(0)).norm())
    between = (final[:3].mean(0) - final[3:].mean(0)).norm()
    assert within < between / 10
    _, healed = run(scenario(6, 16, [*split, {"round": 8, "kind": "heal"}]))
    _, whole = run(scenario(6, 16, []))
    assert healed.rounds[-1].consensus < apart.rounds[-1].consensus / 2
    assert healed.rounds[-1].consensus < 2 * whole.rounds[-1].consensus


def test_no_events_leave_the_run_as_it_was() -> None:
    _, result = run(scenario(4, 3, []))
    assert "epochs" not in result.extra


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"engine": "vectorized"}, "rehearsed by the protocol engine"),
        ({"gossip": {"mode": "async"}}, "need gossip.mode = 'sync'"),
        ({"events": [{"round": 2, "kind": "join", "nodes": [9]}]}, "node 9 does not exist"),
        ({"events": [{"round": 12, "kind": "heal"}]}, "the run has rounds 0..9"),
        (
            {"events": [{"round": 9, "kind": "join", "nodes": [3]}]},
            "join at round 9 takes effect at round 10, after the run's last",
        ),
        (
            {"events": [{"round": 9, "kind": "leave", "nodes": [1]}]},
            "leave at round 9 takes effect at round 10, after the run's last",
        ),
        ({"events": [{"round": 2, "kind": "join"}]}, "names its nodes"),
        ({"events": [{"round": 2, "kind": "partition", "nodes": [1]}]}, "names its groups"),
        ({"events": [{"round": 2, "kind": "split", "nodes": [1]}]}, "kind must be one of"),
        ({"events": [{"round": 2, "kind": "leave", "nodes": [1, 2, 3]}]}, "fewer than two"),
        (
            {"events": [{"round": 2, "kind": "partition", "groups": [[0, 1]]}], "secure": SECURE},
            "from round 2, the group n0, n1 cannot run the plan on its own",
        ),
    ],
)
def test_events_a_run_could_not_follow_are_refused_before_it_starts(
    change: dict[str, Any], message: str
) -> None:
    table: dict[str, Any] = {"events": [{"round": 5, "kind": "leave", "nodes": [0]}], **change}
    with pytest.raises(ConfigError, match=message):
        run(scenario(4, 10, table.pop("events"), **table))

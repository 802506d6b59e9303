"""The example of docs/membership.md (``simulations/membership.toml``), run as shipped.

The epochs the run reports are checked against the file's own events read with
the documented rule (a ledger change takes effect the round after the one named,
a network event in the round named; a side of a partition without a strict
majority of the members is absent), so editing the example keeps the test
meaningful. The run is not shortened: its events need its rounds, and it takes
about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.engines.common import RunResult
from p2pfl.events import EventSection
from p2pfl.scenario import Scenario, load_scenario

EXAMPLE = Path(__file__).resolve().parents[3] / "simulations" / "membership.toml"


@pytest.fixture(scope="module")
def example() -> tuple[Scenario, RunResult]:
    sc = load_scenario(EXAMPLE)
    return sc, run_engine("protocol", prepare(sc), "base")


def only(sc: Scenario, kind: str) -> EventSection:
    found = [e for e in sc.events if e.kind == kind]
    assert len(found) == 1, f"the example has one {kind}"
    return found[0]


def epoch_at(result: RunResult, round: int) -> dict[str, Any]:
    """The reported epoch that round ``round`` (from 0) runs in."""
    epochs: list[dict[str, Any]] = result.extra["epochs"]
    return [e for e in epochs if e["start"] <= round][-1]


def expected(sc: Scenario, names: list[str], round: int) -> tuple[list[str], list[str]]:
    """Members and absent members in ``round`` by the documented rule, from the file alone."""
    joins = {i: e.round for e in sc.events if e.kind == "join" for i in e.nodes}
    gone = {i: e.round for e in sc.events if e.kind in ("leave", "revoke") for i in e.nodes}
    members = [
        i for i in range(len(names)) if joins.get(i, -1) < round and gone.get(i, round) >= round
    ]
    cuts = [e for e in sc.events if e.kind in ("partition", "heal") and e.round <= round]
    absent: list[int] = []
    if cuts and cuts[-1].kind == "partition":
        named = [set(g) for g in cuts[-1].groups]
        sides = [[i for i in members if i in g] for g in named]
        sides.append([i for i in members if not any(i in g for g in named)])
        quorum = [s for s in sides if 2 * len(s) > len(members)]
        if quorum:
            absent = [i for i in members if i not in quorum[0]]
    return [names[i] for i in members], [names[i] for i in absent]


def test_every_round_runs_in_the_epoch_the_file_describes(
    example: tuple[Scenario, RunResult],
) -> None:
    sc, result = example
    names = result.node_names
    for round in range(sc.training.rounds):
        epoch = epoch_at(result, round)
        assert (epoch["members"], epoch["absent"]) == expected(sc, names, round), round
    ledger = {e.round + 1 for e in sc.events if e.kind in ("join", "leave", "revoke")}
    network = {e.round for e in sc.events if e.kind in ("partition", "heal")}
    assert [e["start"] for e in result.extra["epochs"]] == sorted({0} | ledger | network)


def test_the_joiner_leaver_revoked_and_cut_off_sites_change_at_their_boundaries(
    example: tuple[Scenario, RunResult],
) -> None:
    sc, result = example
    names = result.node_names
    join, leave, revoke = only(sc, "join"), only(sc, "leave"), only(sc, "revoke")
    partition, heal = only(sc, "partition"), only(sc, "heal")
    (joiner,), (leaver,), (revoked,) = ([names[i] for i in e.nodes] for e in (join, leave, revoke))
    assert joiner not in epoch_at(result, join.round)["members"]
    assert joiner in epoch_at(result, join.round + 1)["members"]
    for gone, event in ((leaver, leave), (revoked, revoke)):
        assert gone in epoch_at(result, event.round)["members"]  # its last round
        assert gone not in epoch_at(result, event.round + 1)["members"]
        assert gone not in epoch_at(result, sc.training.rounds - 1)["members"]
    (cut,) = partition.groups
    minority = sorted(names[i] for i in cut)
    assert epoch_at(result, partition.round - 1)["absent"] == []
    for round in range(partition.round, heal.round):
        assert epoch_at(result, round)["absent"] == minority
    back = epoch_at(result, heal.round)
    assert back["absent"] == [] and set(minority) <= set(back["members"])


def test_all_rounds_complete_and_the_result_is_the_last_members(
    example: tuple[Scenario, RunResult],
) -> None:
    sc, result = example
    assert [r.round for r in result.rounds] == list(range(1, sc.training.rounds + 1))
    assert all(r.acc_mean is not None for r in result.rounds)
    assert result.extra["late_frames"] == 0
    last = epoch_at(result, sc.training.rounds - 1)["members"]
    rows = [result.node_names.index(m) for m in last]
    assert torch.equal(result.averaged, result.final_params[rows].mean(0))

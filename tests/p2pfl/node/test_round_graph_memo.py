"""What a node asks at every ledger change before training costs O(1) while only progress
changes: the roster and the plan's tentative graph are kept per ledger version, and
whether it joins a run under way reads two records, not every member's progress (at
10,000 members, rebuilding the graph and copying the progress at every change held a
daemon to 665 progress updates a second; ``simulations/bench/ledger_flood_bench.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import nacl.signing
import pytest

from p2pfl.node.rounds import RoundDriver
from p2pfl.spec import plan_from_table
from protocols.ledger import Ledger, node_id_for

FOUNDER = nacl.signing.SigningKey(b"\x01" * 32)
MEMBERS = [nacl.signing.SigningKey(bytes([i]) * 32) for i in range(2, 6)]
PLAN = {
    "seed": 0,
    "data": {"input_shape": [37], "num_classes": 2},
    "model": {"name": "logreg"},
    "training": {"rounds": 3, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
    "topology": {"kind": "ring"},
}


def driver() -> tuple[Ledger, RoundDriver]:
    ledger = Ledger.found(FOUNDER, name="memo", nonce=b"n", address="ws://127.0.0.1:1")
    ledger.set_plan(FOUNDER, PLAN, clock=ledger.next_clock())
    for key in MEMBERS[:3]:
        ledger.admit(FOUNDER, bytes(key.verify_key), clock=ledger.next_clock(), address="ws://x")
    host = SimpleNamespace(node_id=node_id_for(bytes(MEMBERS[0].verify_key)), ledger=ledger)
    return ledger, RoundDriver(host)  # type: ignore[arg-type]


def test_the_tentative_graph_is_kept_while_only_progress_changes_and_rebuilt_on_a_member() -> None:
    ledger, rounds = driver()
    graph = rounds._graph_or_tentative()
    assert graph is not None and len(graph.roster) == 4
    links = rounds.wanted_links()
    for key in MEMBERS[1:3]:
        ledger.report_progress(key, 1, clock=ledger.next_clock())
        assert rounds._graph_or_tentative() is graph and rounds.wanted_links() == links
    ledger.admit(FOUNDER, bytes(MEMBERS[3].verify_key), clock=ledger.next_clock(), address="ws://y")
    grown = rounds._graph_or_tentative()
    assert grown is not graph and grown is not None
    assert grown.roster == tuple(sorted(ledger.members()))
    ledger.revoke(FOUNDER, node_id_for(bytes(MEMBERS[3].verify_key)), clock=ledger.next_clock())
    shrunk = rounds._graph_or_tentative()
    assert shrunk is not None and shrunk.roster == graph.roster
    ledger.set_plan(FOUNDER, {**PLAN, "topology": {"kind": "complete"}}, clock=ledger.next_clock())
    complete = rounds._graph_or_tentative()
    assert complete is not shrunk and complete is not None
    assert rounds.wanted_links() == set(complete.roster) - {rounds.me}


def test_joining_reads_two_records_not_every_members_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, rounds = driver()

    def copied() -> dict[str, int]:
        raise AssertionError("every member's progress copied at a ledger change")

    monkeypatch.setattr(ledger, "progress", copied)
    assert not rounds._joining()  # nobody progressed
    ledger.report_progress(MEMBERS[1], 2, clock=ledger.next_clock())
    assert rounds._joining()  # the others did, this node never did: it joins
    ledger.report_progress(MEMBERS[0], 1, clock=ledger.next_clock())
    assert not rounds._joining()


def test_round_of_and_anyone_progressed_agree_with_progress() -> None:
    ledger, _ = driver()
    ids = [node_id_for(bytes(key.verify_key)) for key in MEMBERS]
    assert [ledger.round_of(n) for n in ids] == [0, 0, 0, 0]
    assert not ledger.anyone_progressed()
    ledger.report_progress(MEMBERS[1], 4, clock=ledger.next_clock())
    progress = ledger.progress()
    assert [ledger.round_of(n) for n in ids] == [progress.get(n, 0) for n in ids] == [0, 4, 0, 0]
    assert ledger.anyone_progressed() and ledger.anyone_progressed(besides=ids[0])
    assert not ledger.anyone_progressed(besides=ids[1])


def test_the_departed_are_worked_out_once_per_epoch() -> None:
    _, rounds = driver()
    assert rounds.departed() == frozenset()  # no epochs before training
    run = rounds._graph_or_tentative()
    assert run is not None
    rounds.roster, rounds.graph = run.roster, run
    rounds.membership = object()  # type: ignore[assignment]
    assert rounds.departed() == frozenset()
    gone = run.roster[-1]
    epoch = plan_from_table(PLAN).graph(tuple(m for m in run.roster if m != gone), epoch=True)
    rounds.graph = epoch
    departed = rounds.departed()
    assert departed == {gone} and rounds.departed() is departed  # not two sets per change

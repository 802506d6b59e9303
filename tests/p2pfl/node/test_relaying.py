"""Who relays what in the daemon (``p2pfl.node.relaying``), from a real ledger."""

from __future__ import annotations

import nacl.signing

from p2pfl.node.relaying import ABSENT_LAG, Relaying, absent_members
from protocols.ledger import Ledger
from protocols.records import node_id_for
from topology.relays import edge

KEYS = [nacl.signing.SigningKey(bytes([n + 1]) * 32) for n in range(6)]
IDS = [node_id_for(bytes(k.verify_key)) for k in KEYS]
OPEN = {0, 1}  # these two have addresses; the other four accept no connection


def ledger() -> Ledger:
    book = Ledger.found(KEYS[0], name="relays", nonce=b"n" * 16, address="wss://a:1")
    for n in range(1, 6):
        address = f"wss://site{n}:1" if n in OPEN else ""
        book.admit(KEYS[0], bytes(KEYS[n].verify_key), clock=book.next_clock(), address=address)
    return book


def ring() -> set[tuple[str, str]]:
    order = sorted(IDS)
    return {edge(order[i], order[(i + 1) % 6]) for i in range(6)}


def relaying(book: Ledger, me: int) -> Relaying:
    return Relaying(IDS[me], book, ring)


def test_every_node_computes_the_same_relays_and_the_relay_agrees() -> None:
    book = ledger()
    views = [relaying(book, n).assignment() for n in range(6)]
    assert all(view == views[0] for view in views) and views[0]
    for (a, b), relay in views[0].items():
        assert {IDS.index(a), IDS.index(b)}.isdisjoint(OPEN) and IDS.index(relay) in OPEN
        assert relaying(book, IDS.index(relay)).allowed(a, b) is None
        assert relaying(book, IDS.index(a)).relay_for(b) == relay
        other = IDS[1] if relay == IDS[0] else IDS[0]
        code, reason = relaying(book, IDS.index(other)).allowed(a, b) or ("", "")
        assert code == "not-assigned" and relay in reason


def test_the_relay_refuses_strangers_direct_edges_and_non_edges() -> None:
    book = ledger()
    relay = relaying(book, 0)
    stranger = node_id_for(bytes(nacl.signing.SigningKey(b"\x99" * 32).verify_key))
    assert relay.allowed(IDS[2], stranger) == ("not-member", f"{stranger} is not a member")
    unreachable = sorted(IDS[2:])
    direct = next((a, b) for a, b in ring() if IDS[1] in (a, b) and IDS[0] not in (a, b))
    non_edges = [(a, b) for a in unreachable for b in unreachable if a < b and (a, b) not in ring()]
    for a, b in [direct, *non_edges]:
        verdict = relay.allowed(a, b)
        assert verdict is not None and verdict[0] == "not-assigned"
    assert relay.allowed(IDS[2], IDS[0]) == ("malformed", "a relay splices two other members")


def test_a_relay_that_lags_behind_is_absent_and_its_links_move() -> None:
    book = ledger()
    before = relaying(book, 2).assignment()
    loaded = IDS[0] if IDS[0] in before.values() else IDS[1]
    for n in range(6):
        if IDS[n] != loaded:
            book.report_progress(KEYS[n], ABSENT_LAG + 1, clock=book.next_clock())
    assert absent_members(book.progress(), sorted(IDS)) == {loaded}
    after = relaying(book, 2).assignment()
    assert set(after) == set(before) and loaded not in after.values()
    book.report_progress(KEYS[IDS.index(loaded)], 1, clock=book.next_clock())
    assert relaying(book, 2).assignment() == before  # within the lag again: it relays again


def test_no_reachable_member_leaves_the_links_unrelayed_and_says_why() -> None:
    book = Ledger.found(KEYS[0], name="closed", nonce=b"n" * 16)
    for n in range(1, 6):
        book.admit(KEYS[0], bytes(KEYS[n].verify_key), clock=book.next_clock())
    view = relaying(book, 3)
    assert view.assignment() == {} and view.relay_for(IDS[4]) is None
    assert "no reachable member exists" in view.error


def test_a_federation_of_reachable_sites_never_computes_its_edges() -> None:
    book = Ledger.found(KEYS[0], name="open", nonce=b"n" * 16, address="wss://a:1")

    def edges() -> set[tuple[str, str]]:
        raise AssertionError("computed")

    assert Relaying(IDS[0], book, edges).assignment() == {}


def test_a_ledger_change_that_changes_no_input_keeps_the_assignment() -> None:
    book = ledger()
    calls: list[int] = []
    edges = frozenset(ring())

    def counted() -> frozenset[tuple[str, str]]:
        calls.append(1)
        return edges

    view = Relaying(IDS[2], book, counted)
    first = view.assignment()
    book.approve(KEYS[3], b"h" * 32, clock=book.next_clock())  # no input of the assignment
    view.invalidate()
    assert view.assignment() is first and len(calls) == 2  # asked, compared, kept
    assert view.assignment() is first and len(calls) == 2  # not even asked: nothing changed
    gone = next(iter(first.values()))
    for n in range(6):
        if IDS[n] != gone:
            book.report_progress(KEYS[n], ABSENT_LAG + 1, clock=book.next_clock())
    view.invalidate()
    assert gone not in view.assignment().values()


def test_a_relay_that_signed_its_leave_hands_its_links_on() -> None:
    book = ledger()
    before = relaying(book, 3).assignment()
    leaving = next(iter(before.values()))
    book.leave(KEYS[IDS.index(leaving)], 5, clock=book.next_clock())
    after = relaying(book, 3).assignment()
    assert set(after) == set(before) and leaving not in after.values()
    assert all(after[e] == r for e, r in before.items() if r != leaving)

"""A member that sends crafted Yjs updates cannot take a verified record out of a view.

The hostile member H is authenticated (its updates arrive on a link like any
other) and holds its own pycrdt replica of the document, through which it
deletes and overwrites other members' records, reorders what it forwards and
replays old updates. Honest replicas A, B, C (a line: H - A - B - C) keep
every record they verified, put it back into the document, name H's link as
the offender (A does; B and C, which get A's change and repair as one update,
blame nobody), and converge.
"""

from __future__ import annotations

import itertools
import random

import nacl.signing
from pycrdt import Doc, Map
from test_ledger_sync import Net as HonestNet

from protocols.ledger import Ledger
from protocols.ledger_sync import Update
from protocols.records import node_id_for, seal


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


F, B, C, H = key(1), key(2), key(3), key(4)


def nid(k: nacl.signing.SigningKey) -> str:
    return node_id_for(bytes(k.verify_key))


class Net(HonestNet):
    """The honest replicas' links; what they send H is dropped (H has its own replica)."""

    def send(self, source: int, outgoing: list[tuple[str, bytes]]) -> None:
        super().send(source, [(peer, data) for peer, data in outgoing if peer != "H"])


def honest_line() -> Net:
    """A, B, C in a line, all members with one progress record each; everything delivered."""
    genesis = Ledger.found(F, name="hostile", nonce=b"n", client_id=100)
    for member in (B, C, H):
        genesis.admit(F, bytes(member.verify_key), clock=genesis.next_clock())
    state = genesis.encode_state()
    net = Net([Ledger.from_updates(genesis.federation_id, [state], client_id=i) for i in (1, 2, 3)])
    net.link(0, 1)
    net.link(1, 2)
    for i, writer in enumerate((F, B, C)):
        ledger = net.ledgers[i]
        net.write(i, ledger.report_progress(writer, 1, clock=ledger.next_clock()))
    net.drain()
    return net


class Hostile:
    """H's own replica of A's document, and what it sends A."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.doc: Doc = Doc(client_id=666)
        self.doc.apply_update(net.ledgers[0].encode_state())
        net.syncs[0].connect("H")

    def edit(self, change: object) -> bytes:
        """Run ``change(doc)`` on H's replica; return the Yjs update it made."""
        before = self.doc.get_state()
        change(self.doc)  # type: ignore[operator]
        return bytes(self.doc.get_update(before))

    def send(self, update: bytes) -> None:
        self.net.send(0, self.net.syncs[0].receive("H", Update(update).encode()))
        self.net.drain()


def views(net: Net) -> list[object]:
    out = []
    for ledger in net.ledgers:
        view = ledger.view()
        current = {n: {s: r.value for s, r in recs.items()} for n, recs in view.current.items()}
        out.append((view.members, current))
    return out


def test_deleting_other_members_records_is_undone_and_names_the_link() -> None:
    net = honest_line()
    before = views(net)
    hostile = Hostile(net)

    def delete_all(doc: Doc) -> None:
        for name in ("members", "progress"):
            entries = doc.get(name, type=Map)
            for entry_key in list(entries.keys()):
                del entries[entry_key]

    hostile.send(hostile.edit(delete_all))
    assert views(net) == before  # genesis, members and progress all still there
    lost = net.ledgers[0].take_violations()
    assert lost and {v.origin for v in lost} == {"H"}
    assert {v.kind for v in lost} == {"deleted"}
    assert {(v.map_name, v.author) for v in lost} >= {("members", nid(F)), ("progress", nid(B))}
    assert not net.ledgers[1].take_violations() and not net.ledgers[2].take_violations()
    for ledger in net.ledgers:  # put back into each document, not only kept in the view
        assert len(ledger.entries("progress")) == 3 and len(ledger.entries("members")) == 4


def test_overwriting_a_record_with_garbage_or_a_copy_is_undone() -> None:
    net = honest_line()
    before = views(net)
    hostile = Hostile(net)
    (b_key,) = [k for k in net.ledgers[0].entries("progress") if k.startswith(nid(B))]
    (c_key,) = [k for k in net.ledgers[0].entries("progress") if k.startswith(nid(C))]
    c_value = bytes(net.ledgers[0].entries("progress")[c_key])  # type: ignore[arg-type]

    def overwrite(doc: Doc) -> None:
        progress = doc.get("progress", type=Map)
        progress[b_key] = b"\x00" * 80
        progress[c_key] = seal(H, net.ledgers[0].federation_id, "progress", nid(C), 9, {})[1]

    hostile.send(hostile.edit(overwrite))
    assert views(net) == before
    lost = net.ledgers[0].take_violations()
    assert sorted((v.key, v.kind, v.origin) for v in lost) == sorted(
        [(b_key, "overwritten", "H"), (c_key, "overwritten", "H")]
    )
    assert bytes(net.ledgers[2].entries("progress")[c_key]) == c_value  # type: ignore[arg-type]


def test_the_authors_own_supersession_is_no_violation() -> None:
    net = honest_line()
    ledger = net.ledgers[1]
    net.write(1, ledger.report_progress(B, 2, clock=ledger.next_clock()))  # deletes round 1
    net.drain()
    assert all(lg.progress()[nid(B)] == 2 for lg in net.ledgers)
    assert all(not lg.take_violations() for lg in net.ledgers)
    assert all(len(lg.entries("progress")) == 3 for lg in net.ledgers)


def test_replayed_and_reordered_updates_leave_the_views_converged() -> None:
    net = honest_line()
    hostile = Hostile(net)
    old = net.ledgers[0].encode_state()
    updates = []
    for round_ in range(2, 6):  # honest progress at B, recorded as H would have seen it
        ledger = net.ledgers[1]
        update = ledger.report_progress(B, round_, clock=ledger.next_clock())
        net.write(1, update)
        updates.append(update)
    net.drain()
    before = views(net)
    rng = random.Random(7)
    for _ in range(3):  # old updates again, in any order, and the old document whole
        for update in rng.sample(updates, len(updates)):
            hostile.send(update)
        hostile.send(old)
    (b_old,) = [
        k
        for k in Ledger.from_updates(net.ledgers[0].federation_id, [old]).entries("progress")
        if k.startswith(nid(B))
    ]
    old_value = bytes(
        Ledger.from_updates(net.ledgers[0].federation_id, [old]).entries("progress")[b_old]
    )  # type: ignore[arg-type]
    hostile.send(
        hostile.edit(lambda doc: doc.get("progress", type=Map).__setitem__(b_old, old_value))
    )  # B's round 1, written again under a new item
    assert views(net) == before
    assert all(lg.progress()[nid(B)] == 5 for lg in net.ledgers)
    assert all(not lg.take_violations() for lg in net.ledgers)


def test_honest_updates_applied_in_any_order_converge_with_hostile_deletions() -> None:
    """Each replica gets the same honest updates shuffled, and H's deletions in between."""
    genesis = Ledger.found(F, name="order", nonce=b"n", client_id=100)
    for member in (B, C, H):
        genesis.admit(F, bytes(member.verify_key), clock=genesis.next_clock())
    state, fid = genesis.encode_state(), genesis.federation_id
    writers = [Ledger.from_updates(fid, [state], client_id=i) for i in (11, 12, 13)]
    honest = []
    for round_, (writer, k) in itertools.product(range(1, 4), zip(writers, (F, B, C), strict=True)):
        honest.append(writer.report_progress(k, round_, clock=writer.next_clock()))
    truth = Ledger.from_updates(fid, [state, *honest], client_id=20)
    hostile_doc: Doc = Doc(client_id=666)
    hostile_doc.apply_update(truth.encode_state())
    before = hostile_doc.get_state()
    progress = hostile_doc.get("progress", type=Map)
    for entry_key in list(progress.keys()):
        del progress[entry_key]
    deletion = bytes(hostile_doc.get_update(before))
    rng = random.Random(3)
    results = []
    for seed in range(4):
        replica = Ledger.from_updates(fid, [state], client_id=30 + seed)
        order = rng.sample(honest, len(honest))
        for i, update in enumerate(order):
            replica.apply_update(update, origin="honest")
            if i == len(order) // 2:
                replica.apply_update(deletion, origin="H")
        replica.apply_update(deletion, origin="H")
        assert {v.origin for v in replica.take_violations()} <= {"H"}
        results.append(replica.progress())
    assert all(r == truth.progress() == {nid(F): 3, nid(B): 3, nid(C): 3} for r in results)

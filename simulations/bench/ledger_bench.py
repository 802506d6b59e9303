"""Figures for the federation ledger: size, a fresh node's full sync, update size and rate.

Prints, for a federation of ``--members`` members (default 1,000), each admitted
by the founder with a ``wss://`` address, one approval and one progress record:

- the ledger's size: the document as one Yjs update, and the ledger file;
- a fresh node's full sync through ``LedgerSync`` (state vector out, step 2 in,
  applied), then the first validated view (every signature checked once);
- the bytes of one ``progress`` update (a node finishing its next round: the new
  record plus the deletion of its previous one), bare and as a wire message
  (target: under 300 B);
- incremental updates applied per second by one node with three neighbours
  (decode, de-duplicate, apply, forward); the cost of bringing the validated
  view up to date afterwards (it re-reads the document, then judges only the
  changed entries), and the rate when the view is refreshed every 1 or 100
  updates;
- the latency of one local write (it checks the write against the whole view).

Times are the best of ``--repeat`` runs; the load average is printed so that
contended numbers can be recognised.

    python simulations/bench/ledger_bench.py [--members N] [--updates U] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import TypeVar

import nacl.signing

from p2pfl.ledger_file import encode_ledger_file
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync, Update
from protocols.records import node_id_for, plan_hash, seal

T = TypeVar("T")


def best_of(repeat: int, run: Callable[[], T]) -> tuple[float, T]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return best, result


def build(members: int) -> tuple[Ledger, list[nacl.signing.SigningKey]]:
    """A federation as it would be after everybody joined, approved and did one round.

    Records are sealed and inserted directly (one transaction each) so that the
    set-up does not pay ``Ledger``'s per-write check a thousand times.
    """
    founder = nacl.signing.SigningKey(b"\x01" * 32)
    ledger = Ledger.found(founder, name="bench", nonce=b"n", address="wss://founder:8443")
    ledger.set_plan(founder, {"model": "mlp", "rounds": 100, "lr": 0.05}, clock=2)
    hashed = plan_hash({"model": "mlp", "rounds": 100, "lr": 0.05})
    fid, clock = ledger.federation_id, 3
    keys = [nacl.signing.SigningKey(i.to_bytes(4, "big") * 8) for i in range(1, members + 1)]
    for key in keys:
        verify_key = bytes(key.verify_key)
        node_id = node_id_for(verify_key)
        payload = {
            "verify_key": verify_key,
            "box_key": bytes(key.verify_key.to_curve25519_public_key()),
            "address": f"wss://{node_id[:8]}.hospital.example:8443",
            "institution": f"site {node_id[:6]}",
            "admin": False,
        }
        ledger.insert_raw("members", *seal(founder, fid, "members", node_id, clock, payload))
        ledger.insert_raw(
            "approvals", *seal(key, fid, "approvals", node_id, clock + 1, {"plan_hash": hashed})
        )
        ledger.insert_raw("progress", *seal(key, fid, "progress", node_id, clock + 2, {"round": 0}))
        clock += 3
    return ledger, keys


def full_sync(source: Ledger) -> Ledger:
    """A fresh node connects to ``source``'s node and catches up."""
    fresh = Ledger(source.federation_id)
    near, far = LedgerSync(fresh), LedgerSync(source)
    ((_, step1),) = near.connect("source")
    far.connect("fresh")
    for _, reply in far.receive("fresh", step1):
        near.receive("source", reply)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (cpus: {os.cpu_count()})")

    start = time.perf_counter()
    ledger, keys = build(args.members)
    print(f"built a ledger of {args.members} members in {time.perf_counter() - start:.1f} s")
    assert len(ledger.members()) == args.members + 1 and ledger.rejected_count == 0

    state = ledger.encode_state()
    file_size = len(encode_ledger_file(ledger.federation_id, [state]))
    print(f"ledger size: {len(state):,} B as one Yjs update, {file_size:,} B as a file")
    print(f"  ({len(state) / args.members:.0f} B per member: member record, approval, progress)")

    sync_s, fresh = best_of(args.repeat, lambda: full_sync(ledger))
    view_s, _ = best_of(1, lambda: len(fresh.members()))
    assert fresh.members() == ledger.members() and fresh.progress() == ledger.progress()
    print(f"fresh node full sync: {sync_s * 1e3:.1f} ms (messages + apply)")
    print(f"  first validated view: {view_s * 1e3:.1f} ms; total {(sync_s + view_s) * 1e3:.1f} ms")

    node = keys[0]
    one_update = ledger.report_progress(node, 1, clock=ledger.next_clock())
    wire = Update(one_update).encode()
    print(f"one progress update: {len(one_update)} B ({len(wire)} B as a wire message)")

    write_s, _ = best_of(
        args.repeat,
        lambda: ledger.report_progress(node, 2, clock=ledger.next_clock()),
    )
    print(f"one local write at {args.members} members: {write_s * 1e3:.1f} ms (checked)")

    updates = []
    state = ledger.encode_state()  # the replicas below start here
    fid, clock = ledger.federation_id, ledger.next_clock()
    for i in range(args.updates):
        key = keys[i % len(keys)]
        node_id = node_id_for(bytes(key.verify_key))
        record = seal(key, fid, "progress", node_id, clock + i, {"round": 10 + i})
        updates.append(Update(ledger.insert_raw("progress", *record)).encode())

    def replica() -> tuple[Ledger, LedgerSync]:
        node = Ledger.from_updates(fid, [state])
        sync = LedgerSync(node)
        for peer in ("source", "n1", "n2", "n3"):
            sync.connect(peer)
        node.members()  # validated once, before the clock starts
        return node, sync

    def apply_all(sync: LedgerSync, refresh_every: int) -> float:
        start, forwarded = time.perf_counter(), 0
        for i, message in enumerate(updates, 1):
            forwarded += len(sync.receive("source", message))
            if refresh_every and i % refresh_every == 0:
                sync.ledger.progress()
        assert forwarded == 3 * len(updates)
        return time.perf_counter() - start

    bare_s = min(apply_all(replica()[1], 0) for _ in range(args.repeat))
    node, sync = replica()
    apply_all(sync, 0)
    view_s, _ = best_of(1, node.progress)
    print(
        f"updates applied: {len(updates) / bare_s:,.0f}/s (decode, de-dup, apply, forward to 3);"
        f" then one view refresh: {view_s * 1e3:.1f} ms"
    )
    for every in (1, 100):
        refresh_s = apply_all(replica()[1], every)
        print(f"  with the view refreshed every {every}: {len(updates) / refresh_s:,.0f} updates/s")


if __name__ == "__main__":
    main()

"""Figures for the federation ledger: size, a fresh node's sync, first view, update rate.

Prints, for a federation of ``--members`` members (default 1,000; the targets are
for 10,000), each admitted by the founder with a ``wss://`` address, one approval
and one progress record:

- the ledger's size: the document as one Yjs update, and the ledger file;
- a fresh node's full sync through ``LedgerSync`` (state vector out, step 2 in,
  applied, first view);
- the first validated view of a document (every signature checked once), with
  the signatures checked on one core and on the free cores (a node's
  ``p2pfl.threads.parallel_map``), beside its floor measured in the same run: the
  same signatures checked by libsodium (``crypto_sign_open``) on one core and
  nothing else; target: at most 1.2x the floor;
- the bytes of one ``progress`` update, bare and as a wire message;
- the latency of one local write (it checks the write against the view);
- progress updates applied per second by one node with three neighbours, the
  view kept current (decode, de-duplicate, apply, read back the touched entries,
  verify the new record, forward; then the updated record read from the view);
  target: at least 10,000/s, printed beside one signature check per update, the
  floor on one core. Measured twice: one update at a time as it arrives, and in
  bursts of ``--burst`` updates in hand (a neighbour's flood queued up, a node
  catching up), whose signatures ``LedgerSync.prepare`` checks ahead in one batch
  on the free cores, each update then applied and the view read after it as before.

Times are the best of ``--repeat`` runs; the load average is printed so that
contended numbers can be recognised (every figure is also printed as a ratio to
a floor measured in the same run).

    python simulations/bench/ledger_bench.py --members 10000 --updates 2000 [--repeat R] [--burst B]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import TypeVar

import nacl.bindings
import nacl.signing

from p2pfl.ledger_file import encode_ledger_file
from p2pfl.threads import free_cores, parallel_map
from protocols.ledger import Ledger
from protocols.ledger_doc import MAPS
from protocols.ledger_rules import Checks
from protocols.ledger_sync import LedgerSync, Update
from protocols.records import SIGNATURE_SIZE, node_id_for, plan_hash, seal

T = TypeVar("T")
TARGET_VIEW_RATIO = 1.2
TARGET_UPDATES = 10_000


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

    Records are sealed and stored in one transaction per map, so that the set-up
    does not pay ``Ledger``'s per-write check (nor a view per write) ten thousand times.
    """
    founder = nacl.signing.SigningKey(b"\x01" * 32)
    ledger = Ledger.found(founder, name="bench", nonce=b"n", address="wss://founder:8443")
    ledger.set_plan(founder, {"model": "mlp", "rounds": 100, "lr": 0.05}, clock=2)
    hashed = plan_hash({"model": "mlp", "rounds": 100, "lr": 0.05})
    fid, clock = ledger.federation_id, 3
    keys = [nacl.signing.SigningKey(i.to_bytes(4, "big") * 8) for i in range(1, members + 1)]
    records: dict[str, dict[str, bytes]] = {"members": {}, "approvals": {}, "progress": {}}
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
        sealed = [
            ("members", seal(founder, fid, "members", node_id, clock, payload)),
            ("approvals", seal(key, fid, "approvals", node_id, clock + 1, {"plan_hash": hashed})),
            ("progress", seal(key, fid, "progress", node_id, clock + 2, {"round": 0})),
        ]
        for name, (entry_key, value) in sealed:
            records[name][entry_key] = value
        clock += 3
    for name, entries in records.items():
        ledger.store.transact(name, entries, ())
    return ledger, keys


def signature_floor(ledger: Ledger, repeat: int) -> tuple[float, int]:
    """Seconds to check every signature of the ledger once with libsodium, and how many.

    The physical floor of a first view: nothing but ``crypto_sign_open`` on each
    stored record (its signed message built beforehand, outside the clock).
    """
    view = ledger.view()
    keys = {node: m.verify_key for node, m in view.members.items()}
    checks = []
    for name in MAPS:
        for record in view.current[name].values():
            fid = "" if record.key == view.genesis_key else ledger.federation_id
            signed = record.value[-SIGNATURE_SIZE:] + record.signed_message(fid)
            checks.append((signed, keys[record.author]))

    def run() -> int:
        for signed, verify_key in checks:
            nacl.bindings.crypto_sign_open(signed, verify_key)
        return len(checks)

    return best_of(repeat, run)


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
    parser.add_argument("--burst", type=int, default=1000, help="updates prepared together")
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
    assert fresh.members() == ledger.members() and fresh.progress() == ledger.progress()
    print(f"fresh node full sync: {sync_s * 1e3:.1f} ms (messages + apply + first view)")

    def first_view(checks: Checks) -> float:
        replica = Ledger(ledger.federation_id, checks=checks)
        replica.store.apply_update(ledger.encode_state())  # the document only, no view yet
        start = time.perf_counter()
        count = len(replica.view().members)
        assert count == args.members + 1
        return time.perf_counter() - start

    view_s = min(first_view(map) for _ in range(args.repeat))
    parallel_s = min(first_view(parallel_map) for _ in range(args.repeat))
    floor_s, signatures = signature_floor(ledger, args.repeat)
    print(
        f"first validated view: {view_s * 1e3:.0f} ms on one core, {parallel_s * 1e3:.0f} ms with"
        f" the signatures checked on the free cores ({free_cores()} now; what a node does);"
        f" floor ({signatures:,} signatures checked by libsodium on one core, nothing else):"
        f" {floor_s * 1e3:.0f} ms; ratios {view_s / floor_s:.2f}x and {parallel_s / floor_s:.2f}x"
        f" (target: at most {TARGET_VIEW_RATIO}x)"
    )

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
        node = Ledger.from_updates(fid, [state], checks=parallel_map)  # as a node's
        sync = LedgerSync(node)
        for peer in ("source", "n1", "n2", "n3"):
            sync.connect(peer)
        node.members()  # validated once, before the clock starts
        return node, sync

    def apply_all(sync: LedgerSync, current: bool, burst: int = 1) -> float:
        """Every update through sync; with ``current``, the view read after each one; with
        ``burst`` over one, each ``burst`` updates prepared together first."""
        start, forwarded = time.perf_counter(), 0
        for i, message in enumerate(updates):
            if burst > 1 and i % burst == 0:
                sync.prepare(updates[i : i + burst])
            forwarded += len(sync.receive("source", message))
            if current:
                node = writers[i]
                assert sync.ledger.view().current["progress"][node].payload["round"] == 10 + i
        assert forwarded == 3 * len(updates)
        return time.perf_counter() - start

    writers = [node_id_for(bytes(keys[i % len(keys)].verify_key)) for i in range(args.updates)]
    bare_s = min(apply_all(replica()[1], False) for _ in range(args.repeat))
    current_s = min(apply_all(replica()[1], True) for _ in range(args.repeat))
    burst_s = min(apply_all(replica()[1], True, args.burst) for _ in range(args.repeat))
    one_check = floor_s / signatures
    print(
        f"progress updates applied with the view kept current: {len(updates) / current_s:,.0f}/s"
        f" one at a time, {len(updates) / burst_s:,.0f}/s in bursts of {args.burst} checked"
        f" ahead on the free cores ({free_cores()} now) (target: at least {TARGET_UPDATES:,}/s;"
        " decode, de-dup, apply, verify, forward to 3)"
    )
    print(
        f"  floor: one signature check per update, {1 / one_check:,.0f}/s;"
        f" ratio to the floor {len(updates) / current_s * one_check:.2f};"
        f" the view read once per update costs {(current_s - bare_s) / len(updates) * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()

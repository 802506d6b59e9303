"""A daemon's ledger under a flood: progress records applied per second at 10,000 members.

``ledger_bench`` measures the ledger's sync core on its own. This runs the real
stack: two node daemons on loopback (``ws://``; ``--tls`` for ``wss://``), each in
its own process, in a federation of ``--members`` members besides them (admitted
by the founder, no address: nobody dials them). Once their link is up and their
ledgers synced, one daemon floods the other with ``--updates`` progress records
signed by those members, as a neighbour relays a federation's progress. The
receiver takes them as its links deliver them: transport, channel router, the
ledger replica (decode, de-duplicate, apply, check, view), and what the node does
after a change. Printed:

- how long the receiving daemon took to start (``Node`` entered: its ledger loaded
  and every signature checked, the plan's graph over all members, the relays);
- progress records applied per second by the receiving daemon, from the first
  applied to the last (the view is current after each one: a daemon reads it at
  any await), and how many frames it took in per turn of its event loop;
- the same records applied by the ledger's sync core alone, in one process, one
  at a time and in bursts of ``--burst`` (``ledger_bench``'s two figures);
- the floor: one libsodium signature check per record on one core, nothing else,
  measured in the same run (``crypto_sign_open``).

Target (issue "the ledger at 10,000 members"): at least 10,000 progress updates
applied per second with the view kept current. The sending daemon runs beside
the receiver, at a lower priority (``nice`` 10, as if on another machine); on a
2-core machine it still takes a part of a core while the flood lasts.

    python simulations/bench/ledger_flood_bench.py --members 10000 --updates 20000 [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import nacl.bindings
import nacl.signing

from p2pfl.engines.processes import free_ports
from p2pfl.identity import Identity, create_identity
from p2pfl.node.bootstrap import Site, site_files
from p2pfl.node.channels import Channel, tagged
from p2pfl.node.config import NodeConfig, load_config
from p2pfl.node.node import Node
from p2pfl.threads import free_cores, parallel_map
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync, Update
from protocols.records import SIGNATURE_SIZE, box_key_for, node_id_for, seal

TARGET = 10_000
SETTLE = 0.5  # seconds between the ledgers synced and the flood


def config(path: Path, tls: bool) -> NodeConfig:
    return load_config(path) if tls else replace(load_config(path), insecure=True)


def sites_first() -> list[Identity]:
    """Two identities whose node ids sort before most others (they start with '2', the
    smallest letter of a node id): the members are drawn to sort after them, so that on
    the plan's ring the two sites are neighbours."""
    found: list[Identity] = []
    while len(found) < 2:
        identity = create_identity()
        if identity.node_id.startswith("2"):
            found.append(identity)
    return found


def federation(root: Path, members: int, tls: bool) -> tuple[list[Path], Ledger, list[bytes]]:
    """Two sites and ``members`` more; the sites' configs, the ledger and the members' keys."""
    ids = sites_first()
    ports = free_ports(2)
    scheme = "wss" if tls else "ws"
    sites = [
        Site(f"site{i}", f"{scheme}://127.0.0.1:{port}", "p2pfl.node.examples:heart_site", [name])
        for i, (port, name) in enumerate(zip(ports, ("Cleveland", "Hungary"), strict=True))
    ]
    founder = ids[0].signing_key
    ledger = Ledger.found(founder, name="flood", nonce=os.urandom(16), address=sites[0].listen)
    plan = {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": 1, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "ring"},
    }
    ledger.set_plan(founder, plan, clock=ledger.next_clock())
    ledger.admit(
        founder, bytes(ids[1].verify_key), clock=ledger.next_clock(), address=sites[1].listen
    )
    plan_hash = ledger.plan_hash()
    assert plan_hash is not None
    for identity in ids:
        ledger.approve(identity.signing_key, plan_hash, clock=ledger.next_clock())
    lowest = max(i.node_id for i in ids)
    keys: list[bytes] = []
    records: dict[str, bytes] = {}
    clock = ledger.next_clock()
    while len(keys) < members:
        key = nacl.signing.SigningKey.generate()
        verify_key = bytes(key.verify_key)
        node_id = node_id_for(verify_key)
        if node_id <= lowest:
            continue  # it would sit between the two sites on the ring
        payload = {
            "verify_key": verify_key,
            "box_key": box_key_for(verify_key),
            "address": "",
            "institution": f"member {len(keys)}",
            "admin": False,
        }
        entry_key, value = seal(founder, ledger.federation_id, "members", node_id, clock, payload)
        records[entry_key] = value
        keys.append(bytes(key))
        clock += 1
    ledger.store.transact("members", records, ())  # one transaction, not a checked write each
    assert len(ledger.members()) == members + 2 and ledger.rejected_count == 0
    pairs = zip(sites, ids, strict=True)
    configs = [site_files(root, site, i, ledger, tls=tls).config for site, i in pairs]
    return configs, ledger, keys


def progress_updates(ledger: Ledger, keys: list[bytes], count: int) -> list[bytes]:
    """``count`` progress records of the members, each as the Yjs update that carries it."""
    source = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()])
    fid, clock = ledger.federation_id, ledger.next_clock()
    updates = []
    for i in range(count):
        key = nacl.signing.SigningKey(keys[i % len(keys)])
        node_id = node_id_for(bytes(key.verify_key))
        record = seal(key, fid, "progress", node_id, clock + i, {"round": 1 + i // len(keys)})
        updates.append(source.insert_raw("progress", *record))
    return updates


def signature_floor(ledger: Ledger, updates: list[bytes]) -> float:
    """Seconds per check: libsodium on each record's signed message, nothing else."""
    replica = Ledger.from_updates(ledger.federation_id, [ledger.encode_state(), *updates])
    view = replica.view()
    keys = {node: m.verify_key for node, m in view.members.items()}
    checks = []
    for slot in view.current["progress"].values():
        signed = slot.value[-SIGNATURE_SIZE:] + slot.signed_message(ledger.federation_id)
        checks.append((signed, keys[slot.author]))
    start = time.perf_counter()
    for signed, verify_key in checks:
        nacl.bindings.crypto_sign_open(signed, verify_key)
    return (time.perf_counter() - start) / len(checks)


def core_rates(ledger: Ledger, updates: list[bytes], burst: int) -> tuple[float, float]:
    """Updates per second through ``LedgerSync`` alone: one at a time, and in bursts."""
    state = ledger.encode_state()
    messages = [Update(u).encode() for u in updates]

    def run(size: int) -> float:
        node = Ledger.from_updates(ledger.federation_id, [state], checks=parallel_map)
        sync = LedgerSync(node)
        sync.connect("source")
        node.members()  # the first view, before the clock starts
        start = time.perf_counter()
        for i, message in enumerate(messages):
            if size > 1 and i % size == 0:
                sync.prepare(messages[i : i + size])
            sync.receive("source", message)
            node.view()
        return len(messages) / (time.perf_counter() - start)

    return run(1), run(burst)


async def synced(node: Node) -> None:
    """Until the node's link is up and the ledgers on it exchanged."""
    while not node.linked() or not node.synced(node.linked()[0]):
        await asyncio.sleep(0.01)


async def receive(path: Path, tls: bool, sender: list[str], expected: int) -> dict[str, float]:
    """Run the receiving daemon; start the sender; time the flood until all of it applied."""
    started = time.perf_counter()
    async with Node(config(path, tls)) as node:
        started = time.perf_counter() - started
        process = subprocess.Popen(sender)
        try:
            async with asyncio.timeout(120):
                await synced(node)
                await asyncio.sleep(SETTLE / 2)
                base, drains = node.sync.changes, node.replica.drains
                while node.sync.changes == base:
                    await asyncio.sleep(0.001)
                first = time.perf_counter()
                while node.sync.changes < base + expected:
                    await asyncio.sleep(0.002)
                last = time.perf_counter()
            applied = node.sync.changes - base
            per_turn = applied / max(1, node.replica.drains - drains)
            return {
                "seconds": last - first,
                "applied": applied,
                "per_turn": per_turn,
                "started": started,
            }
        finally:
            process.terminate()
            process.wait(timeout=30)


async def send(path: Path, tls: bool, frames_file: Path) -> None:
    """The sending daemon: once synced with its neighbour, send every frame, then idle.

    It runs at a lower priority (``nice`` 10): on a deployment it is another machine,
    and here it should take from the receiver only what the cores cannot both serve.
    """
    os.nice(10)
    frames = msgpack.unpackb(frames_file.read_bytes())
    async with Node(config(path, tls)) as node:
        await synced(node)
        await asyncio.sleep(SETTLE)
        peer = node.linked()[0]
        for frame in frames:
            node.links.send(peer, tagged(Channel.LEDGER, Update(frame).encode()))
        await asyncio.Event().wait()  # until the receiver ends this process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=1000, help="the core's bursts")
    parser.add_argument("--tls", action="store_true", help="wss:// links")
    parser.add_argument("--send", nargs=2, metavar=("CONFIG", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        asyncio.run(send(Path(args.send[0]), args.tls, Path(args.send[1])))
        return
    print(f"load average: {os.getloadavg()[0]:.2f} (cpus: {os.cpu_count()})")
    with tempfile.TemporaryDirectory(prefix="p2pfl-flood-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        configs, ledger, keys = federation(root, args.members, args.tls)
        updates = progress_updates(ledger, keys, args.updates)
        frames_file = root / "frames.msgpack"
        frames_file.write_bytes(msgpack.packb(updates))
        print(
            f"a federation of {args.members:,} members and 2 daemons, {args.updates:,} progress"
            f" records: set up in {time.perf_counter() - start:.1f} s"
        )
        sender = [sys.executable, __file__, "--send", str(configs[1]), str(frames_file)]
        sender += ["--tls"] if args.tls else []
        found = asyncio.run(receive(configs[0], args.tls, sender, args.updates))
        rate = found["applied"] / found["seconds"]
        print(
            f"the receiving daemon started in {found['started']:.2f} s (its ledger loaded and"
            f" checked, {args.members + 2:,} members' graph and relays worked out)"
        )
        print(
            f"receiving daemon ({'wss' if args.tls else 'ws'}): {rate:,.0f} updates/s applied,"
            f" the view current after each, {found['per_turn']:.0f} frames handled per turn of"
            f" its loop (target: at least {TARGET:,}/s)"
        )
        one, burst = core_rates(ledger, updates, args.burst)
        print(
            f"the sync core alone: {one:,.0f}/s one at a time, {burst:,.0f}/s in bursts of"
            f" {args.burst} on the free cores ({free_cores()} now)"
        )
        check = signature_floor(ledger, updates)
        print(
            f"  floor: one signature check per update, {1 / check:,.0f}/s on one core;"
            f" ratios to it: daemon {rate * check:.2f}, core {one * check:.2f}"
            f" one at a time, {burst * check:.2f} in bursts"
        )


if __name__ == "__main__":
    main()

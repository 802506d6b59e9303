"""Hostile Yjs bytes from a peer or a file: a DecodeError, the replica unchanged and small.

Each input here was found by mutating valid ledger updates and state vectors:
pycrdt (Yrs) panicked on them, or reserved hundreds of megabytes for a few
bytes. Memory is measured in a child process (``ru_maxrss``), since Rust's
allocations are invisible to ``tracemalloc``.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import nacl.signing
import pytest
from pycrdt import Doc

from protocols.errors import DecodeError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.ledger_doc import LedgerDoc
from protocols.ledger_sync import LedgerSync, SyncStep1, Update
from protocols.yjs_items import walk

ROOT = Path(__file__).resolve().parents[2]
SEVEN_BYTES = bytes.fromhex("ffffffff0185c2")  # a state vector declaring 2^32 - 1 clients
# Passes every bound, yet Yrs 0.28 unwraps a None integrating it into the replica below.
PANICS_WHEN_INTEGRATED = bytes.fromhex("01010201a8020100010200")
# A start clock of 2^32 - 1: Yrs indexes out of bounds deleting past it.
CLOCK_OVERFLOW = bytes.fromhex(
    "010102ffffffff0f28010870726f67726573731c756867617237356b6d6d32663474356176776c7a626d66647a"
    "6d403701746593ba756867617237356b6d6d32663474356176776c7a626d66647a6d0781a5726f756e6402c45d"
    "e9a9355c64936328d15bb71e41f090499bb614c9625172669af762af2d7a298e24790213a39781e486782ebb49"
    "33235b47441c2fc8b1170a5bd991cbcc040102010101"
)
# Counts that made Yrs 0.28 reserve (and touch) memory for what is not there: 512 MiB for the
# client counts, 282 MiB for the 17-byte map of 2^27 entries.
BOMBS = {
    "clients": bytes.fromhex("c2dd8676"),
    "clients, 2^28": bytes.fromhex("ffffff7f0f00"),
    "map of 2^27 values": bytes.fromhex("010102002801016d016b01768080804000"),
}


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


def two_writers() -> tuple[Ledger, list[bytes]]:
    """Founder and a member, each writing progress from their own replica."""
    f, a, b = key(1), key(2), key(3)
    ledger = Ledger.found(f, name="demo", nonce=b"n", address="wss://f:1", client_id=1)
    ledger.admit(f, bytes(a.verify_key), clock=ledger.next_clock(), admin=True)
    ledger.admit(a, bytes(b.verify_key), clock=ledger.next_clock(), address="wss://b:1")
    ledger.set_plan(f, {"model": "mlp", "rounds": 5}, clock=ledger.next_clock())
    base = ledger.encode_state()
    other = Ledger.from_updates(ledger.federation_id, [base], client_id=2)
    updates = []
    for round_ in range(3):
        mine = ledger.report_progress(f, round_, clock=ledger.next_clock())
        theirs = other.report_progress(b, round_, clock=other.next_clock())
        other.apply_update(mine)
        ledger.apply_update(theirs)
        updates += [mine, theirs]
    return ledger, [base, *updates]


def test_pycrdt_itself_panics_on_these_updates() -> None:
    """The inputs stay meaningful: raw pycrdt raises a BaseException on each (the clock
    overflow is taken in silently, and the next valid update then panics)."""
    ledger, updates = two_writers()
    for state, hostile in (
        (ledger.encode_state(), PANICS_WHEN_INTEGRATED),
        (updates[0], CLOCK_OVERFLOW),
    ):
        doc: Doc = Doc(client_id=9)
        doc.apply_update(state)
        with pytest.raises(BaseException) as caught:
            doc.apply_update(hostile)
            doc.apply_update(ledger.encode_state())
        assert type(caught.value).__name__ == "PanicException"


@pytest.mark.parametrize("which", ["integrated", "clock overflow"])
def test_a_panicking_update_is_a_decode_error_and_changes_nothing(which: str) -> None:
    ledger, updates = two_writers()
    update = PANICS_WHEN_INTEGRATED if which == "integrated" else CLOCK_OVERFLOW
    start = [ledger.encode_state()] if which == "integrated" else updates[:1]
    replica = Ledger.from_updates(ledger.federation_id, start, client_id=9)
    before, members = replica.encode_state(), replica.members()
    with pytest.raises(DecodeError):
        replica.apply_update(update)
    assert replica.encode_state() == before and replica.members() == members
    replica.apply_update(ledger.encode_state())  # the replica still works
    assert replica.members() == ledger.members()


def test_a_panic_that_slips_past_the_bounds_is_contained_and_undone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second line: with no bounds at all, a panic still comes out as DecodeError."""
    # The walk that checks the bounds, with no limits given: it checks nothing.
    monkeypatch.setattr("protocols.ledger_doc.walk", lambda update, limits=None: walk(update))
    ledger, _ = two_writers()
    replica = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()], client_id=9)
    before = replica.encode_state()
    with pytest.raises(DecodeError, match="panicked"):
        replica.apply_update(PANICS_WHEN_INTEGRATED)
    assert replica.encode_state() == before


def test_a_hostile_update_from_a_peer_is_a_peer_protocol_error() -> None:
    ledger, _ = two_writers()
    sync = LedgerSync(ledger)
    sync.connect("mallory")
    for data in (
        Update(CLOCK_OVERFLOW).encode(),
        SyncStep1(ledger.federation_id, SEVEN_BYTES).encode(),
    ):
        with pytest.raises(PeerProtocolError):
            sync.receive("mallory", data)


def _peak_growth(script: str) -> dict[str, object]:
    """Run ``script`` in a child; it prints JSON, with ``ru_maxrss`` growth in KiB per input."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "RUST_BACKTRACE": "0"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


GROWTH = """
import json, resource
from protocols.errors import DecodeError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync, SyncStep1, Update
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ledger = Ledger("0" * 32, client_id=1)
sync = LedgerSync(ledger); sync.connect("mallory")
inputs = {INPUTS}
growth = {{}}
for name, data in inputs.items():
    before = peak()
    try:
        sync.receive("mallory", data)
    except PeerProtocolError:
        pass
    growth[name] = peak() - before
print(json.dumps(growth))
"""


def test_a_few_bytes_cannot_make_a_replica_allocate() -> None:
    """The 7-byte state vector reserved about 1 GiB in Yrs; each bomb now costs under 16 MiB."""
    inputs = {"sync step 1, 7 bytes": SyncStep1("0" * 32, SEVEN_BYTES).encode()}
    inputs.update({name: Update(data).encode() for name, data in BOMBS.items()})
    growth = _peak_growth(GROWTH.format(INPUTS=repr(inputs)))
    assert set(growth) == set(inputs)
    assert all(isinstance(kib, int) and kib < 16 << 10 for kib in growth.values()), growth


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_replicas_are_freed_so_that_restores_and_refusals_do_not_leak() -> None:
    """A dropped replica is collected, and a closed one gives its document back to pycrdt."""
    ledger, _ = two_writers()
    state = ledger.encode_state()
    store = weakref.ref(ledger.store)
    del ledger
    gc.collect()
    assert store() is None
    before = _rss_kib()
    for _ in range(3000):
        doc = LedgerDoc(client_id=7)
        doc.apply_update(state)
        doc.close()
    gc.collect()
    assert _rss_kib() - before < 8 << 10  # pycrdt kept ~7 KiB of each observed document

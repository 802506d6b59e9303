"""Ledger files: a hostile update in one is a LedgerFileError; a whole ledger may be large."""

from __future__ import annotations

import nacl.signing
import pytest

from p2pfl.errors import LedgerFileError
from p2pfl.ledger_file import encode_ledger_file, ledger_from_bytes
from protocols.errors import DecodeError
from protocols.ledger import Ledger
from protocols.yjs_bounds import DEFAULT_LIMITS

# Yrs 0.28 panics (``unwrap`` on ``None``) integrating this after the state below.
PANICS_WHEN_INTEGRATED = bytes.fromhex("01010201a8020100010200")


def var(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes([*out, n])


def blob(data: bytes) -> bytes:
    return var(len(data)) + data


def many_values(n: int) -> bytes:
    """One client's one struct in map ``metrics``: ``n`` null values (the lib0 v1 layout)."""
    head = var(1) + var(1) + var(2) + var(0) + b"\x28" + var(1) + blob(b"metrics") + blob(b"bulk")
    return head + var(n) + b"\x7e" * n + b"\x00"


def test_a_file_update_over_the_peer_limit_still_loads() -> None:
    ledger = Ledger.found(nacl.signing.SigningKey(b"\1" * 32), name="big", nonce=b"n", client_id=1)
    big = many_values(DEFAULT_LIMITS.max_elements + 10)
    with pytest.raises(DecodeError, match="elements"):
        Ledger(ledger.federation_id, client_id=3).apply_update(big)
    data = encode_ledger_file(ledger.federation_id, [ledger.encode_state(), big])
    loaded = ledger_from_bytes(data, "big.ledger", client_id=3)
    assert loaded.founder == ledger.founder


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


def two_writers() -> Ledger:
    f, a, b = key(1), key(2), key(3)
    ledger = Ledger.found(f, name="demo", nonce=b"n", address="wss://f:1", client_id=1)
    ledger.admit(f, bytes(a.verify_key), clock=ledger.next_clock(), admin=True)
    ledger.admit(a, bytes(b.verify_key), clock=ledger.next_clock(), address="wss://b:1")
    ledger.set_plan(f, {"model": "mlp", "rounds": 5}, clock=ledger.next_clock())
    other = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()], client_id=2)
    for round_ in range(3):
        mine = ledger.report_progress(f, round_, clock=ledger.next_clock())
        theirs = other.report_progress(b, round_, clock=other.next_clock())
        other.apply_update(mine)
        ledger.apply_update(theirs)
    return ledger


def test_a_file_whose_update_panics_pycrdt_is_a_ledger_file_error() -> None:
    """The checksum holds (a tool wrote it), the content does not: refused, not a panic."""
    ledger = two_writers()
    data = encode_ledger_file(ledger.federation_id, [ledger.encode_state(), PANICS_WHEN_INTEGRATED])
    with pytest.raises(LedgerFileError, match="invalid Yjs update"):
        ledger_from_bytes(data, "mutated.ledger", client_id=9)


def test_a_refused_file_leaves_no_document_behind() -> None:
    """A file without its genesis is refused and its document freed (a fuzz campaign saw a
    worker grow to 1 GB: every refused file left a pycrdt document that its observer held)."""
    import gc

    from pycrdt import Doc

    ledger = two_writers()
    stranger = encode_ledger_file("e" * 32, [ledger.encode_state()])  # no genesis of "eee..."

    def alive() -> int:
        gc.collect()
        return sum(type(o) is Doc for o in gc.get_objects())

    before = alive()
    for _ in range(20):
        with pytest.raises(LedgerFileError, match="no valid genesis record"):
            ledger_from_bytes(stranger, "stranger.ledger", client_id=9)
    assert alive() == before

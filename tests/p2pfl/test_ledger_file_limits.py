"""A ledger file may hold a whole ledger, more than one update from a peer may."""

from __future__ import annotations

import nacl.signing
import pytest

from p2pfl.ledger_file import encode_ledger_file, ledger_from_bytes
from protocols.errors import DecodeError
from protocols.ledger import Ledger
from protocols.yjs_bounds import DEFAULT_LIMITS


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

"""The bounds on Yjs encodings: every valid encoding passes, every bomb is a DecodeError."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from unittest import mock

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from protocols.errors import DecodeError
from protocols.ledger import Ledger
from protocols.yjs_bounds import DEFAULT_LIMITS, Limits, check_state_vector, check_update
from protocols.yjs_items import walk


def checked_walk(data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """The walk a replica runs on a foreign update: it checks as ``check_update`` does."""
    walk(data, limits)


CHECKS = [check_update, checked_walk]


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


def ledger_encodings() -> tuple[list[bytes], list[bytes]]:
    """Updates and state vectors of a ledger written by two replicas, with deletions."""
    f, b = key(1), key(3)
    ledger = Ledger.found(f, name="demo", nonce=b"n", client_id=1)
    updates = [ledger.encode_state(), ledger.admit(f, bytes(b.verify_key), clock=2)]
    other = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()], client_id=2)
    for round_ in range(4):
        updates.append(ledger.report_progress(f, round_, clock=ledger.next_clock()))
        updates.append(other.report_progress(b, round_, clock=other.next_clock()))
        other.apply_update(updates[-2])
        ledger.apply_update(updates[-1])
    vectors = [ledger.state_vector(), other.state_vector(), b"\0"]
    updates += [ledger.encode_state(), ledger.diff(other.state_vector()), ledger.diff(b"\0")]
    return updates, vectors


def doc_of_every_type() -> Doc:
    doc: Doc = Doc(client_id=5)
    root = doc.get("m", type=Map)
    root["n"] = 1
    root["any"] = {"k": [1, 2.5, None, True, "s", b"b"], "deep": [[[["x"]]]]}
    root["text"] = Text("hello ☃")
    root["array"] = Array([1, 2, 3])
    del root["n"]
    text = root["text"]
    text.insert(2, "XY", {"bold": True})
    del text[0:3]
    return doc


def test_every_valid_encoding_passes() -> None:
    updates, vectors = ledger_encodings()
    doc = doc_of_every_type()
    for update in [*updates, bytes(doc.get_update())]:
        check_update(update)
    for vector in [*vectors, bytes(doc.get_state())]:
        check_state_vector(vector)


def var(n: int) -> bytes:
    """A lib0 unsigned varint."""
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes([*out, n])


def blob(data: bytes) -> bytes:
    return var(len(data)) + data


def update(*structs: bytes, clock: int = 0, delete_set: bytes = b"\0") -> bytes:
    """One client's structs, then a delete set."""
    return var(1) + var(len(structs)) + var(2) + var(clock) + b"".join(structs) + delete_set


def entry(info: int, content: bytes) -> bytes:
    """A struct in root map ``m`` under key ``k``."""
    return bytes([info]) + var(1) + blob(b"m") + blob(b"k") + content


GC = b"\0" + var(1)
ANY = 0x28


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (bytes.fromhex("ffffffff0185c2"), "clients"),  # 2^32 - 1 clients in 7 bytes
        (b"\1\5" + var(2**31), "clock"),
        (b"\1\1\1\1", "bytes after"),
        (b"\1\5\x80", "truncated"),
        (b"\1" + b"\xff" * 11, "varint longer"),
    ],
)
def test_bad_state_vectors(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        check_state_vector(data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (var(2**32 - 1), "update clients"),
        (b"\0" + var(1) + var(1) + var(2**28), "delete ranges"),
        (update(entry(ANY, var(2**28))), "values"),
        (update(GC, clock=2**32 - 1), "start clock"),
        (update(GC, clock=2**31 - 1), "runs past"),
        (update(b"\0" + var(0)), "length 0"),
        (update(GC) + b"\0", "bytes after"),
        (update(entry(0x22, var(0) + blob(b"1"))), "content 2"),  # JSON, never written now
        (update(entry(0x27, var(7))), "type ref 7"),  # a weak link
        (update(entry(ANY, var(1) + b"\x70")), "value tag"),
    ],
)
@pytest.mark.parametrize("check", CHECKS)
def test_bad_updates(data: bytes, why: str, check: Callable[[bytes], None]) -> None:
    with pytest.raises(DecodeError, match=why):
        check(data)


@pytest.mark.parametrize("check", CHECKS)
def test_nesting_and_element_budgets(check: Callable[[bytes, Limits], None]) -> None:
    deep = update(entry(ANY, var(1) + b"\x75\x01" * 40 + b"\x7e"))
    with pytest.raises(DecodeError, match="nested deeper"):
        check(deep, DEFAULT_LIMITS)
    check(deep, Limits(max_depth=64))
    updates, _ = ledger_encodings()
    with pytest.raises(DecodeError, match="elements"):
        check(updates[-3], Limits(max_elements=4))
    with pytest.raises(DecodeError, match="over 8"):
        check(updates[-3], Limits(max_bytes=8))
    one_entry = updates[2]  # a progress record: read by the walk's fast path
    with pytest.raises(DecodeError, match="elements"):
        check(one_entry, Limits(max_elements=2))
    with pytest.raises(DecodeError, match="nested deeper"):
        check(one_entry, Limits(max_depth=0))


@functools.cache
def samples() -> tuple[bytes, ...]:
    """Valid encodings: a ledger's, every type's, and map entries of byte strings whose
    lengths take one, two and three varint bytes (the walk reads two inline)."""
    updates, _ = ledger_encodings()
    doc: Doc = Doc(client_id=7)
    root = doc.get("progress", type=Map)
    out = [*updates, bytes(doc_of_every_type().get_update())]
    for n in (0, 127, 128, 16383, 16384):
        before = doc.get_state()
        root[f"k{n}é"] = bytes(n)
        out.append(bytes(doc.get_update(before)))
    out.append(bytes(doc.get_update()))
    return tuple(out)


def _refused(check: Callable[[bytes, Limits], object], data: bytes, limits: Limits) -> bool:
    try:
        check(data, limits)
    except DecodeError:
        return True
    return False


LIMITS = st.builds(
    Limits,
    max_bytes=st.sampled_from([150, DEFAULT_LIMITS.max_bytes]),
    max_elements=st.integers(1, 12) | st.just(DEFAULT_LIMITS.max_elements),
    max_depth=st.integers(0, 3) | st.just(DEFAULT_LIMITS.max_depth),
)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_checked_walk_refuses_exactly_what_check_update_refuses(data: st.DataObject) -> None:
    """On valid encodings and on bytes near them (a few bytes set, cut or put in), the
    walk with limits refuses what ``check_update`` refuses, and where both pass, its
    inline reading of new entries finds what the general reading finds."""
    mutated = bytearray(data.draw(st.sampled_from(samples())))
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(mutated)))
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        byte = data.draw(st.integers(0, 255))
        if op == "set" and at < len(mutated):
            mutated[at] = byte
        elif op == "cut":
            del mutated[at:]
        else:
            mutated.insert(at, byte)
    raw = bytes(mutated)
    limits = data.draw(LIMITS)
    refused = _refused(check_update, raw, limits)
    assert _refused(walk, raw, limits) == refused
    if not refused:
        found = walk(raw, limits)
        with mock.patch("protocols.yjs_items._entry", return_value=None):
            assert walk(raw, limits) == found


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_pass_or_raise_decode_error(data: bytes) -> None:
    for check in (check_update, check_state_vector, checked_walk):
        with contextlib.suppress(DecodeError):
            check(data)
    assert _refused(walk, data, DEFAULT_LIMITS) == _refused(check_update, data, DEFAULT_LIMITS)

"""Signed ledger records: node ids, canonical encoding, sealing and opening.

A record is one value in one of the ledger's maps. It is stored under the key
``"{slot}@{clock}"`` (a slot is what the record is about: a node id, ``"plan"``,
``"{round}/{node_id}"``) and its value is ``body + signature``:

- ``body`` is the canonical msgpack encoding of ``[author, clock, payload]``;
- ``signature`` is the author's 64-byte Ed25519 signature over
  ``canonical([DOMAIN, federation_id, map_name, slot]) + body``.

The signature thus binds the record to its federation, its map and its slot:
a record copied into another federation, map or slot no longer verifies.
Keeping the clock in the key lets several versions of a slot coexist, so that
re-inserting an old record (a replay) can never hide a newer one: readers take
the highest clock of a slot.

Canonical msgpack: maps with string keys sorted by key, tuples as arrays,
integers in their shortest form (msgpack-python already does this), floats as
float64, ``bin`` for bytes. Signatures are checked over the stored bytes, never
over a re-encoding, so nothing depends on how a decoder normalises values.

A node id is ``base32(blake2b(verify_key, 16 bytes, person="p2pfl-node-id"))``
in lower case without padding: 26 characters of ``[a-z2-7]``. Another key
cannot claim it short of a 128-bit second preimage.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing

from protocols.errors import DecodeError, LocalProtocolError

DOMAIN = "p2pfl-ledger/1"
SIGNATURE_SIZE = 64
KEY_SIZE = 32
MAX_CLOCK = 2**53 - 1
MAX_RECORD_SIZE = 1 << 20
NODE_ID_LENGTH = 26
_NODE_ID_RE = re.compile(r"[a-z2-7]{26}")
_ROUND_RE = re.compile(r"0|[1-9][0-9]{0,15}")


def node_id_for(verify_key: bytes) -> str:
    """The node id that an Ed25519 verify key (32 raw bytes) owns."""
    if len(verify_key) != KEY_SIZE:
        raise LocalProtocolError(f"a verify key has {KEY_SIZE} bytes, not {len(verify_key)}")
    digest = hashlib.blake2b(bytes(verify_key), digest_size=16, person=b"p2pfl-node-id").digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def is_node_id(text: object) -> bool:
    return isinstance(text, str) and _NODE_ID_RE.fullmatch(text) is not None


def box_key_for(verify_key: bytes) -> bytes:
    """The X25519 public key derived from an Ed25519 verify key (libsodium's conversion)."""
    try:
        return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(bytes(verify_key)))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise DecodeError("not a valid Ed25519 verify key") from exc


def canonical(obj: object) -> bytes:
    """The canonical msgpack encoding of plain data (see the module docstring)."""
    return bytes(msgpack.packb(_normalise(obj), use_bin_type=True))


def _normalise(obj: object) -> object:
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    if isinstance(obj, list | tuple):
        return [_normalise(item) for item in obj]
    if isinstance(obj, Mapping):
        if not all(isinstance(key, str) for key in obj):
            raise LocalProtocolError("record maps must have string keys")
        return {key: _normalise(obj[key]) for key in sorted(obj)}
    raise LocalProtocolError(f"cannot encode a {type(obj).__name__} in a record")


def unpack(data: bytes, *, max_size: int = MAX_RECORD_SIZE) -> Any:
    """Decode one msgpack object, or raise ``DecodeError`` (never anything else).

    Records hold plain data: extension types (msgpack's timestamps among them) are
    refused by the decoder itself, ``max_ext_len=0`` for any that carries data and
    ``ext_hook`` for an empty one (an empty timestamp is refused as invalid), so
    nothing is walked again after decoding. With ``strict_map_key``, map keys are
    ``str`` or ``bytes``.
    """
    if len(data) > max_size:
        raise DecodeError(f"{len(data)} bytes is more than the limit of {max_size}")
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_ext_len=0,
            ext_hook=_refuse_extension,
        )
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
        raise DecodeError(f"not msgpack: {exc}") from exc


def _refuse_extension(code: int, data: bytes) -> object:
    raise DecodeError(f"an extension type ({code}) has no place in a record")


def plan_hash(plan: Mapping[str, object]) -> bytes:
    """SHA-256 of the plan's canonical encoding: what members approve."""
    return hashlib.sha256(canonical(plan)).digest()


def federation_id_for(genesis_value: bytes) -> str:
    """A federation's id: a hash of its founder's signed genesis record (32 hex digits)."""
    return hashlib.blake2b(
        bytes(genesis_value), digest_size=16, person=b"p2pfl-federation"
    ).hexdigest()


def make_key(slot: str, clock: int) -> str:
    return f"{slot}@{clock}"


def parse_key(key: object) -> tuple[str, int]:
    """Split ``"{slot}@{clock}"``; raise ``DecodeError`` when the key has another shape."""
    if not isinstance(key, str) or key.count("@") != 1:
        raise DecodeError(f"bad record key {key!r}")
    slot, _, clock_text = key.partition("@")
    if not slot or _ROUND_RE.fullmatch(clock_text) is None:
        raise DecodeError(f"bad record key {key!r}")
    clock = int(clock_text)
    if not 0 < clock <= MAX_CLOCK:
        raise DecodeError(f"clock out of range in key {key!r}")
    return slot, clock


def round_slot(round_: int, node_id: str) -> str:
    """The slot of a per-round record (``secagg``, ``metrics``)."""
    return f"{round_}/{node_id}"


def parse_round_slot(slot: str) -> tuple[int, str] | None:
    """``(round, node_id)`` of a per-round slot, or ``None`` if it has another shape."""
    round_text, sep, node_id = slot.partition("/")
    if not sep or _ROUND_RE.fullmatch(round_text) is None or not is_node_id(node_id):
        return None
    return int(round_text), node_id


@dataclass(frozen=True)
class Record:
    """A record as read from a map: decoded, not yet checked against anybody's key."""

    map_name: str
    slot: str
    author: str
    clock: int
    payload: Any
    value: bytes

    @property
    def key(self) -> str:
        return make_key(self.slot, self.clock)

    def signed_message(self, federation_id: str) -> bytes:
        return _header(federation_id, self.map_name, self.slot) + self.value[:-SIGNATURE_SIZE]

    def verifies(self, federation_id: str, verify_key: bytes) -> bool:
        """Whether the signature is the holder of ``verify_key``'s, for this federation."""
        signed = self.value[-SIGNATURE_SIZE:] + self.signed_message(federation_id)
        try:
            nacl.bindings.crypto_sign_open(signed, bytes(verify_key))
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


def _header(federation_id: str, map_name: str, slot: str) -> bytes:
    """``canonical([DOMAIN, federation_id, map_name, slot])``, its constant part cached."""
    return _header_prefix(federation_id, map_name) + bytes(msgpack.packb(slot, use_bin_type=True))


@functools.lru_cache(maxsize=64)
def _header_prefix(federation_id: str, map_name: str) -> bytes:
    whole = canonical([DOMAIN, federation_id, map_name, ""])
    return whole[: -len(canonical(""))]


def seal(
    signing_key: nacl.signing.SigningKey,
    federation_id: str,
    map_name: str,
    slot: str,
    clock: int,
    payload: object,
) -> tuple[str, bytes]:
    """Sign a record; return the ``(key, value)`` to store in map ``map_name``."""
    if not 0 < clock <= MAX_CLOCK:
        raise LocalProtocolError(f"a logical clock is in 1..{MAX_CLOCK}, not {clock}")
    if "@" in slot or not slot:
        raise LocalProtocolError(f"bad slot {slot!r}")
    author = node_id_for(bytes(signing_key.verify_key))
    body = canonical([author, clock, payload])
    signature = bytes(signing_key.sign(_header(federation_id, map_name, slot) + body).signature)
    value = body + signature
    if len(value) > MAX_RECORD_SIZE:
        raise LocalProtocolError(f"a record is at most {MAX_RECORD_SIZE} bytes")
    return make_key(slot, clock), value


def open_record(map_name: str, key: object, value: object) -> Record:
    """Decode a stored entry; raise ``DecodeError`` if it is not a well-formed record."""
    if not isinstance(value, (bytes, bytearray)):
        raise DecodeError(f"a record is bytes, not {type(value).__name__}")
    value = bytes(value)
    slot, clock = parse_key(key)
    if len(value) <= SIGNATURE_SIZE:
        raise DecodeError("record too short")
    body = unpack(value[:-SIGNATURE_SIZE])
    if not (isinstance(body, list) and len(body) == 3):
        raise DecodeError("a record body is [author, clock, payload]")
    author, body_clock, payload = body
    if not is_node_id(author):
        raise DecodeError("bad author")
    if type(body_clock) is not int or body_clock != clock:
        raise DecodeError("the clock in the record differs from the one in its key")
    return Record(map_name, slot, author, clock, payload, value)

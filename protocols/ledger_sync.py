"""Ledger synchronisation: the Yjs sync protocol as a sans-I/O state machine.

Wire messages are msgpack arrays led by a type tag:

- ``[0, federation_id, state_vector]``: sync step 1, "this is what I have";
- ``[1, update]`` or ``[1, update, state_vector]``: sync step 2, the reply: what
  the asker lacks, and (this module always sends it) the replier's own state
  vector;
- ``[2, update]``: an incremental update.

Rules (the stock pycrdt-websocket provider echoes every update back, so it is
not the model here):

1. ``connect(peer)`` sends step 1; a step 1 is answered with a step 2.
2. An update (step 2 or incremental) whose bytes were seen before is dropped
   unapplied; otherwise it is applied once.
3. What it changed (the transaction's own update, empty when nothing was new)
   is flooded to every other neighbour, never back to the link it came from.
   Nothing new, nothing forwarded: flooding stops by itself.
4. ``anti_entropy()``, called now and then by the runtime, sends step 1 to
   every neighbour, so anything a lost message missed is fetched again.
5. The state vectors a neighbour sends (its step 1, its step 2's) say what it
   holds: ``holds_own(peer)`` is whether it has every record this replica
   wrote. A step 2 whose replier lacks something of ours is answered with a
   step 2 of what it lacks (no state vector: nothing answers that). A node
   about to leave asks (``ask``) until every neighbour holds its own records:
   its last ones could otherwise die with a connection, and the neighbours
   would never see them (``p2pfl.node.rounds``, the linger).

The core never looks at the records: validity is the readers' business
(``protocols.ledger_rules``). It only refuses bytes that are not a message,
and tells the ledger which link each update came from: a verified record that
an update deletes or overwrites is put back and the violation names that link
(``Ledger.take_violations``). What is flooded then is the change and its
repair as one update, so that the next replica sees no loss and blames no one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.records import canonical, unpack
from protocols.yjs_bounds import state_vector_clocks

DEFAULT_MAX_MESSAGE_SIZE = 64 << 20
DEFAULT_SEEN_CAPACITY = 4096
TAG_STEP1, TAG_STEP2, TAG_UPDATE = 0, 1, 2


@dataclass(frozen=True)
class SyncStep1:
    federation_id: str
    state_vector: bytes

    def encode(self) -> bytes:
        return canonical([TAG_STEP1, self.federation_id, self.state_vector])


@dataclass(frozen=True)
class SyncStep2:
    update: bytes
    state_vector: bytes | None = None  # the replier's, when it is a reply to a step 1

    def encode(self) -> bytes:
        if self.state_vector is None:
            return canonical([TAG_STEP2, self.update])
        return canonical([TAG_STEP2, self.update, self.state_vector])


@dataclass(frozen=True)
class Update:
    update: bytes

    def encode(self) -> bytes:
        # An integer and a byte string are canonical as msgpack writes them: one per update
        # forwarded, so not through ``canonical``'s normalisation.
        return bytes(msgpack.packb([TAG_UPDATE, bytes(self.update)], use_bin_type=True))


Message = SyncStep1 | SyncStep2 | Update


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Message:
    """Decode one ledger-sync message; raise ``DecodeError`` for anything else."""
    obj = unpack(data, max_size=max_size)
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise DecodeError("a ledger-sync message is an array led by an integer tag")
    tag, fields = obj[0], obj[1:]
    if tag == TAG_STEP1 and len(fields) == 2:
        fid, state_vector = fields
        if isinstance(fid, str) and isinstance(state_vector, bytes):
            return SyncStep1(fid, state_vector)
    elif tag in (TAG_STEP2, TAG_UPDATE) and len(fields) == 1 and isinstance(fields[0], bytes):
        return SyncStep2(fields[0]) if tag == TAG_STEP2 else Update(fields[0])
    elif tag == TAG_STEP2 and len(fields) == 2 and all(isinstance(f, bytes) for f in fields):
        return SyncStep2(fields[0], fields[1])
    raise DecodeError(f"bad ledger-sync message with tag {tag}")


Outgoing = list[tuple[str, bytes]]


class LedgerSync:
    """One node's end of ledger sync with its neighbours; peers are named by strings."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        seen_capacity: int = DEFAULT_SEEN_CAPACITY,
    ) -> None:
        self.ledger = ledger
        self.max_message_size = max_message_size
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._seen_capacity = seen_capacity
        self._peers: list[str] = []
        self._reported: dict[str, dict[int, int]] = {}  # per peer: the clocks it last sent
        self.applied = 0
        self.duplicates = 0
        self.changes = 0  # updates received that changed the replica (a count to compare)

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(self._peers)

    def connect(self, peer: str) -> Outgoing:
        """A link to ``peer`` opened: start the state-vector exchange."""
        if peer in self._peers:
            raise LocalProtocolError(f"already connected to {peer!r}")
        self._peers.append(peer)
        return [(peer, self._step1())]

    def disconnect(self, peer: str) -> None:
        if peer not in self._peers:
            raise LocalProtocolError(f"not connected to {peer!r}")
        self._peers.remove(peer)

    def _step1(self) -> bytes:
        return SyncStep1(self.ledger.federation_id, self.ledger.state_vector()).encode()

    def receive(self, peer: str, data: bytes) -> Outgoing:
        """Handle bytes from ``peer``; ``PeerProtocolError`` when they break the protocol."""
        if peer not in self._peers:
            raise LocalProtocolError(f"receive() from {peer!r} before connect()")
        try:
            message = decode(data, max_size=self.max_message_size)
        except DecodeError as exc:
            raise PeerProtocolError(peer, str(exc)) from exc
        return self.handle(peer, message)

    def handle(self, peer: str, message: Message) -> Outgoing:
        """Handle a message from ``peer`` that the caller decoded (``decode``, within
        ``max_message_size``) to read its kind: ``receive`` without decoding it again."""
        if peer not in self._peers:
            raise LocalProtocolError(f"receive() from {peer!r} before connect()")
        try:
            if isinstance(message, SyncStep1):
                return self._answer(peer, message)
            out = self._merge(peer, message.update)
            if isinstance(message, SyncStep2) and message.state_vector is not None:
                out += self._complete(peer, message.state_vector)
            return out
        except DecodeError as exc:
            raise PeerProtocolError(peer, str(exc)) from exc

    def prepare(self, messages: Iterable[bytes | Message]) -> None:
        """Check ahead, in one batch, the signatures of the records in ``messages`` (bytes,
        or decoded already), which are received next, one by one (``Ledger.prepare``).
        What does not decode, or was seen already, is left to ``receive``."""
        updates = []
        for data in messages:
            try:
                message = (
                    decode(data, max_size=self.max_message_size)
                    if isinstance(data, bytes | bytearray | memoryview)
                    else data
                )
            except DecodeError:
                continue
            if isinstance(message, SyncStep1) or _digest(message.update) in self._seen:
                continue
            updates.append(message.update)
        self.ledger.prepare(updates)

    def _answer(self, peer: str, message: SyncStep1) -> Outgoing:
        if message.federation_id != self.ledger.federation_id:
            raise PeerProtocolError(peer, f"step 1 for federation {message.federation_id!r}")
        lacks = self.ledger.diff(message.state_vector)  # checks the state vector
        self._reported[peer] = state_vector_clocks(message.state_vector)
        return [(peer, SyncStep2(lacks, self.ledger.state_vector()).encode())]

    def _complete(self, peer: str, state_vector: bytes) -> Outgoing:
        """A reply's state vector: note it; send the replier what it lacks of ours."""
        theirs = self._reported[peer] = state_vector_clocks(state_vector)  # checks it
        mine = state_vector_clocks(self.ledger.state_vector())
        if all(theirs.get(client, 0) >= clock for client, clock in mine.items()):
            return []
        return [(peer, SyncStep2(self.ledger.diff(state_vector)).encode())]

    def holds_own(self, peer: str) -> bool:
        """Whether ``peer``'s last state vector has every record this replica wrote."""
        client = self.ledger.client_id
        mine = state_vector_clocks(self.ledger.state_vector()).get(client, 0)
        return self._reported.get(peer, {}).get(client, 0) >= mine

    def ask(self, peers: list[str] | tuple[str, ...]) -> Outgoing:
        """Step 1 to each of ``peers`` linked now: their replies say what they hold."""
        step1 = self._step1()
        return [(peer, step1) for peer in peers if peer in self._peers]

    def _merge(self, source: str, update: bytes) -> Outgoing:
        digest = self._remember(update)
        if digest is None:
            self.duplicates += 1
            return []
        self.applied += 1
        changes = self.ledger.apply_update(update, origin=source)
        if changes:
            self.changes += 1
        if changes == [update]:  # all of it was new: its digest is the one just remembered
            return self._send(update, exclude=source)
        return self._flood(changes, exclude=source)

    def _remember(self, update: bytes) -> bytes | None:
        """Record an update's digest; ``None`` if it was already seen."""
        digest = _digest(update)
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return None
        self._seen[digest] = None
        while len(self._seen) > self._seen_capacity:
            self._seen.popitem(last=False)
        return digest

    def _flood(self, updates: list[bytes], *, exclude: str | None) -> Outgoing:
        out: Outgoing = []
        for update in updates:
            self._remember(update)
            out += self._send(update, exclude=exclude)
        return out

    def _send(self, update: bytes, *, exclude: str | None) -> Outgoing:
        """``update`` as a message to every neighbour but ``exclude`` (already remembered)."""
        encoded = Update(update).encode()
        return [(peer, encoded) for peer in self._peers if peer != exclude]

    def local_update(self, update: bytes) -> Outgoing:
        """This node wrote to its ledger (``update`` as a write returned it): tell everyone."""
        if not update:
            return []
        return self._flood([update], exclude=None)

    def anti_entropy(self) -> Outgoing:
        """Ask every neighbour for what this node may have missed."""
        step1 = self._step1()
        return [(peer, step1) for peer in self._peers]


def _digest(update: bytes) -> bytes:
    """What the flood remembers an update by."""
    return hashlib.blake2b(update, digest_size=16).digest()

"""The ledger channel of a node's links: its replica of the federation ledger kept in sync.

``Replica`` drives the pure sync core (``protocols.ledger_sync.LedgerSync``) the way
``p2pfl.node.exchange`` drives a round core: each ledger frame is handed to the
core (its kind read here too, as the core reports no kind), and what the core
answers or floods goes to the links (``send``). The first ``SyncStep2`` on a link marks it synced
(``on_synced``). ``on_change`` runs only when frames changed the replica: in a
flood an update reaches a node once per path, and the copies after the first
change nothing, so they cost their decoding and no more (the membership, replay
and link checks the node runs on a change are for the first). A frame that
breaks the protocol is the peer's error (``peer_error``); one that comes after
its link went down is dropped.

A node's frames are held until its event loop turns (``take``; ``defer`` asks for
the ``drain``), and every frame that arrived meanwhile, from any link, is handled
then, in arrival order: a flood's signatures are checked together on the free
cores once enough of it is in hand (``LedgerSync.prepare``), and the node's work
after a change runs once per drain instead of once per frame. Each frame is still
applied on its own, and the view is current after each one. The node drains first
whatever must see the frames before it: another channel's frame, a link going up
or down, its last save.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from p2pfl.threads import PARALLEL_BATCH
from protocols import ledger_sync
from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync

log = logging.getLogger(__name__)

Outgoing = list[tuple[str, bytes]]

MAX_HELD_FRAMES = 4096
MAX_HELD_BYTES = 16 << 20
"""Past either, the frames held are handled at once: what waits for a drain stays bounded."""
PREPARED = 2 * PARALLEL_BATCH
"""Frames in one drain from which their signatures are checked ahead, together: the
fewest that two threads share (``p2pfl.threads.parallel_map``)."""
_ROSTER = ("members", "revoked")


class Replica:
    """One node's ledger replica on its links (module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        sync: LedgerSync,
        *,
        send: Callable[[str, bytes], None],
        peer_error: Callable[[str, str], None],
        on_synced: Callable[[str], bool],
        on_change: Callable[[], None],
        admits: Callable[[str], bool] = lambda peer: True,
        defer: Callable[[], None] | None = None,
        on_frames: Callable[[], None] = lambda: None,
    ) -> None:
        """``admits(peer)``: whether a held frame of ``peer`` is still handled when drained
        (not banned nor revoked since it arrived). ``defer()``: have ``drain`` called once
        the event loop turns; ``None``: every frame taken is handled at once.
        ``on_frames()``: frames were handled, changes or not (a reply's state vector says
        what a neighbour holds: ``LedgerSync.holds_own``)."""
        self.ledger = ledger
        self.sync = sync
        self._send = send
        self._peer_error = peer_error
        self._on_synced = on_synced  # True the first time a link is marked synced
        self._on_change = on_change
        self._admits = admits
        self._defer = defer
        self._on_frames = on_frames
        self._held: list[tuple[str, bytes]] = []
        self._held_bytes = 0
        self.drains = 0
        """Drains that handled frames: frames taken over this is how many a drain handles."""

    def take(self, peer: str, frame: memoryview) -> None:
        """A ledger frame from ``peer``'s link: held for the next drain (module docstring)."""
        self._held.append((peer, bytes(frame)))
        self._held_bytes += len(frame)
        full = len(self._held) >= MAX_HELD_FRAMES or self._held_bytes >= MAX_HELD_BYTES
        if self._defer is None or full:
            self.drain()
        elif len(self._held) == 1:  # the first held since the last drain asks for the next
            self._defer()

    def drain(self) -> None:
        """Handle the frames held, in the order they arrived."""
        if not self._held:
            return
        held, self._held, self._held_bytes = self._held, [], 0
        self.drains += 1
        frames = [(peer, self._decode(body)) for peer, body in held]
        if len(frames) >= PREPARED:
            self.sync.prepare([m for _, m in frames if not isinstance(m, DecodeError)])
        changed, roster = False, self.ledger.version(*_ROSTER)
        for peer, message in frames:
            if self._admits(peer):
                changed |= self._handle(peer, message)
            if changed and (now := self.ledger.version(*_ROSTER)) != roster:
                roster, changed = now, False
                self._on_change()  # who may send changed: the node knows before the next frame
        if changed:
            self._on_change()
        self._on_frames()

    def receive(self, peer: str, frame: memoryview) -> None:
        """Handle one frame now, after any held."""
        self.drain()
        if self._handle(peer, self._decode(bytes(frame))):
            self._on_change()
        self._on_frames()

    def _decode(self, body: bytes) -> ledger_sync.Message | DecodeError:
        """The frame's message, decoded once for the core and for its kind (or why not)."""
        try:
            return ledger_sync.decode(body, max_size=self.sync.max_message_size)
        except DecodeError as exc:
            return exc

    def _handle(self, peer: str, message: ledger_sync.Message | DecodeError) -> bool:
        """One message through the core; whether it changed the replica."""
        before = self.sync.changes  # not the state vector: O(writers) to encode, per frame
        try:
            if isinstance(message, DecodeError):
                raise message
            out = self.sync.handle(peer, message)
        except (PeerProtocolError, DecodeError) as exc:
            self._peer_error(peer, f"ledger sync: {exc}")
            return False
        except LocalProtocolError:
            return False  # the link went down under us
        for lost in self.ledger.take_violations():  # put back already; the sender is at fault
            what = f"{lost.map_name}[{lost.key!r}] by {lost.author}"
            self._peer_error(peer, f"ledger sync: {lost.kind} verified record {what}")
        if isinstance(message, ledger_sync.SyncStep2) and self._on_synced(peer):
            log.info("ledger synced with %s", peer)
        self.send(out)
        return self.sync.changes != before

    def send(self, out: Outgoing) -> None:
        for target, frame in out:
            self._send(target, frame)

    def write(self, update: bytes) -> None:
        """Flood a record this node just signed into the ledger."""
        self.send(self.sync.local_update(update))
        self._on_change()

    def anti_entropy(self) -> None:
        self.send(self.sync.anti_entropy())

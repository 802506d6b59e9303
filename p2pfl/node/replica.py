"""The ledger channel of a node's links: its replica of the federation ledger kept in sync.

``Replica`` drives the pure sync core (``protocols.ledger_sync.LedgerSync``) the way
``p2pfl.node.exchange`` drives a round core: each ledger frame is handed to the
core (its kind read here too, as the core reports no kind), and what the core
answers or floods goes to the links (``send``). The first ``SyncStep2`` on a link marks it synced
(``on_synced``). ``on_change`` runs only when a frame changed the replica: in a
flood an update reaches a node once per path, and the copies after the first
change nothing, so they cost their decoding and no more (the membership, replay
and link checks the node runs on a change are for the first). A frame that
breaks the protocol is the peer's error (``peer_error``); one that comes after
its link went down is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from protocols import ledger_sync
from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync

log = logging.getLogger(__name__)

Outgoing = list[tuple[str, bytes]]


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
    ) -> None:
        self.ledger = ledger
        self.sync = sync
        self._send = send
        self._peer_error = peer_error
        self._on_synced = on_synced  # True the first time a link is marked synced
        self._on_change = on_change

    def receive(self, peer: str, frame: memoryview) -> None:
        body = bytes(frame)
        before = self.sync.changes  # not the state vector: O(writers) to encode, per frame
        try:
            message = ledger_sync.decode(body, max_size=self.sync.max_message_size)
            out = self.sync.receive(peer, body)
        except (PeerProtocolError, DecodeError) as exc:
            self._peer_error(peer, f"ledger sync: {exc}")
            return
        except LocalProtocolError:
            return  # the link went down under us
        for lost in self.ledger.take_violations():  # put back already; the sender is at fault
            what = f"{lost.map_name}[{lost.key!r}] by {lost.author}"
            self._peer_error(peer, f"ledger sync: {lost.kind} verified record {what}")
        if isinstance(message, ledger_sync.SyncStep2) and self._on_synced(peer):
            log.info("ledger synced with %s", peer)
        self.send(out)
        if self.sync.changes != before:
            self._on_change()

    def send(self, out: Outgoing) -> None:
        for target, frame in out:
            self._send(target, frame)

    def write(self, update: bytes) -> None:
        """Flood a record this node just signed into the ledger."""
        self.send(self.sync.local_update(update))
        self._on_change()

    def anti_entropy(self) -> None:
        self.send(self.sync.anti_entropy())

"""What the round layer reaches of its node: ``RoundHost``.

The round driver (``p2pfl.node.rounds``), its exchange (``p2pfl.node.exchange``)
and the node's privacy (``p2pfl.node.privacy``) never see the ``Node``; they get
this interface, which ``p2pfl.node.node.Node`` fits once started:

- identity and settings: ``node_id``, ``identity`` (to sign ledger records and
  derive masks), ``config`` (its limits), ``data_dir``, ``local_data`` (loaded
  and checked when the node started: the rounds train on them, never load twice);
- the ledger: ``ledger`` to read, ``write_ledger`` to flood a record this node
  signed, ``save_ledger`` to put it on disk (``StorageError`` when the disk refuses:
  the round that saves stops the node);
- the journal: ``emit`` (an event for ``Peer.events()``), ``record`` (the audit
  log), ``peer_error`` (a peer's bad message, logged and audited);
- the outbox: ``send`` (a frame to a neighbour, kept for replay with its round),
  ``linked`` (the peers with a link), ``synced`` (a link whose ledgers were
  exchanged), ``prune_replay``, ``update_links`` (dial what the plan's graph
  wants), ``transfers`` (what the wire moved, websockets only);
- waits and phases: ``wait_until``, ``wake_timer`` (a deadline moved),
  ``set_phase``, ``write_status``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from p2pfl.identity import Identity
    from p2pfl.node.config import NodeConfig
    from p2pfl.node.data import LocalData
    from p2pfl.node.events import Event
    from p2pfl.node.phases import Phase
    from p2pfl.transport import TransferLog
    from protocols.ledger import Ledger


class RoundHost(Protocol):
    """The node as the round layer sees it (module docstring)."""

    @property
    def node_id(self) -> str: ...
    @property
    def identity(self) -> Identity: ...
    @property
    def config(self) -> NodeConfig: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def local_data(self) -> LocalData: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def transfers(self) -> TransferLog | None: ...

    def write_ledger(self, update: bytes) -> None: ...
    def save_ledger(self) -> None: ...

    def emit(self, event: Event) -> None: ...
    def record(self, event: str, **fields: Any) -> None: ...
    def peer_error(self, peer: str, error: str, *, kind: str = "protocol") -> None: ...

    def send(self, peer: str, frame: bytes | bytearray, *, round: int) -> None: ...
    def linked(self) -> list[str]: ...
    def synced(self, peer: str) -> bool: ...
    def prune_replay(self, peer: str, below: int) -> None: ...
    def flushed(self) -> bool: ...
    def update_links(self) -> None: ...

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool: ...
    def wake_timer(self) -> None: ...
    def set_phase(self, phase: Phase) -> None: ...
    def write_status(self) -> None: ...

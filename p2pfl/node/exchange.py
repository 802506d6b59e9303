"""Between the links and the rounds: the protocol core, fed frames, driven at deadlines.

``Exchange`` wraps the round core a round driver built (``GossipRoundCore``
over ``SyncGossip``, or ``SecureRoundCore``; both from ``protocols.rounds``)
and does what the simulator's scheduler does with its outputs, for real:

- frames go to the links as the core made them (it writes the channel tag in
  front as it builds each frame), kept for replay with the round they belong
  to (``LinkManager.send``);
- a secure receiver's dropout declaration is signed into the ledger *before*
  its messages are queued, so on every link the ledger record precedes the
  declaration; a holder's core holds a received declaration with dropouts
  (``DeclarationHeld``) until this node's ledger holds the same record, then
  the exchange confirms it (``confirm_declaration``); one never recorded
  expires at the unmask timeout and counts as the receiver's protocol error;
- ``RoundMixed`` resolves the waiter of its round (``mixed(round)``).

The exchange never decodes a frame: the core reports what it decoded.
``make_core`` builds the core; a resumed node's core starts at its round
(``resume_at``: no receiver is opened for the rounds it missed).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from p2pfl.node.channels import Channel, tag
from p2pfl.node.errors import PlanError
from p2pfl.node.events import DropoutsDeclared
from p2pfl.node.plan import Graph, Plan, federation_bytes
from protocols import secagg
from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError, ProtocolError
from protocols.gossip import RoundMixed, Straggler, SyncGossip
from protocols.rounds import (
    DeclarationExpired,
    DeclarationHeld,
    GossipRoundCore,
    RoundOutput,
    SecureRoundCore,
)
from protocols.secagg import Abandoned

Core = GossipRoundCore | SecureRoundCore

if TYPE_CHECKING:
    from p2pfl.node.node import Node

log = logging.getLogger(__name__)


class Exchange:
    """One node's protocol core and its traffic (module docstring)."""

    def __init__(self, node: Node, core: Core, *, secure: bool, round: int) -> None:
        self.node = node
        self.me = node.node_id
        self.core = core
        self.secure = secure
        self.round = round  # the round the node is in; tags retained frames
        self.round_bytes = 0
        self._waiters: dict[int, asyncio.Future[RoundMixed]] = {}
        self._mixed: dict[int, RoundMixed] = {}
        self._held: dict[tuple[int, str], frozenset[str]] = {}  # declarations the core holds

    @property
    def channel(self) -> Channel:
        return Channel.SECAGG if self.secure else Channel.GOSSIP

    @property
    def deadline(self) -> float | None:
        return self.core.deadline

    def mixed(self, round: int) -> asyncio.Future[RoundMixed]:
        """A future resolved with round ``round``'s ``RoundMixed`` (create it before starting)."""
        future = asyncio.get_running_loop().create_future()
        if round in self._mixed:
            future.set_result(self._mixed.pop(round))
        else:
            self._waiters[round] = future
        return future

    def forget(self, round: int) -> None:
        self._waiters.pop(round, None)
        self._mixed.pop(round, None)

    def poll(self, now: float) -> None:
        self.drive(self.core.poll(now))

    def receive(self, peer: str, channel: int, body: memoryview) -> None:
        if channel != self.channel:
            kind = "secure" if self.secure else "plain"
            self.node.peer_error(peer, f"a {kind} round got a message on channel {channel}")
            return
        now = asyncio.get_running_loop().time()
        try:
            out = self.core.receive(peer, body, now)
        except (PeerProtocolError, DecodeError) as exc:
            self.node.peer_error(peer, str(exc))
            return
        except ProtocolError as exc:
            log.error("round message from %s not handled: %s", peer, exc)
            return
        self.drive(out)

    def ledger_changed(self) -> None:
        """Confirm the held declarations the ledger now holds; prune what peers are past."""
        for key in list(self._held):
            self._confirm(key)
        self.prune()

    def _confirm(self, key: tuple[int, str]) -> None:
        """Pass a held declaration on once the ledger holds the same one (it may recurse here)."""
        round_, receiver = key
        dropped = self._held.get(key)
        if dropped is None or self.node.ledger.secagg(round_).get(receiver) != dropped:
            return
        del self._held[key]
        core = self.core
        assert isinstance(core, SecureRoundCore)  # only a secure core holds declarations
        now = asyncio.get_running_loop().time()
        try:
            out = core.confirm_declaration(round_, receiver, dropped, now)
        except PeerProtocolError as exc:
            self.node.peer_error(receiver, str(exc))
            return
        except ProtocolError as exc:
            log.error("dropout declaration of %s not handled: %s", receiver, exc)
            return
        self.drive(out)

    def prune(self) -> None:
        """Keep only this round's frames for replay (and none a peer is known to be past)."""
        progress = self.node.ledger.progress()
        for peer in list(self.node.links.links):
            self.node.links.prune(peer, max(progress.get(peer, -1) + 1, self.round))

    def drive(self, out: RoundOutput) -> None:
        """Act on a core's output: ledger records first, then frames, then wake the timer."""
        node = self.node
        dropped: dict[int, list[str]] = {}
        held: list[tuple[int, str]] = []
        for event in out.events:
            if isinstance(event, Straggler):
                if self.secure:
                    dropped.setdefault(event.round, []).append(event.peer)
                else:
                    node.record("straggler", round=event.round, peer=event.peer)
            elif isinstance(event, RoundMixed):
                waiter = self._waiters.pop(event.round, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
                else:
                    self._mixed[event.round] = event
            elif isinstance(event, DeclarationHeld):
                log.info(
                    "holding %s's dropout declaration of round %d until the ledger has it",
                    event.receiver,
                    event.round,
                )
                self._held[(event.round, event.receiver)] = frozenset(event.dropped)
                held.append((event.round, event.receiver))
            elif isinstance(event, DeclarationExpired):
                self._held.pop((event.round, event.receiver), None)
                reason = "a dropout declaration never reached the ledger; ignored"
                node.peer_error(event.peer, reason)
            elif isinstance(event, Abandoned):
                log.warning("abandoning round %d: %s", event.round, event.reason)
        for round_, peers in sorted(dropped.items()):
            self._declare(round_, peers)
        for peer, frame in out.sends:
            self.round_bytes += len(frame) - 1  # the channel tag is not round traffic
            node.links.send(peer, frame, round=self.round)
        for key in held:  # the ledger may hold them already
            self._confirm(key)
        node.wake_timer()

    def _declare(self, round_: int, peers: list[str]) -> None:
        node = self.node
        identity = node.identity
        assert identity is not None
        ledger = node.ledger
        try:
            update = ledger.declare_dropouts(
                identity.signing_key, round_, peers, clock=ledger.next_clock()
            )
        except LocalProtocolError as exc:
            log.error("cannot record the dropouts of round %d: %s", round_, exc)
            return
        node.write_ledger(update)
        node.record("dropouts-declared", round=round_, dropped=sorted(peers))
        node.emit(DropoutsDeclared(round_, tuple(sorted(peers))))
        log.warning("round %d: declared %s dropped", round_, sorted(peers))


def make_core(
    node: Node, plan: Plan, graph: Graph, plan_hash: bytes, *, round: int, dim: int
) -> Core:
    """The simulator's core for this node, with real keys, starting at ``round``.

    Plain: ``SyncGossip`` behind a ``GossipRoundCore``. Secure: ``SecureRoundCore``
    with this identity's X25519 key, the members' box keys from the ledger,
    ``os.urandom`` self-mask seeds and declarations held until the ledger has
    them; refused (``PlanError``) where some node of the graph has too few
    neighbours for the plan's threshold. Either core writes the channel tag in
    front of every frame it makes.
    """
    me = node.node_id
    hood_of = graph.hood_fn()
    if not plan.secure.enabled:
        # The core encodes (copies) a round's frame as soon as ``start_round`` returns,
        # so the mix may go over the trained model: one model-sized vector fewer.
        sync = SyncGossip(
            me,
            lambda r: hood_of(me, r),
            round_timeout=plan.gossip.round_timeout,
            mix_in_place=True,
        )
        core: Core = GossipRoundCore(sync, prefix=tag(Channel.GOSSIP))
        core.resume_at(round)
        return core
    cfg = plan.secagg_config(plan_hash)
    ledger = node.ledger
    keys = {member: ledger.box_key(member) for member in graph.roster}
    missing = [m for m, k in keys.items() if k is None]
    if missing:
        raise PlanError(f"members {missing} have no valid box key in the ledger")
    w = graph.topo.mixing(0).tocsr()
    in_degree = np.diff(w.indptr) - (w.diagonal() != 0)
    degrees = {graph.roster[i]: int(d) for i, d in enumerate(in_degree)}
    try:
        secagg.dropout_tolerance(cfg, degrees)
    except LocalProtocolError as exc:
        raise PlanError(f"secure aggregation cannot run on this plan: {exc}") from None
    identity = node.identity
    assert identity is not None
    core = SecureRoundCore(
        me,
        hood_of,
        cfg,
        federation_id=federation_bytes(ledger.federation_id),
        box_private=bytes(identity.box_private),
        public_keys={m: k for m, k in keys.items() if k is not None},
        self_seed=lambda _round, _receiver: os.urandom(32),
        timeouts=plan.secagg_timeouts(),
        dim=dim,
        declarations_need_confirmation=True,
        prefix=tag(Channel.SECAGG),
    )
    core.resume_at(round)
    return core

"""Between the links and the rounds: the protocol core, fed frames, driven at deadlines.

``Exchange`` wraps the core a round driver built (``GossipAdapter`` over
``SyncGossip``, or ``SecureNode``) and does what the simulator's scheduler
does with its outputs, for real:

- frames go to the links, tagged with their channel (a plain core's encoder
  writes the tag in front as it builds the frame), kept for replay with
  the round they belong to (``LinkManager.send``);
- a secure receiver's dropout declaration is signed into the ledger *before*
  its messages are queued, so on every link the ledger record precedes the
  declaration; a holder passes a received declaration with dropouts to its
  core only once its own ledger holds the same record (held otherwise, until
  the unmask timeout);
- ``RoundMixed`` resolves the waiter of its round (``mixed(round)``).

``make_core`` builds the core; a resumed node's core starts at its round
(``SyncGossip.resume_at``, ``SecureNode.skip_to``: no receiver is opened for
the rounds it missed).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, cast

from p2pfl.engines.protocol import GossipAdapter
from p2pfl.engines.secure import SecureNode, SecureOutput
from p2pfl.node.channels import Channel, tag, tagged
from p2pfl.node.errors import PlanError
from p2pfl.node.events import DropoutsDeclared
from p2pfl.spec import Graph, Plan, federation_bytes
from protocols import secagg
from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError, ProtocolError
from protocols.gossip import RoundMixed, Straggler, SyncGossip

if TYPE_CHECKING:
    from p2pfl.node.node import Node

log = logging.getLogger(__name__)


class Exchange:
    """One node's protocol core and its traffic (module docstring)."""

    def __init__(
        self,
        node: Node,
        core: GossipAdapter | SecureNode,
        *,
        secure: bool,
        unmask_timeout: float,
        round: int,
    ) -> None:
        self.node = node
        self.me = node.node_id
        self.core = core
        self.secure = secure
        self.unmask_timeout = unmask_timeout
        self.round = round  # the round the node is in; tags retained frames
        self.round_bytes = 0
        self._waiters: dict[int, asyncio.Future[RoundMixed]] = {}
        self._mixed: dict[int, RoundMixed] = {}
        self._parked: list[tuple[str, bytes, float]] = []

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
        self._expire_parked(now)

    def receive(self, peer: str, channel: int, body: memoryview) -> None:
        if channel != self.channel:
            kind = "secure" if self.secure else "plain"
            self.node.peer_error(peer, f"a {kind} round got a message on channel {channel}")
            return
        now = asyncio.get_running_loop().time()
        if self.secure and not self._wanted(peer, body, now):
            return
        try:
            # The cores decode any buffer without copying (their annotation says bytes).
            out = self.core.receive(peer, cast(bytes, body), now)
        except (PeerProtocolError, DecodeError) as exc:
            self.node.peer_error(peer, str(exc))
            return
        except ProtocolError as exc:
            log.error("round message from %s not handled: %s", peer, exc)
            return
        self.drive(out)

    def _wanted(self, peer: str, body: memoryview, now: float) -> bool:
        """Whether a secure message goes to the core now (module docstring)."""
        try:
            message = secagg.decode(body)
        except DecodeError:
            return True  # the core reports it
        if not isinstance(message, secagg.DropoutDeclaration) or not message.dropped:
            return True
        recorded = self.node.ledger.secagg(message.round).get(message.receiver)
        if recorded == frozenset(message.dropped):
            return True
        self._parked.append((peer, bytes(body), now + self.unmask_timeout))
        log.info(
            "holding %s's dropout declaration of round %d until the ledger has it",
            message.receiver,
            message.round,
        )
        return False

    def _expire_parked(self, now: float) -> None:
        expired = [p for p in self._parked if p[2] <= now]
        for peer, _, _ in expired:
            self.node.peer_error(peer, "a dropout declaration never reached the ledger; ignored")
        self._parked = [p for p in self._parked if p[2] > now]

    def ledger_changed(self) -> None:
        parked, self._parked = self._parked, []
        for peer, body, _ in parked:
            self.receive(peer, Channel.SECAGG, memoryview(body))
        self.prune()

    def prune(self) -> None:
        """Keep only this round's frames for replay (and none a peer is known to be past)."""
        progress = self.node.ledger.progress()
        for peer in list(self.node.links.links):
            self.node.links.prune(peer, max(progress.get(peer, -1) + 1, self.round))

    def drive(self, out: SecureOutput) -> None:
        """Act on a core's output: ledger records first, then frames, then wake the timer."""
        node = self.node
        dropped: dict[int, list[str]] = {}
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
        for round_, peers in sorted(dropped.items()):
            self._declare(round_, peers)
        framed: dict[int, bytes] = {}
        pretagged = isinstance(self.core, GossipAdapter)  # make_core gave it the tag
        for peer, frame in out.sends:
            if id(frame) not in framed:
                framed[id(frame)] = frame if pretagged else tagged(self.channel, frame)
            self.round_bytes += len(frame) - (1 if pretagged else 0)
            node.links.send(peer, framed[id(frame)], round=self.round)
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
) -> GossipAdapter | SecureNode:
    """The simulator's core for this node, with real keys, starting at ``round``.

    Plain: ``SyncGossip`` behind a ``GossipAdapter``. Secure: ``SecureNode`` with
    this identity's X25519 key, the members' box keys from the ledger and
    ``os.urandom`` self-mask seeds (the graph was checked at every step when it was built).
    """
    me = node.node_id
    hood_of = graph.neighbourhood
    if not plan.secure.enabled:
        # The adapter encodes (copies) a round's frame as soon as ``start_round`` returns,
        # so the mix may go over the trained model: one model-sized vector fewer.
        core = SyncGossip(
            me,
            lambda r: hood_of(me, r),
            round_timeout=plan.gossip.round_timeout,
            mix_in_place=True,
        )
        core.resume_at(round)
        return GossipAdapter(core, prefix=tag(Channel.GOSSIP))
    cfg = plan.secagg_config()
    ledger = node.ledger
    keys = {member: ledger.box_key(member) for member in graph.roster}
    missing = [m for m, k in keys.items() if k is None]
    if missing:
        raise PlanError(f"members {missing} have no valid box key in the ledger")
    identity = node.identity
    assert identity is not None
    secure = SecureNode(
        me,
        hood_of,
        cfg,
        federation_id=federation_bytes(ledger.federation_id),
        box_private=bytes(identity.box_private),
        public_keys={m: k for m, k in keys.items() if k is not None},
        self_seed=lambda _round, _receiver: os.urandom(32),
        timeouts=plan.secagg_timeouts(),
        dim=dim,
    )
    secure.skip_to(round)
    return secure


def skip_core_to(core: GossipAdapter | SecureNode, round: int) -> None:
    """Move an idle core to ``round`` (rounds before it are never run here)."""
    if isinstance(core, SecureNode):
        core.skip_to(round)
    elif isinstance(core.core, SyncGossip):
        core.core.resume_at(round)

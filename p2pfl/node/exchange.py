"""Between the links and the rounds: the protocol core, fed frames, driven at deadlines.

``Exchange`` wraps the round core a round driver built (``p2pfl.spec.cores``:
the one the simulator runs, from ``protocols.rounds``)
and does what the simulator's scheduler does with its outputs, for real:

- frames go to the links as the core made them (it writes the channel tag in
  front as it builds each frame), kept for replay with the round they belong
  to (``RoundHost.send``);
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

Epochs (``p2pfl.node.membership``). When the roster changes at round b, the
driver hands the exchange the new epoch's core (``switch``); the old one stays
for ``RETIRE_ROUNDS`` rounds, since a neighbour still finishing round b - 1 may
need this node's answers. From then on, and while the epoch of the coming rounds
has no core here yet (``horizon``: a change acknowledged, its boundary still
open; or a boundary known, its epoch not begun), each frame's round is read from
its header alone (``peek_round``) and the frame goes to the core of that round's
epoch; a frame at or past the horizon waits (a bounded number per peer) until
that epoch's core is in (a neighbour already in round b must not have its frames
judged by the old epoch's core).

The exchange is where round numbers meet the core's indices
(``p2pfl.node.numbering``): it takes and gives round numbers (1..R), calls the
core with their indices (``begin_round``, ``start_round``, ``resume_at``,
``confirm_declaration``) and numbers every event the core reports, so the
ledger records, audit entries, logs and events it writes all count from 1.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy.typing as npt

from p2pfl.node.channels import Channel, tag
from p2pfl.node.errors import PlanError
from p2pfl.node.events import DropoutsDeclared
from p2pfl.node.host import RoundHost
from p2pfl.node.numbering import index, number
from p2pfl.spec import Graph, KeyRing, Plan, System, federation_bytes
from p2pfl.spec.cores import build_core
from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError, ProtocolError
from protocols.gossip import Rejected, RoundMixed, Straggler
from protocols.partial import Selection
from protocols.rounds import (
    DeclarationExpired,
    DeclarationHeld,
    PartialRoundCore,
    RoundCore,
    RoundOutput,
    SecureRoundCore,
    TrackedRoundCore,
)
from protocols.secagg import Abandoned
from protocols.secagg import messages as secagg_messages
from protocols.wire import peek_round as peek_gossip_round

Core = RoundCore

log = logging.getLogger(__name__)

RETIRE_ROUNDS = 2
"""Rounds an epoch's core keeps answering after the next epoch began."""
MAX_WAITING_FRAMES_PER_PEER = 64


class Exchange:
    """One node's protocol core and its traffic (module docstring)."""

    def __init__(self, node: RoundHost, core: Core, *, secure: bool, round: int) -> None:
        self.node = node
        self.me = node.node_id
        self.core = core
        self.secure = secure
        self.round = round  # the number of the round the node is in; tags retained frames
        self.round_bytes = 0
        self.abandoned = 0  # rounds this node's receiver abandoned (secure mode)
        self._waiters: dict[int, asyncio.Future[RoundMixed]] = {}
        self._mixed: dict[int, RoundMixed] = {}
        self._held: dict[tuple[int, str], frozenset[str]] = {}  # declarations the core holds
        self._eras: list[tuple[int, Core]] = [(round, core)]  # (first round, core), oldest first
        self.horizon: int | None = None  # frames of this round on wait: their epoch is unknown
        self._waiting: list[tuple[str, int, memoryview]] = []

    @property
    def channel(self) -> Channel:
        return Channel.SECAGG if self.secure else Channel.GOSSIP

    @property
    def deadline(self) -> float | None:
        deadlines = [d for _, core in self._eras if (d := core.deadline) is not None]
        return min(deadlines, default=None)

    # -- epochs ------------------------------------------------------------------------

    def switch(self, core: Core, round: int) -> None:
        """From round ``round`` on, frames go to ``core`` (a new epoch's); the old core retires."""
        self._eras.append((round, core))
        self.core = core
        self.set_horizon(self.horizon)

    @property
    def newest_era(self) -> int:
        """The first round of the newest core (the epoch frames go to from there on)."""
        return self._eras[-1][0]

    def set_horizon(self, horizon: int | None) -> None:
        """Rounds from ``horizon`` on are of an epoch this exchange has no core for yet:
        not known yet, or known but not begun (None: every round's core is here)."""
        self.horizon = horizon
        ready = [w for w in self._waiting if horizon is None or w[1] < horizon]
        self._waiting = [w for w in self._waiting if not (horizon is None or w[1] < horizon)]
        for peer, round_, body in ready:
            self._feed(self._core_of(round_), peer, body)

    def _core_of(self, round: int) -> Core:
        chosen = self._eras[0][1]
        for start, core in self._eras:
            if start <= round:
                chosen = core
        return chosen

    def _retire(self) -> None:
        while len(self._eras) > 1 and self._eras[1][0] + RETIRE_ROUNDS <= self.round:
            self._eras.pop(0)

    def _round_of(self, body: memoryview) -> int:
        peek = secagg_messages.peek_round if self.secure else peek_gossip_round
        return number(peek(body))

    def _wait(self, peer: str, round_: int, body: memoryview) -> None:
        if sum(p == peer for p, _, _ in self._waiting) >= MAX_WAITING_FRAMES_PER_PEER:
            self.node.peer_error(peer, "too many frames of rounds not known yet", kind="flood")
            return
        self._waiting.append((peer, round_, body))

    # -- the core, by round number ---------------------------------------------------

    def begin_round(self, round: int, now: float, origin: npt.NDArray[Any]) -> None:
        """Before local training from ``origin`` (tracked modes keep a copy of it)."""
        self.drive(self.core.begin_round(index(round), now, origin))

    def start_round(self, round: int, model: npt.NDArray[Any], now: float) -> None:
        self.drive(self.core.start_round(index(round), model, now))

    def resume_at(self, round: int) -> None:
        """The node skips to round ``round``: the core opens no receiver for the rounds before."""
        self.round = round
        self.core.resume_at(index(round))

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
        for _, core in list(self._eras):
            self.drive(core.poll(now))

    def receive(self, peer: str, channel: int, body: memoryview) -> None:
        if channel != self.channel:
            kind = "secure" if self.secure else "plain"
            self.node.peer_error(
                peer, f"a {kind} round got a message on channel {channel}", kind="channel"
            )
            return
        if len(self._eras) == 1 and self.horizon is None:
            self._feed(self.core, peer, body)
            return
        try:
            round_ = self._round_of(body)
        except DecodeError as exc:
            self.node.peer_error(peer, str(exc), kind="malformed")
            return
        if self.horizon is not None and round_ >= self.horizon:
            self._wait(peer, round_, bytes(body))  # a view into the link's buffer would change
            return
        self._feed(self._core_of(round_), peer, body)

    def _feed(self, core: Core, peer: str, body: memoryview) -> None:
        now = asyncio.get_running_loop().time()
        try:
            out = core.receive(peer, body, now)
        except DecodeError as exc:
            self.node.peer_error(peer, str(exc), kind="malformed")
            return
        except PeerProtocolError as exc:
            self.node.peer_error(peer, str(exc), kind="round")
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
        core = self._core_of(round_)
        # only a secure core holds declarations (a tracked mode's inner one, or behind
        # partial sharing's, which forwards)
        assert isinstance(core, SecureRoundCore | TrackedRoundCore | PartialRoundCore)
        now = asyncio.get_running_loop().time()
        try:
            out = core.confirm_declaration(index(round_), receiver, dropped, now)
        except PeerProtocolError as exc:
            self.node.peer_error(receiver, str(exc), kind="declaration")
            return
        except ProtocolError as exc:
            log.error("dropout declaration of %s not handled: %s", receiver, exc)
            return
        self.drive(out)

    def prune(self) -> None:
        """Forget the frames for replay that no neighbour can need any more (``replay_floor``)."""
        self._retire()
        round_of = self.node.ledger.round_of  # not progress(): every member's, every change
        done = self.round - 1
        for peer in self.node.linked():
            self.node.prune_replay(peer, replay_floor(round_of(peer), done))

    def drive(self, out: RoundOutput) -> None:
        """Act on a core's output: ledger records first, then frames, then wake the timer."""
        node = self.node
        dropped: dict[int, list[str]] = {}
        held: list[tuple[int, str]] = []
        for event in out.events:
            if isinstance(event, Straggler):
                if self.secure:
                    dropped.setdefault(number(event.round), []).append(event.peer)
                else:
                    node.record("straggler", round=number(event.round), peer=event.peer)
            elif isinstance(event, RoundMixed):
                round_ = number(event.round)
                waiter = self._waiters.pop(round_, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
                else:
                    self._mixed[round_] = event
            elif isinstance(event, DeclarationHeld):
                key = (number(event.round), event.receiver)
                log.info(
                    "holding %s's dropout declaration of round %d until the ledger has it",
                    event.receiver,
                    key[0],
                )
                self._held[key] = frozenset(event.dropped)
                held.append(key)
            elif isinstance(event, DeclarationExpired):
                self._held.pop((number(event.round), event.receiver), None)
                reason = "a dropout declaration never reached the ledger; ignored"
                node.peer_error(event.peer, reason, kind="declaration")
            elif isinstance(event, Rejected):
                node.peer_error(event.peer, event.reason, kind="round")
            elif isinstance(event, Abandoned):
                self.abandoned += 1
                log.warning("abandoning round %d: %s", number(event.round), event.reason)
        for round_, peers in sorted(dropped.items()):
            self._declare(round_, peers)
        for peer, frame in out.sends:
            self.round_bytes += len(frame) - 1  # the channel tag is not round traffic
            node.send(peer, frame, round=self.round)
        for key in held:  # the ledger may hold them already
            self._confirm(key)
        node.wake_timer()

    def _declare(self, round_: int, peers: list[str]) -> None:
        node = self.node
        ledger = node.ledger
        try:
            update = ledger.declare_dropouts(
                node.identity.signing_key, round_, peers, clock=ledger.next_clock()
            )
        except LocalProtocolError as exc:
            log.error("cannot record the dropouts of round %d: %s", round_, exc)
            return
        node.write_ledger(update)
        node.record("dropouts-declared", round=round_, dropped=sorted(peers))
        node.emit(DropoutsDeclared(round_, tuple(sorted(peers))))
        log.warning("round %d: declared %s dropped", round_, sorted(peers))


REPLAY_ROUNDS = 2
"""Rounds before the current one whose frames are kept for a neighbour not known past them."""


def replay_floor(peer_done: int, done: int) -> int:
    """The oldest round whose frames to a neighbour stay retained (``LinkManager.prune``).

    ``peer_done`` is the last round the neighbour reported completed (ledger
    progress), ``done`` ours. A frame of round r stays until both ends are past
    r: the neighbour's own round r may still wait for our masked input or
    reveal, and its sender side for our round r for our share relay and
    declaration (a neighbour's progress says only that its receiver is done).
    Frames are tagged with the round this node was in when it sent them, and a
    receiver's frames may be one round ahead of it (a neighbour's shares open
    our next round early), hence ``min(peer_done, done)`` and not one more.
    Pruning at our own round alone lost, on every reset in that window, the
    frames a slower neighbour still needed: its round then waited for a secure
    timeout and declared us dropped (the soak's stalls). A neighbour that
    stays behind (down) keeps the frames of ``REPLAY_ROUNDS`` rounds before
    ours, no more: a restarted node catches up rather than replay them.
    """
    return max(min(peer_done, done), done + 1 - REPLAY_ROUNDS)


def make_core(
    node: RoundHost,
    plan: Plan,
    graph: Graph,
    *,
    round: int,
    dim: int,
    selection: Selection | None = None,
) -> Core:
    """The rehearsed core for this node (``p2pfl.spec.cores``), with real keys, at round
    number ``round``.

    Secure mode takes this identity's X25519 key and the members' box keys from the
    ledger, draws its self-mask seeds from the operating system, and holds a
    received dropout declaration until the ledger has it. Either core writes the
    channel tag in front of every frame it makes. A plain sync round mixes over the
    trained model (the core encodes, so copies, a round's frame as soon as
    ``start_round`` returns): one model-sized vector fewer.
    """
    secure = plan.secure.enabled
    keys = None
    if secure:
        ledger = node.ledger
        box = {member: ledger.box_key(member) for member in graph.roster}
        missing = [m for m, k in box.items() if k is None]
        if missing:
            raise PlanError(f"members {missing} have no valid box key in the ledger")
        identity = node.identity
        keys = KeyRing(bytes(identity.box_private), {m: k for m, k in box.items() if k is not None})
    return build_core(
        plan,
        graph,
        node.node_id,
        dim=dim,
        federation=federation_bytes(node.ledger.federation_id),
        randomness=System(),
        keys=keys,
        prefix=tag(Channel.SECAGG if secure else Channel.GOSSIP),
        hold_declarations=True,
        mix_in_place=True,
        start_at=index(round),
        selection=selection,
    )

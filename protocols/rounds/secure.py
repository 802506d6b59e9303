"""Secure mixing as a round core: SecAgg over each node's neighbourhood.

Node i learns only sum_{j in N(i)} W_ij x_j: every in-neighbour j runs a
``MaskingSender`` towards i, and i runs one ``AggregatingReceiver``. A round
of node i is then: at its start (``begin_round``, before local training) deal
the shares of a fresh self-mask seed to every receiver it feeds; after
training (``start_round``) hand its model to those senders; when its own
receiver has aggregated, mix
x_i <- (W_ii x_i + aggregate) / (W_ii + sum of the contributors' W_ij).
If its receiver abandons the round (fewer than t survivors) the node keeps
its own model and an ``Abandoned`` event says why. The neighbours a receiver
declares dropped are reported as ``Straggler`` events, before the frames that
carry the declaration, so a shell can record the declaration first.

Keys and seeds are arguments: the X25519 private key, the members' public
keys and ``self_seed(round, receiver)``, which must give a fresh secret for
every (round, receiver) (a daemon reads the operating system's randomness; a
simulation derives them from its seed so a run can be repeated).

The dropout declaration: by default a holder acts on a receiver's declaration
as it arrives. With ``declarations_need_confirmation`` (a daemon, whose ledger
keeps every holder's view of the declaration the same) a declaration that
names dropouts is held and reported (``DeclarationHeld``); it is acted on
when the shell calls ``confirm_declaration`` with the dropout set its ledger
holds for that (round, receiver), and dropped with a ``DeclarationExpired``
event if ``timeouts.unmask`` passes first. A receiver that sends two
different declarations for one round breaks the protocol.

Rounds are bounded to a window: a message for a round more than
``max_rounds_ahead`` past the newest round this node has begun (or below it by
more than the rounds whose sender state is kept) breaks the protocol, so a
neighbour cannot make us open a receiver, and hold its state, for every round
number it can write.

``bound`` (the plan's ``gossip.clip_radius`` under ``gossip.robust = 'bounded'``):
the mix is pulled back to within that distance of the node's own model
(``protocols.mixing.bound_deviation``). The receiver sees only the sum, so this
is the one robust step it can take: it bounds what a malicious masked input
moves the node per round, without telling who sent it.

``drop_rounds`` (simulation only): in those rounds the node deals its shares
(so recovery is needed), then vanishes: it sends no masked input, answers no
reveal, ignores what is sent to it and keeps its own trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from protocols import secagg
from protocols.errors import PeerProtocolError
from protocols.gossip import Neighbourhood, RoundMixed, Straggler
from protocols.mixing import bound_deviation
from protocols.rounds.core import (
    DeclarationExpired,
    DeclarationHeld,
    Frame,
    RoundEvent,
    RoundOutput,
    Vector,
)
from protocols.secagg import (
    Abandoned,
    Aggregated,
    AggregatingReceiver,
    DropoutDeclaration,
    DropoutsDeclared,
    Ignored,
    MaskingSender,
    Message,
    PairKeys,
    RoundContext,
    SecAggConfig,
    Send,
    Timeouts,
)
from protocols.secagg import Output as SecAggOutput

_KEEP = 4
"""Rounds closed this long ago still answer a late reveal; older ones are forgotten."""

HoodOf = Callable[[str, int], Neighbourhood]
"""(node, round) -> that node's neighbourhood in that round."""

SelfSeed = Callable[[int, str], bytes]
"""(round, receiver) -> a fresh 32-byte self-mask seed for that round at that receiver."""


@dataclass(frozen=True)
class _Held:
    peer: str
    declaration: DropoutDeclaration
    expires: float


class SecureRoundCore:
    """One node's side of secure mixing: receiver of its round, sender to its out-neighbours."""

    def __init__(
        self,
        name: str,
        hood_of: HoodOf,
        cfg: SecAggConfig,
        *,
        federation_id: bytes,
        box_private: bytes,
        public_keys: Mapping[str, bytes],
        self_seed: SelfSeed,
        timeouts: Timeouts,
        dim: int,
        drop_rounds: frozenset[int] = frozenset(),
        declarations_need_confirmation: bool = False,
        prefix: bytes = b"",
        max_rounds_ahead: int = 8,
        bound: float | None = None,
    ) -> None:
        self.name = name
        self._bound = bound
        self._hood_of = hood_of
        self._cfg = cfg
        self._fed = federation_id
        self._keys = PairKeys(name, box_private, public_keys)  # pair agreements, made once
        self._self_seed = self_seed
        self._timeouts = timeouts
        self._dim = dim
        self._drops = drop_rounds
        self._confirm = declarations_need_confirmation
        self._prefix = prefix
        self._receivers: dict[int, AggregatingReceiver] = {}
        self._senders: dict[tuple[int, str], MaskingSender] = {}
        self._own: dict[int, Vector] = {}
        self._outcome: dict[int, Aggregated | Abandoned] = {}
        self._held: dict[tuple[int, str], _Held] = {}
        self._closed: set[int] = set()  # rounds whose receiver finished: late messages are moot
        self._floor = 0  # rounds below it are never opened (see resume_at)
        self._begun = 0  # the newest round begun here: the window's anchor
        self._max_ahead = max_rounds_ahead
        self.abandoned = 0  # rounds this node's receiver abandoned

    # -- the round-core interface ------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        times = [rx.deadline for rx in self._receivers.values() if rx.deadline is not None]
        times += [held.expires for held in self._held.values()]
        return min(times) if times else None

    def resume_at(self, round: int) -> None:
        """Never open a receiver for rounds before ``round`` (a node resumed from a checkpoint)."""
        self._floor = max(self._floor, round)
        self._begun = max(self._begun, round)
        for r in [r for r in self._receivers if r < round]:
            del self._receivers[r]

    def begin_round(self, round: int, now: float, origin: Vector | None = None) -> RoundOutput:
        """Before local training: open our receiver and deal our shares to each receiver we feed.

        ``origin`` (the model training starts from) is not needed here.
        """
        self._begun = max(self._begun, round)
        self._receiver(round, now)
        outputs: list[SecAggOutput] = []
        for receiver in sorted(self._hood_of(self.name, round).out_shares):
            tx = MaskingSender(self._context(round, receiver), keys=self._keys)
            self._senders[(round, receiver)] = tx
            outputs += tx.share(self._self_seed(round, receiver))
        return self._flush(outputs, round)

    def start_round(self, round: int, model: Vector, now: float) -> RoundOutput:
        """After local training: mask our model towards every receiver, then try to mix.

        The senders keep ``model`` (no copy) until the roster is known: the
        caller must not change it before the round is over at every receiver.
        """
        self._own[round] = np.ascontiguousarray(model, dtype=np.float32)
        if round in self._drops:
            stragglers = tuple(sorted(self._hood_of(self.name, round).in_weights))
            mixed = RoundMixed(round, self._own.pop(round), (), stragglers)
            return RoundOutput(events=(mixed,))
        outputs: list[SecAggOutput] = []
        for receiver in sorted(self._hood_of(self.name, round).out_shares):
            weight = self._hood_of(receiver, round).in_weights[self.name]
            outputs += self._senders[(round, receiver)].set_input(self._own[round], weight)
        return self._flush(outputs, round)

    def receive(self, peer: str, frame: Frame, now: float) -> RoundOutput:
        message = secagg.decode(frame)
        round = message.round
        if not self._begun - _KEEP <= round <= self._begun + self._max_ahead:
            raise PeerProtocolError(
                peer, f"round {round} is outside the window around round {self._begun}"
            )
        if round in self._drops:
            return RoundOutput()
        kind = type(message).__name__
        if message.receiver == self.name:
            rx = self._receiver(round, now)
            if rx is None:
                return _ignored(peer, f"{kind} for closed round {round}")
            return self._flush(rx.receive(peer, message, now), round)
        tx = self._senders.get((round, message.receiver))
        if tx is None:
            return _ignored(peer, f"{kind} for round {round} at {message.receiver!r}: not dealt")
        if self._confirm and isinstance(message, DropoutDeclaration) and message.dropped:
            return self._hold(peer, message, now)
        return self._flush(tx.receive(peer, message), round)

    def poll(self, now: float) -> RoundOutput:
        out = RoundOutput()
        for round, rx in list(self._receivers.items()):
            out += self._flush(rx.tick(now), round)
        for key, held in list(self._held.items()):
            if held.expires <= now:
                del self._held[key]
                d = held.declaration
                expired = DeclarationExpired(d.round, d.receiver, d.dropped, held.peer)
                out += RoundOutput(events=(expired,))
        return out

    # -- held declarations -------------------------------------------------------------

    def confirm_declaration(
        self, round: int, receiver: str, dropped: Collection[str], now: float
    ) -> RoundOutput:
        """The ledger holds ``receiver``'s declaration of ``dropped`` for ``round``: act on it.

        Does nothing if no declaration is held for (round, receiver) or the
        held one names another dropout set (it stays held until it expires).
        Raises ``PeerProtocolError`` (naming the receiver) if acting on it
        breaks the protocol.
        """
        held = self._held.get((round, receiver))
        if held is None or frozenset(held.declaration.dropped) != frozenset(dropped):
            return RoundOutput()
        del self._held[(round, receiver)]
        tx = self._senders.get((round, receiver))
        if tx is None:
            return RoundOutput()
        return self._flush(tx.receive(held.peer, held.declaration), round)

    def _hold(self, peer: str, message: DropoutDeclaration, now: float) -> RoundOutput:
        if peer != message.receiver:
            raise PeerProtocolError(peer, f"only receiver {message.receiver!r} may declare")
        key = (message.round, message.receiver)
        held = self._held.get(key)
        if held is not None:
            if held.declaration != message:
                raise PeerProtocolError(
                    peer, f"two different dropout declarations for round {message.round}"
                )
            return RoundOutput()
        self._held[key] = _Held(peer, message, now + self._timeouts.unmask)
        event = DeclarationHeld(message.round, message.receiver, message.dropped, peer)
        return RoundOutput(events=(event,))

    # -- internals ---------------------------------------------------------------------

    def _context(self, round: int, receiver: str) -> RoundContext:
        hood = tuple(sorted(self._hood_of(receiver, round).in_weights))
        return RoundContext(self._fed, round, receiver, hood, self._cfg)

    def _receiver(self, round: int, now: float) -> AggregatingReceiver | None:
        if round in self._drops or round in self._closed or round < self._floor:
            return None
        if round not in self._receivers:
            rx = AggregatingReceiver(
                self._context(round, self.name), dim=self._dim, timeouts=self._timeouts
            )
            rx.start(now)
            self._receivers[round] = rx
        return self._receivers[round]

    def _encode(self, message: Message) -> bytes:
        return b"".join([self._prefix, *message.encode_parts()])

    def _flush(self, outputs: Sequence[SecAggOutput], round: int) -> RoundOutput:
        sends: list[tuple[str, bytes]] = []
        events: list[RoundEvent] = []
        encoded: dict[int, bytes] = {}  # a declaration or abandon notice goes to many: one frame
        for out in outputs:
            if isinstance(out, Send):
                if id(out.message) not in encoded:
                    encoded[id(out.message)] = self._encode(out.message)
                sends.append((out.peer, encoded[id(out.message)]))
            elif isinstance(out, Aggregated | Abandoned):
                self._outcome[out.round] = out
                if isinstance(out, Abandoned):
                    self.abandoned += 1
                    events.append(out)
            elif isinstance(out, DropoutsDeclared):
                events += [Straggler(out.round, peer) for peer in out.dropped]
            else:
                events.append(out)
        events += self._try_mix(round)
        return RoundOutput(tuple(sends), tuple(events))

    def _try_mix(self, round: int) -> list[RoundMixed]:
        if round not in self._own or round not in self._outcome:
            return []
        own = self._own.pop(round)
        outcome = self._outcome.pop(round)
        self._receivers.pop(round, None)
        self._closed.add(round)
        self._forget(round)
        hood = self._hood_of(self.name, round)
        if isinstance(outcome, Abandoned):
            return [RoundMixed(round, own, (), tuple(sorted(hood.in_weights)))]
        total_weight = hood.self_weight + sum(hood.in_weights[j] for j in outcome.contributors)
        mixed = (hood.self_weight * own + outcome.total) / np.float32(total_weight)
        if self._bound is not None:
            mixed = bound_deviation(own, mixed.astype(np.float32), np.float32(self._bound))
        return [RoundMixed(round, mixed.astype(np.float32), outcome.contributors, outcome.missing)]

    def _forget(self, round: int, keep: int = _KEEP) -> None:
        """Drop sender state of rounds long closed (they may still answer a late reveal)."""
        for key in [k for k in self._senders if k[0] < round - keep]:
            del self._senders[key]
        self._closed = {r for r in self._closed if r >= round - keep}


def _ignored(peer: str, reason: str) -> RoundOutput:
    return RoundOutput(events=(Ignored(peer, reason),))

"""Gossip averaging as sans-I/O state machines, one per node.

A node's round of decentralized SGD is: local steps (done by the driver), then
``start_round(r, model, now)``, which returns what to send to the
out-neighbours; then ``receive(peer, message, now)`` for each arrival and
``poll(now)`` when the driver's clock passes ``deadline``. The round ends with
a ``RoundMixed`` event carrying the mixed model. The cores never sleep, never
read a clock and never draw from a global generator.

Rules every mode follows:

- Waiting is per neighbourhood: a round needs only the in-neighbours' messages
  of that round. Messages for later rounds are buffered (``Buffered``), up to
  ``max_rounds_ahead``; a peer further ahead breaks the protocol.
- At the deadline, missing in-neighbours are reported (``Straggler``) and the
  node mixes over who arrived, with the weights renormalised (``sync``) or
  with the neighbour's last public copy (``choco``).
- A message for a round already closed is reported (``LateArrival``): ``sync``
  discards it, ``choco`` applies it to the sender's public copy so the copies
  stay equal on both ends. Nothing is dropped without an event.
- A payload holding NaN or infinite values breaks the protocol as it arrives
  (one such vector would poison every model it is mixed into). A buffered
  message that proves wrong only when its round starts (a model of the wrong
  length) is dropped with a ``Rejected`` event naming its sender, so one
  member's bad frame never fails the receiver's round.

Modes:

- ``SyncGossip``: exact D-PSGD (Lian et al. 2017), adapt-then-combine:
  x_i <- sum_j W_ij x_j over the half-step models. Messages carry the model
  itself (a delta against the zero reference), so a missed round never
  corrupts later ones.
- ``ChocoGossip``: CHOCO-SGD (Koloskova et al. 2019). Each node keeps public
  copies x_hat of itself and its neighbours, sends q_i = Q(x_i - x_hat_i) and
  sets x_i <- x_i + gamma * sum_j W_ij (x_hat_j - x_hat_i). The copies carry
  the compression error forward (error feedback). With no compression and
  gamma = 1 a round equals ``SyncGossip``'s.
- ``PushSumGossip``: push-sum / stochastic gradient push (Kempe et al. 2003,
  Assran et al. 2019) over column-stochastic weights: no barrier, each start
  sends shares of (x, w) and the model is x / w; arrivals are absorbed whenever
  they come.

State across rounds: ``export_state()`` gives what a mode carries from one
round to the next as named arrays (``CoreState``), ``import_state(state)``
takes it back on an idle core, so a node restarted from a checkpoint holds
what its neighbours hold about it. Sync carries nothing; CHOCO its own public
copy, its neighbours' copies and the rounds it still owes a straggler;
push-sum its numerator, weight and the model it handed out last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.compression import Compressor, NoCompression, add_payload, contraction_scale
from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.mixing import (
    RobustRule,
    choco_mix,
    mix,
    push_sum_absorb,
    push_sum_model,
    robust_mix,
)
from protocols.wire import Encoding, GossipMessage, Payload, dense, encode

Vector = npt.NDArray[Any]
CoreState = dict[str, Vector]
"""Named arrays a core carries across rounds (``export_state`` / ``import_state``)."""


@dataclass(frozen=True)
class Neighbourhood:
    """One node's view of one round's mixing matrix.

    ``in_weights[j]`` is W_ij (what this node gives to j's model), ``out_shares[j]``
    is W_ji (the share of this node's mass sent to j; push-sum), ``self_weight`` W_ii.
    """

    self_weight: float
    in_weights: Mapping[str, float]
    out_shares: Mapping[str, float]


NeighbourhoodFn = Callable[[int], Neighbourhood]


@dataclass(frozen=True)
class RoundMixed:
    round: int
    model: Vector
    arrived: tuple[str, ...]
    stragglers: tuple[str, ...]


@dataclass(frozen=True)
class Straggler:
    round: int
    peer: str


@dataclass(frozen=True)
class LateArrival:
    round: int
    peer: str
    applied: bool


@dataclass(frozen=True)
class Buffered:
    round: int
    peer: str


@dataclass(frozen=True)
class Rejected:
    """A buffered message dropped when its round started: ``peer`` broke the protocol."""

    round: int
    peer: str
    reason: str


Event = RoundMixed | Straggler | LateArrival | Buffered | Rejected


@dataclass(frozen=True)
class Output:
    """What a call into a core produced: messages to send and events to report."""

    sends: tuple[tuple[str, GossipMessage], ...] = ()
    events: tuple[Event, ...] = ()


class Phase(Enum):
    IDLE = "idle"  # between rounds: local training happens now
    WAITING = "waiting"  # sent this round's message, collecting the in-neighbours'


@dataclass
class _Round:
    number: int
    model: Vector
    deadline: float | None
    neighbourhood: Neighbourhood
    arrived: dict[str, GossipMessage] = field(default_factory=dict)
    published: bool = False  # ``start_round`` has returned the messages made from ``model``


class _BarrierCore:
    """Shared bookkeeping of the two modes that wait for their neighbourhood."""

    def __init__(
        self,
        node_id: str,
        neighbourhood: NeighbourhoodFn,
        *,
        round_timeout: float | None = None,
        max_rounds_ahead: int = 8,
    ) -> None:
        if round_timeout is not None and round_timeout <= 0:
            raise LocalProtocolError("round_timeout must be positive")
        self.node_id = node_id
        self._neighbourhood = neighbourhood
        self._timeout = round_timeout
        self._max_ahead = max_rounds_ahead
        self.next_round = 0
        self._current: _Round | None = None
        self._early: dict[int, dict[str, GossipMessage]] = {}

    @property
    def phase(self) -> Phase:
        return Phase.IDLE if self._current is None else Phase.WAITING

    def resume_at(self, round: int) -> None:
        """Continue from ``round`` (a node restarted after its checkpoint of ``round - 1``)."""
        if self._current is not None:
            raise LocalProtocolError("cannot resume while a round is open")
        if round < 0:
            raise LocalProtocolError("round must be non-negative")
        self.next_round = round
        self._early = {r: m for r, m in self._early.items() if r >= round}

    @property
    def deadline(self) -> float | None:
        return None if self._current is None else self._current.deadline

    def export_state(self) -> CoreState:
        """What the mode carries across rounds (none here); only between rounds."""
        self._require_idle("export")
        return {}

    def import_state(self, state: CoreState) -> None:
        """Continue from ``export_state``'s arrays; ``LocalProtocolError`` if they do not fit."""
        self._require_idle("import")
        if state:
            raise LocalProtocolError(f"this mode carries no state, got {sorted(state)}")

    def _require_idle(self, what: str) -> None:
        if self._current is not None:
            raise LocalProtocolError(
                f"cannot {what} the state while round {self._current.number} is open"
            )

    def start_round(self, round: int, model: Vector, now: float) -> Output:
        """Publish this node's round-``round`` contribution after its local steps."""
        if self._current is not None:
            raise LocalProtocolError(f"round {self._current.number} is still open")
        if round != self.next_round:
            raise LocalProtocolError(f"expected round {self.next_round}, got {round}")
        hood = self._neighbourhood(round)
        deadline = None if self._timeout is None else now + self._timeout
        self._current = _Round(round, model, deadline, hood)
        sends = self._publish(self._current)
        events: list[Event] = []
        for peer, message in self._early.pop(round, {}).items():
            try:
                events.extend(self._accept(peer, message))
            except PeerProtocolError as exc:
                events.append(Rejected(round, peer, str(exc)))
        events.extend(self._maybe_complete(now))
        if self._current is not None:
            self._current.published = True
        return Output(tuple(sends), tuple(events))

    def receive(self, peer: str, message: GossipMessage, now: float) -> Output:
        """Take one decoded message that arrived from ``peer``."""
        if message.sender != peer:
            raise PeerProtocolError(peer, f"message claims to come from {message.sender!r}")
        check_finite(peer, message)
        current = self._current.number if self._current is not None else self.next_round
        if message.round < current:
            return Output(events=(self._late(peer, message),))
        if self._current is None or message.round > self._current.number:
            return Output(events=(self._buffer(peer, message, current),))
        events = self._accept(peer, message)
        events.extend(self._maybe_complete(now))
        return Output(events=tuple(events))

    def poll(self, now: float) -> Output:
        """Close the open round if its deadline has passed."""
        if self._current is None or self._current.deadline is None:
            return Output()
        if now < self._current.deadline:
            return Output()
        return Output(events=tuple(self._complete()))

    def _buffer(self, peer: str, message: GossipMessage, current: int) -> Event:
        if message.round > current + self._max_ahead:
            raise PeerProtocolError(peer, f"round {message.round} is too far ahead of {current}")
        if peer not in self._neighbourhood(message.round).in_weights:
            raise PeerProtocolError(peer, f"not an in-neighbour in round {message.round}")
        slot = self._early.setdefault(message.round, {})
        if peer in slot:
            _resent(peer, slot[peer], message)
        slot[peer] = message
        return Buffered(message.round, peer)

    def _accept(self, peer: str, message: GossipMessage) -> list[Event]:
        assert self._current is not None
        if peer not in self._current.neighbourhood.in_weights:
            raise PeerProtocolError(peer, f"not an in-neighbour in round {message.round}")
        if peer in self._current.arrived:
            _resent(peer, self._current.arrived[peer], message)
            return []
        if message.payload.length != self._current.model.shape[0]:
            raise PeerProtocolError(peer, "model length does not match")
        self._current.arrived[peer] = message
        return []

    def _maybe_complete(self, now: float) -> list[Event]:
        assert self._current is not None
        expected = self._current.neighbourhood.in_weights.keys()
        deadline = self._current.deadline
        if set(expected) <= self._current.arrived.keys() or (
            deadline is not None and now >= deadline
        ):
            return self._complete()
        return []

    def _complete(self) -> list[Event]:
        current = self._current
        assert current is not None
        weights = current.neighbourhood.in_weights
        missing = tuple(sorted(p for p in weights if p not in current.arrived))
        events: list[Event] = [Straggler(current.number, p) for p in missing]
        model = self._mix(current)
        arrived = tuple(sorted(current.arrived))
        events.append(RoundMixed(current.number, model, arrived, missing))
        self._current = None
        self.next_round = current.number + 1
        return events

    # The two hooks a mode defines.
    def _publish(self, current: _Round) -> list[tuple[str, GossipMessage]]:
        raise NotImplementedError

    def _mix(self, current: _Round) -> Vector:
        raise NotImplementedError

    def _late(self, peer: str, message: GossipMessage) -> Event:
        return LateArrival(message.round, peer, applied=False)


class SyncGossip(_BarrierCore):
    """Exact D-PSGD: one round is x_i <- sum_j W_ij x_j (renormalised over arrivals).

    With ``mix_in_place`` the mix is written over the (writable) model handed to
    ``start_round`` when the round closes in a later ``receive`` or ``poll``,
    rather than into a new model-sized vector: the caller must be done with the
    messages ``start_round`` returned (they refer to that model) before making
    those calls, and must expect its model to change. A round that closes within
    ``start_round`` (its neighbours' messages came first) mixes into a new vector.

    With an active ``robust`` rule the round is ``protocols.mixing.robust_mix`` over
    the neighbours that arrived (clipped gossip or trimmed mean) instead of the
    plain average; a straggler then simply adds nothing.
    """

    def __init__(
        self,
        node_id: str,
        neighbourhood: NeighbourhoodFn,
        *,
        round_timeout: float | None = None,
        max_rounds_ahead: int = 8,
        mix_in_place: bool = False,
        robust: RobustRule | None = None,
    ) -> None:
        super().__init__(
            node_id, neighbourhood, round_timeout=round_timeout, max_rounds_ahead=max_rounds_ahead
        )
        self._in_place = mix_in_place
        self._robust = robust or RobustRule()

    def _accept(self, peer: str, message: GossipMessage) -> list[Event]:
        if message.payload.encoding is not Encoding.DENSE:
            raise PeerProtocolError(peer, "sync gossip takes dense models only")
        return super()._accept(peer, message)

    def _publish(self, current: _Round) -> list[tuple[str, GossipMessage]]:
        message = GossipMessage(self.node_id, current.number, dense(current.model))
        return [(peer, message) for peer in current.neighbourhood.out_shares]

    def _mix(self, current: _Round) -> Vector:
        weights = current.neighbourhood.in_weights
        received = [
            (weights[p], np.asarray(m.payload.values, dtype=current.model.dtype))
            for p, m in sorted(current.arrived.items())
        ]
        own = current.model
        out = own if self._in_place and current.published and own.flags.writeable else None
        if self._robust.active:
            if not received:
                return own.copy() if out is None else out
            stacked = np.stack([v for _, v in received])
            weights_ = np.asarray([w for w, _ in received], dtype=own.dtype)
            result: Vector = robust_mix(own, stacked, weights_, self._robust)
            if out is None:
                return result.astype(own.dtype, copy=False)
            out[...] = result
            return out
        return mix(own, current.neighbourhood.self_weight, received, out=out)


class ChocoGossip(_BarrierCore):
    """CHOCO-SGD with public copies and a compressor; needs a static neighbourhood."""

    def __init__(
        self,
        node_id: str,
        neighbourhood: NeighbourhoodFn,
        *,
        compressor: Compressor | None = None,
        gamma: float = 1.0,
        seed: int = 0,
        round_timeout: float | None = None,
        max_rounds_ahead: int = 8,
    ) -> None:
        super().__init__(
            node_id, neighbourhood, round_timeout=round_timeout, max_rounds_ahead=max_rounds_ahead
        )
        if not 0 < gamma <= 1:
            raise LocalProtocolError(f"choco gamma must be in (0, 1], got {gamma}")
        self._compressor = compressor or NoCompression()
        self._gamma = gamma
        self._seed = seed
        self._own_copy: Vector | None = None
        self._copies: dict[str, Vector] = {}
        self._owed: set[tuple[str, int]] = set()  # (peer, round) closed without the peer

    def _own_copy_length(self) -> int:
        return -1 if self._own_copy is None else int(self._own_copy.shape[0])

    def export_state(self) -> CoreState:
        """The public copies (``own``, ``copy:<peer>``) and the rounds owed (``owed:<peer>``).

        Arrays are copies: the core goes on changing its own. Before the first
        round there is nothing to carry (empty).
        """
        self._require_idle("export")
        if self._own_copy is None:
            return {}
        state: CoreState = {"own": self._own_copy.copy()}
        for peer, copy in sorted(self._copies.items()):
            state[f"copy:{peer}"] = copy.copy()
        owed: dict[str, list[int]] = {}
        for peer, round_ in sorted(self._owed):
            owed.setdefault(peer, []).append(round_)
        for peer, rounds in owed.items():
            state[f"owed:{peer}"] = np.asarray(rounds, dtype=np.float64)
        return state

    def import_state(self, state: CoreState) -> None:
        """Continue from ``export_state``'s arrays (``LocalProtocolError`` if they do not fit)."""
        self._require_idle("import")
        if not state:
            self._own_copy, self._copies, self._owed = None, {}, set()
            return
        if "own" not in state:
            raise LocalProtocolError("choco state has no own copy")
        own = np.array(state["own"], copy=True)
        copies: dict[str, Vector] = {}
        owed: set[tuple[str, int]] = set()
        for name, array in state.items():
            kind, _, peer = name.partition(":")
            if kind == "copy" and peer:
                if array.shape != own.shape:
                    raise LocalProtocolError(f"choco copy of {peer} does not match the own copy")
                copies[peer] = np.array(array, dtype=own.dtype, copy=True)
            elif kind == "owed" and peer:
                owed.update((peer, int(r)) for r in np.asarray(array).ravel())
            elif name != "own":
                raise LocalProtocolError(f"choco state has an unknown entry {name!r}")
        self._own_copy, self._copies, self._owed = own, copies, owed

    def _copy_of(self, peer: str, like: Vector) -> Vector:
        if peer not in self._copies:
            self._copies[peer] = np.zeros_like(like)
        return self._copies[peer]

    def _publish(self, current: _Round) -> list[tuple[str, GossipMessage]]:
        if self._own_copy is None:
            self._own_copy = np.zeros_like(current.model)
        rng = np.random.default_rng([self._seed, current.number])
        payload: Payload = self._compressor.compress(current.model - self._own_copy, rng)
        add_payload(self._own_copy, payload, contraction_scale(payload))
        message = GossipMessage(self.node_id, current.number, payload)
        return [(peer, message) for peer in current.neighbourhood.out_shares]

    def _accept(self, peer: str, message: GossipMessage) -> list[Event]:
        events = super()._accept(peer, message)
        assert self._current is not None
        payload = message.payload
        add_payload(self._copy_of(peer, self._current.model), payload, contraction_scale(payload))
        return events

    def _mix(self, current: _Round) -> Vector:
        assert self._own_copy is not None
        for peer in current.neighbourhood.in_weights:
            if peer not in current.arrived:
                self._owed.add((peer, current.number))
        weights = current.neighbourhood.in_weights
        copies = [(weights[p], self._copy_of(p, current.model)) for p in sorted(weights)]
        return choco_mix(current.model, self._own_copy, copies, self._gamma)

    def _late(self, peer: str, message: GossipMessage) -> Event:
        """A straggler's message: applied to its copy once, so both ends' copies agree."""
        if (peer, message.round) not in self._owed:
            raise PeerProtocolError(peer, f"unexpected message for closed round {message.round}")
        self._owed.discard((peer, message.round))
        if message.payload.length != self._own_copy_length():
            raise PeerProtocolError(peer, "model length does not match")
        add_payload(
            self._copy_of(peer, np.zeros(message.payload.length, np.float32)), message.payload
        )
        return LateArrival(message.round, peer, applied=True)


class PushSumGossip:
    """Push-sum over column-stochastic weights, with no round barrier.

    The node holds a numerator x and a weight w; its model is x / w. Local
    training moves the model by some displacement d, which is added to x as
    w d (stochastic gradient push, so that x / w moves by exactly d however
    small w is while shares are in flight); then the node keeps W_ii of (x, w)
    and sends W_ji of it to each out-neighbour j. Received (x, w) shares are
    added whenever they arrive, so the sum of all x and w, held or in flight,
    only changes by the training displacements: mass is conserved. A share of a
    step already absorbed from the same peer (a frame replayed after a
    reconnection) is reported as a ``LateArrival`` and not added twice.
    """

    def __init__(
        self, node_id: str, neighbourhood: NeighbourhoodFn, *, dtype: Any = np.float64
    ) -> None:
        self.node_id = node_id
        self._neighbourhood = neighbourhood
        self._dtype = np.dtype(dtype)
        self.next_round = 0
        self._x: Vector | None = None
        self.weight = 1.0
        self._handed_out: Vector | None = None
        self._seen: dict[str, set[int]] = {}  # the steps absorbed from each peer
        self.phase = Phase.IDLE
        self.deadline: float | None = None

    @property
    def numerator(self) -> Vector | None:
        return self._x

    def absorbed(self, peer: str) -> frozenset[int]:
        """The steps of ``peer`` whose share this node has absorbed."""
        return frozenset(self._seen.get(peer, ()))

    def export_state(self) -> CoreState:
        """Numerator ``x``, ``weight``, the ``handed_out`` model and ``seen:<peer>`` steps.

        ``seen:<peer>`` lists the steps absorbed from the peer: a replayed share
        of a step already absorbed is not added twice after a restart.

        ``weight`` is two float32 values whose sum is the weight to float64
        precision, so a float32 store keeps it. Empty before the node held any
        mass. What arrives later changes only the core's own arrays, never these.
        """
        if self._x is None:
            return {}
        state: CoreState = {
            "x": self._x.copy(),
            "weight": _split(self.weight),
        }
        if self._handed_out is not None:
            state["handed_out"] = self._handed_out.copy()
        for peer, rounds in sorted(self._seen.items()):
            state[f"seen:{peer}"] = np.asarray(sorted(rounds), dtype=np.float64)
        return state

    def import_state(self, state: CoreState) -> None:
        """Continue from ``export_state``'s arrays (``LocalProtocolError`` if they do not fit)."""
        if not state:
            self._x, self.weight, self._handed_out, self._seen = None, 1.0, None, {}
            return
        seen = {
            k.partition(":")[2]: {int(r) for r in np.asarray(v).ravel()}
            for k, v in state.items()
            if k.startswith("seen:")
        }
        unknown = set(state) - {"x", "weight", "handed_out"} - {f"seen:{p}" for p in seen}
        if unknown or "x" not in state or "weight" not in state:
            raise LocalProtocolError(f"push-sum state needs x and weight, got {sorted(state)}")
        x = np.array(state["x"], dtype=self._dtype, copy=True).ravel()
        parts = np.asarray(state["weight"], dtype=np.float64).ravel()
        weight = float(parts.sum())
        if parts.size not in (1, 2) or not weight > 0:
            raise LocalProtocolError("push-sum weight must be one positive value (or two parts)")
        handed = state.get("handed_out")
        if handed is not None and np.asarray(handed).size != x.size:
            raise LocalProtocolError("push-sum handed-out model does not match x")
        self._x, self.weight, self._seen = x, weight, seen
        self._handed_out = (
            None if handed is None else np.array(handed, dtype=np.float32, copy=True).ravel()
        )

    def resume_at(self, round: int) -> None:
        """Continue from step ``round`` (there is no barrier: only the step counter moves)."""
        if round < 0:
            raise LocalProtocolError("round must be non-negative")
        self.next_round = round

    def start_round(self, round: int, model: Vector, now: float) -> Output:
        if round != self.next_round:
            raise LocalProtocolError(f"expected step {self.next_round}, got {round}")
        if self._x is None:
            self._x = np.array(model, dtype=self._dtype, copy=True)
        elif self._handed_out is None:  # mass arrived before our first step: ours is (model, 1)
            self._x = push_sum_absorb(self._x, 1.0, model, 0.0)
        else:
            self._x = push_sum_absorb(self._x, self.weight, model, self._handed_out)
        hood = self._neighbourhood(round)
        sends = []
        for peer, share in sorted(hood.out_shares.items()):
            payload = dense((share * self._x).astype(self._dtype))
            sends.append((peer, GossipMessage(self.node_id, round, payload, share * self.weight)))
        self._x *= hood.self_weight
        self.weight *= hood.self_weight
        self.next_round = round + 1
        self._handed_out = self.model()
        mixed = RoundMixed(round, self._handed_out, (), ())
        return Output(tuple(sends), (mixed,))

    def receive(self, peer: str, message: GossipMessage, now: float) -> Output:
        if message.sender != peer:
            raise PeerProtocolError(peer, f"message claims to come from {message.sender!r}")
        if message.round in self._seen.get(peer, ()):  # a replay after a reconnection
            return Output(events=(LateArrival(message.round, peer, applied=False),))
        check_finite(peer, message)
        if self._x is None:
            self._x = np.zeros(message.payload.length, dtype=self._dtype)
        if message.payload.length != self._x.shape[0]:
            raise PeerProtocolError(peer, "model length does not match")
        add_payload(self._x, message.payload)
        self.weight += message.weight
        self._seen.setdefault(peer, set()).add(message.round)
        return Output()

    def poll(self, now: float) -> Output:
        return Output()

    def model(self) -> Vector:
        """The de-biased model x / w, as float32."""
        if self._x is None:
            raise LocalProtocolError("push-sum has no model before its first step")
        model: Vector = push_sum_model(self._x, self.weight).astype(np.float32)
        return model


def check_finite(peer: str, message: GossipMessage) -> None:
    """``PeerProtocolError`` if ``message`` carries a NaN or an infinity (module docstring)."""
    values = message.payload.values
    if values.dtype.kind == "f" and not bool(np.isfinite(values).all()):
        raise PeerProtocolError(peer, "the payload holds NaN or infinite values")


def _split(value: float) -> Vector:
    """``value`` as float32 ``[high, low]`` with ``high + low == value`` to float64 precision."""
    high = np.float32(value)
    return np.asarray([high, np.float32(value - float(high))], dtype=np.float32)


GossipCore = SyncGossip | ChocoGossip | PushSumGossip


def _resent(peer: str, first: GossipMessage, again: GossipMessage) -> None:
    """A second message from ``peer`` for one round: the same one resent is harmless.

    A link that comes back replays what it had sent (``p2pfl.node.links``), so an
    honest neighbour on a flaky link resends frames; only a different message for
    the same round is the peer's protocol error.
    """
    if encode(first) != encode(again):
        raise PeerProtocolError(peer, f"second, different message for round {again.round}")

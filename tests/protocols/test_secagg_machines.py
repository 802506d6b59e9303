"""Sender and receiver state machines: misuse is ours, bad messages are the peer's."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.secagg import (
    Abandon,
    AggregatingReceiver,
    DropoutDeclaration,
    Ignored,
    MaskedInput,
    MaskingSender,
    PairKeys,
    Phase,
    Reveal,
    RoundContext,
    SecAggConfig,
    Send,
    ShareKeys,
    ShareRelay,
    Timeouts,
    box_public_key,
)

R = "recv"
NAMES = ("a", "b", "c")
PRIVATE = {n: hashlib.sha256(b"machines " + n.encode()).digest() for n in NAMES}
PUBLIC = {n: box_public_key(k) for n, k in PRIVATE.items()}
CTX = RoundContext(b"fed", 2, R, NAMES, SecAggConfig())
X = np.linspace(-1, 1, 10, dtype=np.float32)


def sender(name: str = "a") -> MaskingSender:
    return MaskingSender(CTX, keys=PairKeys(name, PRIVATE[name], PUBLIC))


def started() -> AggregatingReceiver:
    receiver = AggregatingReceiver(CTX, dim=10, timeouts=Timeouts(1, 1, 1))
    receiver.start(0.0)
    return receiver


def share_all(receiver: AggregatingReceiver) -> tuple[dict[str, MaskingSender], list[Send]]:
    senders = {n: sender(n) for n in NAMES}
    relays: list[Send] = []
    for n, s in senders.items():
        (out,) = s.share(hashlib.sha256(n.encode()).digest())
        relays += [o for o in receiver.receive(n, out.message, 0.0) if isinstance(o, Send)]
    return senders, relays


def test_sender_phases_follow_the_table() -> None:
    s = sender()
    assert s.phase is Phase.ADVERTISE
    with pytest.raises(LocalProtocolError, match="32 fresh random bytes"):
        s.share(b"too short")
    s.share(bytes(32))
    assert s.phase is Phase.SHARE
    with pytest.raises(LocalProtocolError, match="cannot go from SHARE to SHARE"):
        s.share(bytes(32))
    assert s.set_input(X, 0.5) == []  # kept until the roster is known
    with pytest.raises(LocalProtocolError, match="already given"):
        s.set_input(X, 0.5)


def test_sender_masks_as_soon_as_both_input_and_roster_are_in() -> None:
    receiver = started()
    senders, relays = share_all(receiver)
    relay_a = next(r for r in relays if r.peer == "a")
    senders["a"].set_input(X, 0.5)
    (out,) = senders["a"].receive(R, relay_a.message)
    assert isinstance(out.message, MaskedInput) and senders["a"].phase is Phase.UNMASK


def test_sender_drops_a_replayed_relay_quietly_and_refuses_a_different_one() -> None:
    receiver = started()
    senders, relays = share_all(receiver)
    relay_a = next(r for r in relays if r.peer == "a").message
    senders["a"].set_input(X, 0.5)
    senders["a"].receive(R, relay_a)
    assert senders["a"].receive(R, relay_a) == []  # a reconnection replays it: no fault
    assert senders["a"].phase is Phase.UNMASK
    other = dataclasses.replace(relay_a, roster=relay_a.roster[:2])
    with pytest.raises(PeerProtocolError, match="share relay unexpected in phase UNMASK"):
        senders["a"].receive(R, other)


def test_sender_refuses_strangers_and_out_of_order_messages() -> None:
    s = sender()
    with pytest.raises(PeerProtocolError, match="only receiver") as info:
        s.receive("b", Abandon(2, R, "x"))
    assert info.value.peer == "b"
    s.share(bytes(32))
    with pytest.raises(PeerProtocolError, match="declared a survivor in phase SHARE"):
        s.receive(R, DropoutDeclaration(2, R, NAMES, ()))
    with pytest.raises(PeerProtocolError, match="does not accept Reveal"):
        s.receive(R, Reveal(2, R, "a", {}, {}))


def test_abandon_ends_the_sender_and_later_calls_are_ignored() -> None:
    s = sender()
    s.share(bytes(32))
    assert s.receive(R, Abandon(2, R, "too few")) == []
    assert s.phase is Phase.ABANDONED and s.holder.abandoned
    assert s.set_input(X, 0.5) == []
    assert s.receive(R, DropoutDeclaration(2, R, NAMES, ())) == []


def test_receiver_must_be_started_and_refuses_misrouted_or_forged_messages() -> None:
    receiver = AggregatingReceiver(CTX, dim=10)
    keys = ShareKeys(2, R, "a", {})
    with pytest.raises(LocalProtocolError, match="start"):
        receiver.receive("a", keys, 0.0)
    receiver.start(0.0)
    with pytest.raises(PeerProtocolError, match="claims to come from 'a'"):
        receiver.receive("b", keys, 0.0)
    with pytest.raises(PeerProtocolError, match="another round"):
        receiver.receive("a", ShareKeys(3, R, "a", {}), 0.0)
    with pytest.raises(PeerProtocolError, match="not a neighbour"):
        receiver.receive("z", ShareKeys(2, R, "z", {}), 0.0)
    with pytest.raises(PeerProtocolError, match="every neighbour"):
        receiver.receive("a", keys, 0.0)
    with pytest.raises(PeerProtocolError, match="does not accept ShareRelay"):
        receiver.receive("a", ShareRelay(2, R, "a", (), {}), 0.0)


def test_receiver_refuses_duplicates_and_wrong_sizes() -> None:
    receiver = started()
    senders, relays = share_all(receiver)
    assert receiver.phase is Phase.MASKED and len(relays) == 3
    with pytest.raises(PeerProtocolError, match="10 words of 32 bits"):
        receiver.receive("a", MaskedInput(2, R, "a", np.zeros(9, dtype="<u4")), 0.0)
    senders["a"].receive(R, next(r for r in relays if r.peer == "a").message)
    (out,) = senders["a"].set_input(X, 0.5)
    receiver.receive("a", out.message, 0.0)
    (resent,) = receiver.receive("a", out.message, 0.0)  # a reconnection replays it
    assert isinstance(resent, Ignored) and "resent" in resent.reason
    other = dataclasses.replace(out.message, codes=out.message.codes + np.uint32(1))
    with pytest.raises(PeerProtocolError, match="two different masked inputs"):
        receiver.receive("a", other, 0.0)


def test_receiver_deadlines_come_from_now() -> None:
    receiver = started()
    assert receiver.deadline == 1.0
    assert receiver.tick(0.5) == []
    events = receiver.tick(1.0)  # nobody shared: abandoned, everyone told
    assert receiver.phase is Phase.ABANDONED and receiver.deadline is None
    assert {e.peer for e in events if isinstance(e, Send)} == set(NAMES)

"""The Ed25519 challenge-response: who gets in, who is refused, and the rate limiter.

The protocol tests drive ``Handshake`` objects by hand (no event loop); the
end-to-end tests run the same refusals over the memory and wss transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import msgpack
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.transport import (
    AuthenticationFailed,
    Authenticator,
    Connection,
    MemoryNetwork,
    RateLimited,
    RateLimiter,
    Refusal,
    Transport,
    WsTransport,
    make_self_signed,
)
from p2pfl.transport.handshake import INITIATOR, RESPONDER, Handshake, transcript
from protocols.records import node_id_for


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


def nid(n: int) -> str:
    return node_id_for(bytes(key(n).verify_key))


class Ledger:
    """A stand-in for the federation ledger: node id -> verify key, revocable."""

    def __init__(self, *members: int) -> None:
        self.keys = {nid(n): bytes(key(n).verify_key) for n in members}

    def __call__(self, node_id: str) -> bytes | None:
        return self.keys.get(node_id)

    def revoke(self, n: int) -> None:
        del self.keys[nid(n)]

    def admit(self, n: int) -> None:
        self.keys[nid(n)] = bytes(key(n).verify_key)


def proof(signature: bytes) -> bytes:
    return msgpack.packb({"t": "proof", "sig": bytes(signature)})


def nonce(n: int) -> bytes:
    return bytes([n]) * 32


def pair(
    ledger: Callable[[str], bytes | None],
    *,
    i: int = 1,
    r: int = 2,
    nonces: tuple[int, int] = (10, 20),
    bindings: tuple[bytes, bytes] = (b"", b""),
    expected: str | None = None,
) -> tuple[Handshake, Handshake]:
    initiator = Handshake(
        key(i),
        ledger,
        initiator=True,
        nonce=nonce(nonces[0]),
        binding=bindings[0],
        expected_peer=expected,
    )
    responder = Handshake(
        key(r), ledger, initiator=False, nonce=nonce(nonces[1]), binding=bindings[1]
    )
    return initiator, responder


def run(initiator: Handshake, responder: Handshake) -> tuple[str, str]:
    """Both ends in lock step, as they run over a link; the peer ids each learned."""
    i_hello, r_hello = initiator.hello(), responder.hello()
    i_proof, r_proof = initiator.receive_hello(r_hello), responder.receive_hello(i_hello)
    i_ok, r_ok = initiator.receive_proof(r_proof), responder.receive_proof(i_proof)
    return initiator.receive_verdict(r_ok), responder.receive_verdict(i_ok)


# -- the protocol, sans I/O ---------------------------------------------------------------


def test_members_authenticate_each_other_both_ways() -> None:
    ledger = Ledger(1, 2)
    assert run(*pair(ledger)) == (nid(2), nid(1))
    assert run(*pair(ledger, i=2, r=1)) == (nid(1), nid(2))
    assert run(*pair(ledger, bindings=(b"tls-unique:x", b"tls-unique:x"))) == (nid(2), nid(1))


def test_a_non_member_is_refused_before_it_sees_a_signature() -> None:
    initiator, responder = pair(Ledger(2))  # 1 is not in the responder's ledger
    with pytest.raises(AuthenticationFailed) as refused:
        responder.receive_hello(initiator.hello())
    assert (refused.value.code, refused.value.peer) == ("not-member", nid(1))
    assert nid(1) in str(refused.value) and "not a member" in str(refused.value)


def test_a_revoked_member_is_refused() -> None:
    ledger = Ledger(1, 2)
    run(*pair(ledger))
    ledger.revoke(1)
    initiator, responder = pair(ledger)
    with pytest.raises(AuthenticationFailed, match="revoked") as refused:
        responder.receive_hello(initiator.hello())
    assert refused.value.code == "not-member"


def test_a_wrong_signature_is_refused() -> None:
    initiator, responder = pair(Ledger(1, 2))
    responder.receive_hello(initiator.hello())
    genuine = msgpack.unpackb(initiator.receive_hello(responder.hello()))["sig"]
    forged = bytes(key(3).sign(b"anything").signature)
    for signature in (forged, genuine[:-1] + bytes([genuine[-1] ^ 1]), b"short"):
        with pytest.raises(AuthenticationFailed) as refused:
            responder.receive_proof(proof(signature))
        assert (refused.value.code, refused.value.peer) == ("bad-signature", nid(1))


def test_an_impostor_claiming_a_members_id_is_refused() -> None:
    """Node 3 says it is node 1; it cannot sign as node 1."""
    ledger = Ledger(1, 2)
    responder = Handshake(key(2), ledger, initiator=False, nonce=nonce(20))
    hello = {"t": "hello", "v": 1, "id": nid(1), "nonce": nonce(10)}
    responder.receive_hello(msgpack.packb(hello))
    signed = transcript(INITIATOR, nonce(10), nonce(20), nid(1), nid(2), b"")
    with pytest.raises(AuthenticationFailed, match="bad-signature"):
        responder.receive_proof(proof(key(3).sign(signed).signature))


def test_a_proof_replayed_from_another_link_is_refused() -> None:
    ledger = Ledger(1, 2)
    first_i, first_r = pair(ledger, nonces=(10, 20))
    recorded_hello = first_i.hello()
    recorded_proof = first_i.receive_hello(first_r.hello())
    first_r.receive_hello(recorded_hello)
    first_r.receive_proof(recorded_proof)  # genuine on its own link
    # An eavesdropper replays node 1's hello and proof to node 2 on a new link:
    second_r = Handshake(key(2), ledger, initiator=False, nonce=nonce(21))
    second_r.receive_hello(recorded_hello)
    with pytest.raises(AuthenticationFailed, match="bad-signature"):
        second_r.receive_proof(recorded_proof)


def test_the_signers_role_is_signed() -> None:
    """A signature node 1 made as responder is no proof of it as initiator (no reflection)."""
    fields = (nonce(10), nonce(20), nid(1), nid(2), b"")
    for role, accepted in ((INITIATOR, True), (RESPONDER, False)):
        initiator, responder = pair(Ledger(1, 2))
        responder.receive_hello(initiator.hello())
        signature = key(1).sign(transcript(role, *fields)).signature
        if accepted:
            responder.receive_proof(proof(signature))
        else:
            with pytest.raises(AuthenticationFailed, match="bad-signature"):
                responder.receive_proof(proof(signature))


def test_a_different_channel_binding_fails_both_ways() -> None:
    """A man in the middle holding two TLS sessions sees two bindings: nothing verifies."""
    initiator, responder = pair(Ledger(1, 2), bindings=(b"tls-unique:A", b"tls-unique:B"))
    i_hello, r_hello = initiator.hello(), responder.hello()
    i_proof, r_proof = initiator.receive_hello(r_hello), responder.receive_hello(i_hello)
    for end, peer_proof in ((initiator, r_proof), (responder, i_proof)):
        with pytest.raises(AuthenticationFailed, match="bad-signature"):
            end.receive_proof(peer_proof)


def test_a_dialer_refuses_an_unexpected_peer() -> None:
    initiator, responder = pair(Ledger(1, 2, 3), r=3, expected=nid(2))
    with pytest.raises(AuthenticationFailed) as refused:
        initiator.receive_hello(responder.hello())
    assert refused.value.code == "unexpected-peer" and refused.value.peer == nid(3)


def test_own_nonce_or_own_id_coming_back_is_refused() -> None:
    ledger = Ledger(1, 2)
    initiator, _ = pair(ledger)
    with pytest.raises(AuthenticationFailed, match="malformed"):
        initiator.receive_hello(initiator.hello())
    twin = Handshake(key(1), ledger, initiator=False, nonce=nonce(99))
    with pytest.raises(AuthenticationFailed, match="self"):
        initiator.receive_hello(twin.hello())


def test_a_ledger_key_that_does_not_match_the_id_is_refused() -> None:
    ledger = Ledger(1, 2)
    ledger.keys[nid(1)] = bytes(key(3).verify_key)
    initiator, responder = pair(ledger)
    with pytest.raises(AuthenticationFailed, match="bad-key"):
        responder.receive_hello(initiator.hello())


def test_a_refusal_from_the_peer_is_reported_as_theirs() -> None:
    initiator, _ = pair(Ledger(1, 2))
    refusal = msgpack.packb({"t": "refused", "code": "not-member", "reason": "who are you"})
    with pytest.raises(AuthenticationFailed, match="the peer refused us") as refused:
        initiator.receive_hello(refusal)
    assert refused.value.by_peer and refused.value.code == "not-member"
    limited = msgpack.packb({"t": "refused", "code": "rate-limited", "reason": "later"})
    with pytest.raises(RateLimited):
        initiator.receive_hello(limited)


@given(st.binary(max_size=2000))
def test_any_bytes_either_pass_or_raise_authentication_failed(data: bytes) -> None:
    for step in ("receive_hello", "receive_proof"):
        initiator, responder = pair(Ledger(1, 2))
        if step == "receive_proof":
            responder.receive_hello(initiator.hello())
        with contextlib.suppress(AuthenticationFailed):
            getattr(responder, step)(data)


# -- the rate limiter ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_trips_after_burst_failures_and_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, refill_per_second=0.5, clock=clock)
    assert [limiter.record_failure("10.0.0.9") for _ in range(3)] == [False, False, True]
    assert not limiter.allowed("10.0.0.9")
    assert limiter.allowed("10.0.0.10")  # per address
    clock.now += 1.9
    assert not limiter.allowed("10.0.0.9")
    clock.now += 0.1  # two seconds: one token back
    assert limiter.allowed("10.0.0.9")
    assert limiter.record_failure("10.0.0.9")
    clock.now += 60
    assert limiter.tokens("10.0.0.9") == 3


def test_rate_limiter_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=2, refill_per_second=1.0, clock=clock, max_addresses=3)
    for n in range(10):
        limiter.record_failure(f"10.0.0.{n}")
    assert len(limiter._buckets) == 3
    assert limiter.allowed("10.0.0.0")  # forgotten, the oldest


# -- over real transports -----------------------------------------------------------------


async def _serve_and_dial(
    listener: Transport, dialer: Transport, address: str, expected: str | None = None
) -> tuple[Connection | None, Exception | None]:
    accepted: list[Connection] = []

    async def handler(connection: Connection) -> None:
        accepted.append(connection)

    bound = await listener.listen(address, handler)
    try:
        await dialer.connect(bound, expected_peer=expected)
    except AuthenticationFailed as exc:
        return None, exc
    return (accepted[0] if accepted else None), None


@pytest.fixture(params=["memory", "wss"])
def transports(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[Authenticator, Authenticator], tuple[Transport, Transport, str]]:
    def make(listener: Authenticator, dialer: Authenticator) -> tuple[Transport, Transport, str]:
        if request.param == "memory":
            network = MemoryNetwork()
            return network.transport(listener), network.transport(dialer), "node"
        tls = make_self_signed(tmp_path / "tls")
        return WsTransport(listener, tls=tls), WsTransport(dialer, tls=tls), "127.0.0.1:0"

    return make


def test_a_non_member_is_refused_logged_and_reported_over_the_wire(
    transports: Callable[..., tuple[Transport, Transport, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals: list[Refusal] = []
    ledger = Ledger(2)  # the listener knows only itself

    async def main() -> Exception | None:
        listener_auth = Authenticator(key(2), ledger, on_refusal=refusals.append)
        listener, dialer, address = transports(listener_auth, Authenticator(key(1), Ledger(1, 2)))
        async with listener, dialer:
            _, error = await _serve_and_dial(listener, dialer, address)
        return error

    with caplog.at_level(logging.WARNING, logger="p2pfl.transport.handshake"):
        error = asyncio.run(main())
    assert isinstance(error, AuthenticationFailed) and error.by_peer
    assert error.code == "not-member"
    assert [(r.peer, r.code, r.inbound) for r in refusals] == [(nid(1), "not-member", True)]
    assert "refused link from" in caplog.text and nid(1) in caplog.text


def test_repeated_failures_from_one_address_are_rate_limited(
    transports: Callable[..., tuple[Transport, Transport, str]],
) -> None:
    clock = Clock()
    refusals: list[Refusal] = []

    async def main() -> list[str]:
        limiter = RateLimiter(burst=2, refill_per_second=0.01, clock=clock)
        ledger = Ledger(2)
        listener_auth = Authenticator(key(2), ledger, limiter=limiter, on_refusal=refusals.append)
        listener, dialer, address = transports(listener_auth, Authenticator(key(1), Ledger(1, 2)))
        codes = []
        async with listener, dialer:
            accepted: list[Connection] = []

            async def handler(connection: Connection) -> None:
                accepted.append(connection)

            bound = await listener.listen(address, handler)
            for _ in range(3):
                with pytest.raises(AuthenticationFailed) as refused:
                    await dialer.connect(bound)
                codes.append(refused.value.code)
            assert isinstance(refused.value, RateLimited)
            ledger.admit(1)
            # A member proves its key on probation: a blocked address does not lock it out.
            link = await dialer.connect(bound)
            assert link.peer_id == nid(2)
        return codes

    assert asyncio.run(main()) == ["not-member", "not-member", "rate-limited"]
    assert [r.code for r in refusals] == ["not-member", "not-member", "rate-limited"]


def test_a_banned_member_is_refused_before_a_signature() -> None:
    banned = {nid(1)}
    initiator = Handshake(key(1), Ledger(2), initiator=True, nonce=nonce(1))
    responder = Handshake(
        key(2), Ledger(1), initiator=False, nonce=nonce(2), banned=banned.__contains__
    )
    with pytest.raises(AuthenticationFailed) as refused:
        responder.receive_hello(initiator.hello())
    assert refused.value.code == "banned"
    banned.clear()
    assert run(initiator, responder) == (nid(2), nid(1))


class Blocked(RateLimiter):
    """A limiter that has run out of tokens for every address."""

    def allowed(self, address: str) -> bool:
        return False


def test_probation_handshakes_are_capped_and_their_failures_look_rate_limited() -> None:
    async def main() -> list[str]:
        listener_auth = Authenticator(key(2), Ledger(1, 2), limiter=Blocked(), max_probation=1)
        network = MemoryNetwork()
        listener, stranger = (
            network.transport(listener_auth),
            network.transport(Authenticator(key(3), Ledger(2))),
        )
        async with listener, stranger:

            async def handler(connection: Connection) -> None:
                await asyncio.sleep(0)

            bound = await listener.listen("node", handler)
            listener_auth.on_probation = 1  # one handshake on probation under way
            codes = []
            with pytest.raises(RateLimited) as refused:
                await stranger.connect(bound)
            codes.append(refused.value.code)
            listener_auth.on_probation = 0
            with pytest.raises(RateLimited) as refused:  # on probation: refused as before
                await stranger.connect(bound)
            codes.append(refused.value.code)
            async with network.transport(Authenticator(key(1), Ledger(2))) as member:
                link = await member.connect(bound)  # a member proves its key and gets in
                assert link.peer_id == nid(2) and listener_auth.on_probation == 0
        return codes

    assert asyncio.run(main()) == ["rate-limited", "rate-limited"]

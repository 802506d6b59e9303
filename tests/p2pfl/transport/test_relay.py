"""Relayed links (``p2pfl.transport.relay``): a splice through a third member, sealed end to end.

Two ends that do not listen dial a relay (memory transport), ask to be spliced
to each other, then run the handshake and session through it. The transport
conformance suite runs over such a pair; the rest checks what the relay can
and cannot do: it sees sealed bytes only, a relay swapping in its own session
keys fails both ends' handshakes, an altered or dropped message closes the
link, and requests it is not meant to serve are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_transport import (
    MiB,
    Pair,
    check_backpressure,
    check_close_by_dialer,
    check_close_by_listener,
    check_close_wakes_a_waiting_reader,
    check_concurrent_both_ways,
    check_large_round_trip,
    check_receiver_enforces_max_size,
    check_sender_enforces_max_size,
    check_small_round_trip,
    members,
    node_id,
    signing_key,
)

from p2pfl.transport import (
    AuthenticationFailed,
    Authenticator,
    Connection,
    MemoryNetwork,
    TransportClosed,
    WsTransport,
)
from p2pfl.transport.base import LINK, RELAY
from p2pfl.transport.errors import RelayRefused
from p2pfl.transport.relay import TAG_SIZE, Splice, Splicer, open_relayed

A, B, R, STRANGER = (node_id(signing_key(n)) for n in (1, 2, 3, 4))


def pair_only(end: str, peer: str) -> tuple[str, str] | None:
    """The relay's rule in these tests: it serves A <-> B and nothing else."""
    if {end, peer} == {A, B}:
        return None
    if peer == STRANGER:
        return ("not-member", "not a member of the federation")
    return ("not-assigned", "this relay does not relay that pair")


@contextlib.asynccontextmanager
async def relayed(
    splicer: Splicer | None = None,
    *,
    max_message_size: int = 256 * MiB,
    listener_max_message_size: int | None = None,
) -> AsyncIterator[tuple[Pair, Splicer, Callable[..., Awaitable[Connection]]]]:
    """A (dialer) and B (listener) spliced by R; also a function dialling R as anyone."""
    network = MemoryNetwork()
    ledger = members(*(signing_key(n) for n in (1, 2, 3, 4)))
    auths = {n: Authenticator(signing_key(n), ledger) for n in (1, 2, 3, 4)}
    limits = {1: max_message_size, 2: listener_max_message_size or max_message_size}
    limits[3] = max(limits.values())
    transports = {
        n: network.transport(auths[n], max_message_size=limits.get(n, MiB) + TAG_SIZE)
        for n in (1, 2, 3, 4)
    }
    splicer = splicer or Splicer(pair_only)

    async def dial(n: int, purpose: str = RELAY) -> Connection:
        return await transports[n].connect("relay", expected_peer=R, purpose=purpose)

    async def end(n: int, peer: str) -> Connection:
        return await open_relayed(await dial(n), auths[n], peer=peer, wait=30.0)

    async with contextlib.AsyncExitStack() as stack:
        for transport in transports.values():
            await stack.enter_async_context(transport)
        await transports[3].listen("relay", splicer.serve)
        ends = await asyncio.gather(end(1, B), end(2, A), return_exceptions=True)
        errors = [e for e in ends if isinstance(e, BaseException)]
        if errors:
            raise BaseExceptionGroup("the relayed pair did not come up", errors)
        dialer, listener = ends
        assert isinstance(dialer, Connection) and isinstance(listener, Connection)
        yield Pair(dialer, listener, transports[1], transports[2], asyncio.Event()), splicer, dial


def relay_pair_factory() -> Callable[..., contextlib.AbstractAsyncContextManager[Pair]]:
    @contextlib.asynccontextmanager
    async def make_pair(
        max_message_size: int = 256 * MiB, listener_max_message_size: int | None = None
    ) -> AsyncIterator[Pair]:
        async with relayed(
            max_message_size=max_message_size, listener_max_message_size=listener_max_message_size
        ) as (pair, _, _):
            yield pair

    return make_pair


CHECKS = [
    check_small_round_trip,
    check_large_round_trip,
    check_concurrent_both_ways,
    check_sender_enforces_max_size,
    check_receiver_enforces_max_size,
    check_close_by_dialer,
    check_close_by_listener,
    check_close_wakes_a_waiting_reader,
    check_backpressure,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_a_relayed_link_keeps_the_transport_contract(check: Any) -> None:
    asyncio.run(check(relay_pair_factory()))


# -- what the relay sees ----------------------------------------------------------------------


class Recording(Splicer):
    """A relay that keeps every message it forwards."""

    def __init__(self) -> None:
        super().__init__(pair_only)
        self.seen: list[bytes] = []

    async def _pump(self, splice: Splice, source: Connection, sink: Connection) -> None:  # type: ignore[override]
        with contextlib.suppress(TransportClosed):
            while True:
                message = bytes(await source.recv())
                self.seen.append(message)
                await sink.send(message)


def test_the_relay_forwards_the_handshake_but_reads_no_message() -> None:
    secret = b"model delta: the weights of site A " * 30

    async def main() -> None:
        recording = Recording()
        async with relayed(recording) as (pair, splicer, _):
            assert (pair.dialer.peer_id, pair.listener.peer_id) == (B, A)
            assert list(splicer.splices) == [tuple(sorted((A, B)))]
            await pair.dialer.send(secret)
            assert await pair.listener.recv() == secret
            await pair.listener.send(secret[::-1])
            assert await pair.dialer.recv() == secret[::-1]
        seen = b"".join(recording.seen)
        assert A.encode() in seen and B.encode() in seen  # the handshake's hellos went through it
        assert secret[:20] not in seen and secret[::-1][:20] not in seen
        sealed = [m for m in recording.seen if len(m) == len(secret) + TAG_SIZE]
        assert len(sealed) == 2  # the two messages, sealed: sizes are all it learns of them

    asyncio.run(main())


class SwappingKeys(Splicer):
    """A relay in the middle that replaces each end's session key with one of its own."""

    def __init__(self) -> None:
        super().__init__(pair_only)
        self.swapped = 0

    async def _pump(self, splice: Splice, source: Connection, sink: Connection) -> None:  # type: ignore[override]
        with contextlib.suppress(TransportClosed):
            while True:
                message = bytes(await source.recv())
                with contextlib.suppress(ValueError, msgpack.UnpackException):
                    decoded = msgpack.unpackb(message)
                    if isinstance(decoded, dict) and decoded.get("t") == "e2e":
                        own = X25519PrivateKey.generate().public_key()
                        decoded["key"] = own.public_bytes(
                            serialization.Encoding.Raw, serialization.PublicFormat.Raw
                        )
                        message = msgpack.packb(decoded, use_bin_type=True)
                        self.swapped += 1
                await sink.send(message)


def test_a_relay_that_swaps_in_its_own_session_keys_fails_both_handshakes() -> None:
    async def main() -> None:
        swapping = SwappingKeys()
        with pytest.raises(ExceptionGroup) as info:
            async with relayed(swapping):
                pytest.fail("a link came up through a relay in the middle")
        errors = info.value.exceptions
        assert swapping.swapped == 2
        assert errors and all(isinstance(e, AuthenticationFailed) for e in errors), errors
        assert any(e.code == "bad-signature" for e in errors)  # type: ignore[attr-defined]

    asyncio.run(main())


class Altering(Splicer):
    """A relay that flips a bit of, or drops, the ``nth`` message after the handshake."""

    def __init__(self, nth: int, *, drop: bool) -> None:
        super().__init__(pair_only)
        self.nth, self.drop = nth, drop
        self.count = 0

    async def _pump(self, splice: Splice, source: Connection, sink: Connection) -> None:  # type: ignore[override]
        with contextlib.suppress(TransportClosed):
            while True:
                message = bytearray(await source.recv())
                if source.peer_id == A:
                    self.count += 1
                    if self.count == self.nth:
                        if self.drop:
                            continue
                        message[-1] ^= 1
                await sink.send(bytes(message))


@pytest.mark.parametrize("drop", [False, True], ids=["altered", "dropped"])
def test_a_message_the_relay_alters_or_drops_closes_the_link(drop: bool) -> None:
    async def main() -> None:
        # A's messages through the relay: key, hello, proof, ok, then the first sealed one
        async with relayed(Altering(6, drop=drop)) as (pair, _, _):
            await pair.dialer.send(b"first")
            assert await pair.listener.recv() == b"first"
            await pair.dialer.send(b"second")  # altered or dropped
            await pair.dialer.send(b"third")
            with pytest.raises(TransportClosed, match="did not open"):
                await pair.listener.recv()
            with pytest.raises(TransportClosed):
                await pair.dialer.recv()  # the relay closed A's side when B's closed

    asyncio.run(main())


# -- refusals ---------------------------------------------------------------------------------


def test_pairs_not_assigned_to_the_relay_and_strangers_are_refused() -> None:
    async def main() -> None:
        async with relayed() as (pair, splicer, dial):
            auth4 = Authenticator(signing_key(4), members(*(signing_key(n) for n in (1, 2, 3, 4))))
            with pytest.raises(RelayRefused, match="not-assigned") as info:
                await open_relayed(await dial(4), auth4, peer=A, wait=30.0)
            assert info.value.relay == R and info.value.code == "not-assigned"
            auth1 = Authenticator(signing_key(1), members(*(signing_key(n) for n in (1, 2, 3, 4))))
            with pytest.raises(RelayRefused, match="not-member"):
                await open_relayed(await dial(1), auth1, peer=STRANGER, wait=30.0)
            raw = await dial(1)
            await raw.send(b"\x81\xa1t\xa4what")  # a map, not a splice request
            answer = msgpack.unpackb(await raw.recv())
            assert answer["t"] == "refused" and answer["code"] == "malformed"
            with pytest.raises(TransportClosed):
                await raw.recv()  # and the relay closed it
            assert list(splicer.splices) == [tuple(sorted((A, B)))]  # the live splice is intact
            await pair.dialer.send(b"still here")
            assert await pair.listener.recv() == b"still here"

    asyncio.run(main())


def test_an_end_whose_peer_never_comes_gives_up_after_its_wait() -> None:
    async def main() -> None:
        async with relayed() as (pair, splicer, dial):
            await pair.dialer.close()
            auth1 = Authenticator(signing_key(1), members(*(signing_key(n) for n in (1, 2, 3))))
            with pytest.raises(TransportClosed, match="did not ask"):
                await open_relayed(await dial(1), auth1, peer=B, wait=0.05)
            for _ in range(100):  # the relay forgets a request whose end went away
                if not splicer._waiting:
                    break
                await asyncio.sleep(0)
            assert not splicer._waiting

    asyncio.run(main())


def test_a_reconnecting_end_replaces_its_splice() -> None:
    async def main() -> None:
        async with relayed() as (pair, splicer, dial):
            auths = {n: Authenticator(signing_key(n), members(*(signing_key(k) for k in (1, 2, 3))))
                     for n in (1, 2)}  # fmt: skip
            fresh = await asyncio.gather(
                open_relayed(await dial(1), auths[1], peer=B, wait=30.0),
                open_relayed(await dial(2), auths[2], peer=A, wait=30.0),
            )
            with pytest.raises(TransportClosed):
                await pair.listener.recv()  # the old splice was closed
            await fresh[0].send(b"new")
            assert await fresh[1].recv() == b"new"
            assert len(splicer.splices) == 1

    asyncio.run(main())


def test_the_splicer_says_when_a_splice_ends() -> None:
    """A relay done with its own run waits for the links it carries: it must hear them end."""
    ended: list[int] = []

    async def main() -> None:
        splicer = Splicer(pair_only, ended=lambda: ended.append(len(splicer.splices)))
        async with relayed(splicer) as (pair, _, _):
            assert len(splicer.splices) == 1 and not ended
            await pair.dialer.close()  # one end leaves
            async with asyncio.timeout(10):
                while not ended:
                    await asyncio.sleep(0.01)
        assert ended == [0]  # told once, after the splice was forgotten

    asyncio.run(main())


def test_a_websocket_listener_tells_relay_requests_from_links() -> None:
    async def main() -> None:
        ledger = members(signing_key(1), signing_key(2))
        seen: list[str] = []

        async def handler(conn: Connection) -> None:
            seen.append(conn.purpose)

        async with (
            WsTransport(Authenticator(signing_key(1), ledger), insecure=True) as listener,
            WsTransport(Authenticator(signing_key(2), ledger), insecure=True) as dialer,
        ):
            address = await listener.listen("ws://127.0.0.1:0", handler)
            for purpose in (LINK, RELAY):
                conn = await dialer.connect(address, expected_peer=A, purpose=purpose)
                await conn.wait_closed()  # the handler returned: the listener closed it
        assert seen == [LINK, RELAY]

    asyncio.run(main())

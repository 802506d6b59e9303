"""The dial loop: which backoff a failed dial waits on, and when it stops.

A fake transport refuses the dials as scripted; the delay generators record
which of them the loop drew from, and its sleeps are recorded and return at once,
so nothing here waits on the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from p2pfl.node.links import FIRST_CONTACT_RETRY, FIRST_CONTACT_WINDOW, LinkManager
from p2pfl.transport import AuthenticationFailed

PEER = "z" * 26  # larger than ME: we dial
ME = "a" * 26


class ScriptedTransport:
    """``connect`` raises the scripted errors in turn, then ends the test."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.done = asyncio.Event()

    async def connect(self, address: str, *, expected_peer: str | None = None) -> Any:
        if self.errors:
            raise self.errors.pop(0)
        self.done.set()
        await asyncio.Event().wait()  # the test cancels the loop here


def drawn(log: list[str], name: str, delay: float) -> Iterator[float]:
    while True:
        log.append(name)
        yield delay


async def dial(
    errors: list[Exception], delay: float = 0.0, slept: list[float] | None = None
) -> list[str]:
    """Run a dial loop through ``errors``; which generators it drew from, in order.

    Its sleeps are recorded in ``slept`` and return at once.
    """
    log: list[str] = []
    transport = ScriptedTransport(errors)

    async def sleep(seconds: float) -> None:
        if slept is not None:
            slept.append(seconds)

    links = LinkManager(
        ME,
        transport,  # type: ignore[arg-type]
        on_frame=lambda peer, frame: None,
        on_up=lambda peer: [],
        on_down=lambda peer, reason: None,
        delays=lambda: drawn(log, "backoff", delay),
        stranger_delays=lambda: drawn(log, "stranger", delay),
        sleep=sleep,
    )
    links.add_neighbour(PEER, "memory://z")
    task = asyncio.create_task(links.dial_loop(PEER))
    async with asyncio.timeout(10):
        await transport.done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return log


def test_a_peer_that_does_not_know_us_yet_is_retried_on_the_stranger_backoff() -> None:
    stranger = AuthenticationFailed(PEER, "not-member", "not a member", by_peer=True)
    other = AuthenticationFailed(PEER, "bad-signature", "no", by_peer=True)
    ours = AuthenticationFailed(PEER, "not-member", "we refused it", by_peer=False)
    log = asyncio.run(dial([stranger, OSError("refused"), other, stranger, ours]))
    assert log == ["stranger", "backoff", "backoff", "stranger", "backoff"]


def test_a_peer_never_reached_is_retried_often_for_a_while_then_on_the_backoff() -> None:
    slept: list[float] = []
    quick = int(FIRST_CONTACT_WINDOW / FIRST_CONTACT_RETRY)
    stranger = AuthenticationFailed(PEER, "not-member", "not a member", by_peer=True)
    errors: list[Exception] = [OSError("refused")] * (quick + 2)
    asyncio.run(dial([stranger, *errors], delay=4.0, slept=slept))
    # A stranger's refusal keeps its own backoff; the peer's port not open yet does not.
    assert slept == [4.0] + [FIRST_CONTACT_RETRY] * quick + [4.0, 4.0]


class OneLink:
    """A transport whose first dial returns ``conn``; a second one never returns."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.dials: list[str] = []

    async def connect(self, address: str, *, expected_peer: str | None = None) -> Any:
        self.dials.append(address)
        if len(self.dials) > 1:
            await asyncio.Event().wait()  # dialling on: the test fails below
        return self.conn


def one_link_manager(transport: OneLink, hello: list[bytes]) -> LinkManager:
    """Links to PEER over ``transport``, sending ``hello`` first, on a zero backoff."""
    links = LinkManager(
        ME,
        transport,  # type: ignore[arg-type]
        on_frame=lambda peer, frame: None,
        on_up=lambda peer: list(hello),
        on_down=lambda peer, reason: None,
        delays=lambda: drawn([], "backoff", 0.0),
    )
    links.add_neighbour(PEER, "memory://z")
    return links


class SlowToStop:
    """A link that ends at once (the peer closed) while its writer takes a moment to stop.

    ``send`` blocks; cancelled (the link's cleanup stops the writer), it signals
    ``stopping`` and waits for ``release`` before it lets the cancellation through.
    """

    peer_id = PEER
    remote_address = "memory://z"
    max_message_size = 1 << 20

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.release = asyncio.Event()
        self.ended = asyncio.Event()

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stopping.set()
            await self.release.wait()
            raise

    async def recv(self) -> bytes:
        await self.ended.wait()
        from p2pfl.transport import TransportClosed

        raise TransportClosed("closed by the peer")

    async def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None


def test_a_dial_loop_cancelled_while_its_link_cleans_up_stops() -> None:
    """The node's stop cancels a dial loop while ``serve`` awaits the link's writer: that
    await swallowed the cancellation with the writer's own, and the loop dialled on
    forever (a daemon that never exited after its rounds)."""
    conn = SlowToStop()
    transport = OneLink(conn)
    dials = transport.dials

    async def main() -> None:
        links = one_link_manager(transport, [b"hello"])  # the writer blocks sending it
        task = asyncio.create_task(links.dial_loop(PEER))
        async with asyncio.timeout(10):
            while not dials:
                await asyncio.sleep(0)
            conn.ended.set()  # the link ends: serve's cleanup cancels the writer
            await conn.stopping.wait()
        task.cancel()  # the node stops, while serve awaits the writer
        await asyncio.sleep(0)
        conn.release.set()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await task
        assert dials == ["memory://z"]

    asyncio.run(main())


class HeldOpen:
    """A link that stays up until the test ends it, as the peer would by closing it."""

    peer_id = PEER
    remote_address = "memory://z"
    max_message_size = 1 << 20

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.closed = False

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        return None

    async def recv(self) -> bytes:
        await self.ended.wait()
        from p2pfl.transport import TransportClosed

        raise TransportClosed("closed by the peer")

    async def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


def test_a_retired_peers_live_link_stays_up_until_it_ends_then_the_loop_stops() -> None:
    """A member that left lingers until its neighbours confirm its last records and then
    closes its links: the dialling end cut the link as soon as the member left its epoch,
    and the leaver waited out its whole linger for a confirmation that could not come."""
    conn = HeldOpen()
    transport = OneLink(conn)
    dials = transport.dials

    async def main() -> None:
        links = one_link_manager(transport, [])
        assert not links.retire(PEER)  # nothing live yet: the caller cancels the loop
        task = asyncio.create_task(links.dial_loop(PEER))
        async with asyncio.timeout(10):
            while links.link(PEER).session is None:
                await asyncio.sleep(0)
        assert links.retire(PEER)
        for _ in range(20):
            await asyncio.sleep(0)
        assert links.link(PEER).session is not None and not conn.closed  # still up
        conn.ended.set()  # the leaver closes it
        async with asyncio.timeout(10):
            await task  # returns: no cancellation, no second dial
        assert dials == ["memory://z"] and conn.closed

    asyncio.run(main())


def test_a_peer_wanted_again_is_dialled_on() -> None:
    links = one_link_manager(OneLink(HeldOpen()), [])
    links.link(PEER).retired = True
    assert not links.add_neighbour(PEER, "memory://z").retired

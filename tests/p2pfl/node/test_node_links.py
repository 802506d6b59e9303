"""The dial loop: which backoff a failed dial waits on, and that it ends when cancelled.

A fake transport refuses the dials as scripted; the delay generators record
which of them the loop drew from, and its sleeps are recorded and return at once,
so nothing here waits on the clock. Every wait is on an event the fakes set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from p2pfl.node.links import FIRST_CONTACT_RETRY, FIRST_CONTACT_WINDOW, LinkManager
from p2pfl.transport import AuthenticationFailed, TransportClosed

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


class UnwindingConnection:
    """A link the peer closes while our first frame is being sent.

    ``send`` blocks (``sending``); cancelled, it says so (``unwinding``) and gives way
    only once ``release`` is set, as a send that cleans up first does (a websocket's
    closing handshake). ``recv`` ends the link when the peer closes it (``close_by_peer``).
    """

    peer_id = PEER
    remote_address = "memory://z"
    max_message_size = 1 << 20

    def __init__(self) -> None:
        self.sending = asyncio.Event()
        self.close_by_peer = asyncio.Event()
        self.unwinding = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        self.sending.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.unwinding.set()
            await self.release.wait()
            raise

    async def recv(self) -> bytes:
        await self.close_by_peer.wait()
        raise TransportClosed("link closed by the peer")

    async def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class OneLinkTransport:
    def __init__(self, conn: UnwindingConnection) -> None:
        self.conn: UnwindingConnection | None = conn

    async def connect(self, address: str, *, expected_peer: str | None = None) -> Any:
        conn, self.conn = self.conn, None
        if conn is None:
            raise TransportClosed("the transport is closed")
        return conn


def test_a_dial_loop_cancelled_while_its_link_ends_ends_too() -> None:
    """The node stops (cancels the loop) in the moment its peer closes the link.

    The loop is then waiting for the link's writer to unwind; that wait swallowed the
    node's cancellation, and the loop dialled on forever: the node never finished
    closing (a three-peer run hung at its end now and then).
    """
    downs: list[tuple[str, str]] = []

    async def sleep(seconds: float) -> None:
        raise AssertionError("the dial loop went on after it was cancelled")

    async def scenario() -> None:
        conn = UnwindingConnection()
        links = LinkManager(
            ME,
            OneLinkTransport(conn),  # type: ignore[arg-type]
            on_frame=lambda peer, frame: None,
            on_up=lambda peer: [b"ledger sync step 1"],
            on_down=lambda peer, reason: downs.append((peer, reason)),
            delays=lambda: drawn([], "backoff", 0.0),
            sleep=sleep,
        )
        links.add_neighbour(PEER, "memory://z")
        task = asyncio.create_task(links.dial_loop(PEER))
        async with asyncio.timeout(10):
            await conn.sending.wait()
            conn.close_by_peer.set()
            await conn.unwinding.wait()  # the link is ending: its writer unwinds
        task.cancel()  # the node stops right then
        conn.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        link = links.link(PEER)
        assert link.session is None and link.state.value == "down"

    asyncio.run(scenario())
    assert downs == [(PEER, "link closed by the peer")]

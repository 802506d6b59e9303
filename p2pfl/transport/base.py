"""The transport interface: authenticated, ordered, bounded message links between peers.

A ``Transport`` listens and dials; every link it hands out is a ``Connection``
to one peer whose identity was proven by the Ed25519 handshake
(``p2pfl.transport.handshake``) before the application saw a single byte.

The contract every implementation keeps (``tests/p2pfl/transport/test_transport.py``
checks it against each one):

- messages are whole byte strings (``bytes``, or a read-only ``memoryview``
  for a large one), delivered once, in order, per direction;
- a message larger than ``max_message_size`` raises ``MessageTooLarge`` on the
  sender and the link stays usable; a peer that sends one anyway (its limit is
  higher than ours) has the link closed on it, and both ends' next ``recv``
  raises ``TransportClosed`` saying why;
- ``send`` waits while the peer is not reading and the bounded buffers between
  them are full (backpressure): a slow peer makes the sender wait, never
  buffer without limit;
- after either end's ``close``, the other end receives what was sent before it
  and then ``TransportClosed``; the closing end's own ``send`` and ``recv``
  raise ``TransportClosed`` at once;
- one task reads a connection at a time; several tasks may send, and their
  messages do not interleave. Cancelling a ``send`` half way may close the
  link (a websocket cannot take back half a message): close it instead.

Errors say whose fault it is (``p2pfl.transport.errors``): ``MessageTooLarge``
is the caller's misuse, ``AuthenticationFailed`` a refused handshake (ours or
the peer's refusal), ``TransportClosed`` a link that is gone or could not be made.
"""

from __future__ import annotations

import asyncio
import types
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection
from typing import Self

from p2pfl.transport.errors import MessageTooLarge

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "LINK", "RELAY", "Connection", "Handler", "Transport"]

DEFAULT_MAX_MESSAGE_SIZE = 256 << 20

LINK, RELAY = "link", "relay"
"""A connection's purpose: a neighbour's link, or a request to relay one (``transport.relay``).

The dialler names it (``Transport.connect(purpose=)``) and the accepting end's
handler reads it (``Connection.purpose``) before a single message, so a relayed
pair's connections never take the place of a neighbour's link to the relay.
"""


def _bytes_length(message: bytes | bytearray | memoryview) -> int:
    return message.nbytes if isinstance(message, memoryview) else len(message)


class Connection(ABC):
    """One authenticated link to one peer. ``async with`` closes it.

    ``purpose`` is what the dialler opened it for (``LINK`` or ``RELAY``).
    """

    purpose: str = LINK

    @property
    @abstractmethod
    def peer_id(self) -> str:
        """The node id the peer proved it holds the key of."""

    @property
    @abstractmethod
    def remote_address(self) -> str:
        """Where the peer is (for logs): ``host:port`` or a memory address."""

    @property
    @abstractmethod
    def max_message_size(self) -> int:
        """The largest message this end sends or accepts, in bytes."""

    @abstractmethod
    async def send(self, message: bytes | bytearray | memoryview) -> None:
        """Send one whole message; waits while the peer's buffers are full.

        Raises ``MessageTooLarge`` (nothing sent) or ``TransportClosed``.
        """

    @abstractmethod
    async def recv(self) -> bytes | memoryview:
        """The next message; ``TransportClosed`` once the link is gone.

        A large message may come as a read-only ``memoryview`` of the buffer it
        was received into (copying it into ``bytes`` would cost a model-sized
        allocation and copy); it compares equal to the same ``bytes``.
        """

    @abstractmethod
    async def close(self) -> None:
        """Close the link (idempotent); the peer's ``recv`` raises ``TransportClosed``."""

    @abstractmethod
    async def wait_closed(self) -> None:
        """Return once the link is closed, by either end (a handler's way to wait for its end)."""

    def _check_size(self, message: bytes | bytearray | memoryview) -> int:
        """The message's length, or ``MessageTooLarge`` if it is over the limit."""
        size = _bytes_length(message)
        if size > self.max_message_size:
            raise MessageTooLarge(
                f"a message of {size} bytes to {self.peer_id} is over the "
                f"{self.max_message_size}-byte limit"
            )
        return size

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()


Handler = Callable[[Connection], Awaitable[None]]
"""Called with each authenticated incoming link; the link is closed when it returns."""


class Transport(ABC):
    """Listens for and dials authenticated links. ``async with`` closes everything it made.

    The transport owns the tasks running ``Handler``s and every connection it
    handed out: ``close`` stops listening, closes those connections and waits for
    the handlers to return. An exception escaping a handler is logged, not raised.
    """

    @abstractmethod
    async def listen(self, address: str, on_connection: Handler) -> str:
        """Start accepting links at ``address``; returns the address peers should dial.

        (With port 0, the returned address has the port the system chose.)
        """

    @abstractmethod
    async def connect(
        self, address: str, expected_peer: str | None = None, *, purpose: str = LINK
    ) -> Connection:
        """Dial ``address`` and run the handshake.

        With ``expected_peer``, a peer proving another node id is refused. The
        accepting end's connection says ``purpose`` (``LINK`` or ``RELAY``).
        Raises ``TransportClosed`` when the address cannot be reached and
        ``AuthenticationFailed`` when either side refuses the handshake.
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop listening, close every connection, wait for the handlers (idempotent)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()


async def finish_handlers(tasks: Collection[asyncio.Task[None]], grace: float) -> None:
    """Give handler tasks ``grace`` seconds to return (their links are closed), then cancel them."""
    if not tasks:
        return
    _, pending = await asyncio.wait(list(tasks), timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)

"""The in-memory transport: the websocket transport's twin for simulations and tests.

Peers in one event loop find each other through a ``MemoryNetwork`` (address
-> listening transport). A link is two bounded byte queues, one per
direction: ``send`` waits while the peer's queue holds ``buffer_size`` bytes
(a message larger than the whole buffer is let in when the queue is empty),
so backpressure works as it does over TCP. Links run the same Ed25519
handshake as websockets, with no channel binding: the nonces bind it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque

from p2pfl.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    LINK,
    Connection,
    Handler,
    Transport,
    finish_handlers,
)
from p2pfl.transport.errors import AuthenticationFailed, FramingError, TransportClosed
from p2pfl.transport.handshake import Authenticator

log = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = 4 << 20
SCHEME = "memory://"


class _Queue:
    """One direction of a link: bounded by bytes, closable with a reason."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[bytes] = deque()
        self._used = 0
        self._closed: str | None = None
        self._waiters: list[asyncio.Future[None]] = []

    async def put(self, data: bytes) -> None:
        while self._closed is None and self._used and self._used + len(data) > self.capacity:
            await self._wait()
        if self._closed is not None:
            raise TransportClosed(self._closed)
        self._items.append(data)
        self._used += len(data)
        self._wake()

    async def get(self) -> bytes:
        while not self._items:
            if self._closed is not None:
                raise TransportClosed(self._closed)
            await self._wait()
        data = self._items.popleft()
        self._used -= len(data)
        self._wake()
        return data

    def close(self, reason: str, *, discard: bool) -> None:
        """No more puts; ``get`` drains what is queued first unless ``discard``."""
        if self._closed is None:
            self._closed = reason
        if discard:
            self._items.clear()
            self._used = 0
        self._wake()

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


class _Endpoint:
    """One end of a raw link: what the handshake runs over, and what a connection wraps."""

    def __init__(
        self, incoming: _Queue, outgoing: _Queue, local: str, remote: str, ended: asyncio.Event
    ) -> None:
        self.incoming = incoming
        self.outgoing = outgoing
        self.local = local
        self.remote = remote
        self.closed = False
        self.ended = ended  # shared by both ends: set when either closes

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise TransportClosed(f"link to {self.remote} closed by this end")
        await self.outgoing.put(data)

    async def recv(self, limit: int | None = None) -> bytes:
        if self.closed:
            raise TransportClosed(f"link to {self.remote} closed by this end")
        data = await self.incoming.get()
        return data if limit is None else data[: limit + 1]

    def close(self, reason: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.outgoing.close(reason or f"link closed by {self.local}", discard=False)
        self.incoming.close(reason or f"link closed by {self.local}", discard=True)
        self.ended.set()


def _link(capacity: int, dialer: str, listener: str) -> tuple[_Endpoint, _Endpoint]:
    forward, backward, ended = _Queue(capacity), _Queue(capacity), asyncio.Event()
    return (
        _Endpoint(backward, forward, dialer, listener, ended),
        _Endpoint(forward, backward, listener, dialer, ended),
    )


class MemoryConnection(Connection):
    def __init__(
        self, endpoint: _Endpoint, peer_id: str, max_message_size: int, owner: MemoryTransport
    ) -> None:
        self._end = endpoint
        self._peer_id = peer_id
        self._max = max_message_size
        self._owner = owner

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def remote_address(self) -> str:
        return self._end.remote

    @property
    def max_message_size(self) -> int:
        return self._max

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        self._check_size(message)
        await self._end.send(bytes(message))

    async def recv(self) -> bytes:
        data = await self._end.recv()
        if len(data) > self._max:
            reason = (
                f"message too big: {self._peer_id} sent {len(data)} bytes, "
                f"over the {self._max}-byte limit"
            )
            log.warning("closing the link to %s: %s", self._peer_id, reason)
            self._end.close(reason)
            raise FramingError(reason)
        return data

    async def close(self) -> None:
        self._end.close()
        self._owner._connections.discard(self)

    async def wait_closed(self) -> None:
        await self._end.ended.wait()


class MemoryNetwork:
    """Who listens where, for one event loop (a simulation, a test)."""

    def __init__(self) -> None:
        self._listeners: dict[str, MemoryTransport] = {}
        self._names = itertools.count(1)

    def transport(
        self,
        authenticator: Authenticator,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        close_timeout: float = 5.0,
    ) -> MemoryTransport:
        return MemoryTransport(
            self,
            authenticator,
            max_message_size=max_message_size,
            buffer_size=buffer_size,
            close_timeout=close_timeout,
        )

    def _name(self) -> str:
        return f"{SCHEME}client-{next(self._names)}"


class MemoryTransport(Transport):
    """Links within one process (module docstring); built by ``MemoryNetwork.transport``."""

    def __init__(
        self,
        network: MemoryNetwork,
        authenticator: Authenticator,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        close_timeout: float = 5.0,
    ) -> None:
        if max_message_size < 1 or buffer_size < 1:
            raise ValueError("max_message_size and buffer_size must be positive")
        self._network = network
        self._auth = authenticator
        self._max = max_message_size
        self._buffer = buffer_size
        self.address = network._name()
        self._listening = False
        self._on_connection: Handler | None = None
        self._connections: set[MemoryConnection] = set()
        self._raw: set[_Endpoint] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.close_timeout = close_timeout

    async def listen(self, address: str, on_connection: Handler) -> str:
        if self._closed:
            raise TransportClosed("the transport is closed")
        if self._listening:
            raise RuntimeError(f"already listening at {self.address}")
        name = address if address.startswith(SCHEME) else SCHEME + address
        if name in self._network._listeners:
            raise OSError(f"address already in use: {name}")
        self._network._listeners[name] = self
        self.address, self._listening, self._on_connection = name, True, on_connection
        return name

    async def connect(
        self, address: str, expected_peer: str | None = None, *, purpose: str = LINK
    ) -> Connection:
        if self._closed:
            raise TransportClosed("the transport is closed")
        name = address if address.startswith(SCHEME) else SCHEME + address
        listener = self._network._listeners.get(name)
        if listener is None:
            raise TransportClosed(f"cannot connect to {name}: nothing listens there")
        mine, theirs = _link(self._buffer, self.address, name)
        listener._accept(theirs, purpose)
        self._raw.add(mine)
        try:
            peer_id = await self._auth.dial(mine, address=name, expected_peer=expected_peer)
        except BaseException:
            mine.close()
            raise
        finally:
            self._raw.discard(mine)
        return self._wrap(mine, peer_id)

    def _wrap(self, endpoint: _Endpoint, peer_id: str) -> MemoryConnection:
        connection = MemoryConnection(endpoint, peer_id, self._max, self)
        if self._closed:
            endpoint.close()
        self._connections.add(connection)
        return connection

    def _accept(self, endpoint: _Endpoint, purpose: str) -> None:
        self._raw.add(endpoint)
        task = asyncio.create_task(self._serve(endpoint, purpose))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, endpoint: _Endpoint, purpose: str) -> None:
        try:
            peer_id = await self._auth.accept(
                endpoint, address=endpoint.remote, limit_key=endpoint.remote
            )
        except (AuthenticationFailed, TransportClosed) as exc:
            log.debug("no link from %s: %s", endpoint.remote, exc)
            endpoint.close()
            return
        finally:
            self._raw.discard(endpoint)
        connection = self._wrap(endpoint, peer_id)
        connection.purpose = purpose
        assert self._on_connection is not None
        try:
            await self._on_connection(connection)
        except Exception:
            log.exception("the handler of the link from %s failed", peer_id)
        finally:
            await connection.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listening and self._network._listeners.get(self.address) is self:
            del self._network._listeners[self.address]
        for endpoint in list(self._raw):
            endpoint.close()
        for connection in list(self._connections):
            await connection.close()
        await finish_handlers(self._tasks, self.close_timeout)

"""The websocket transport: wss (TLS) between institutions, plain ws only when asked.

Settings that make large transfers fast and bounded (``WsOptions``):

- permessage-deflate is off: it caps transfers at ~25 MB/s and model deltas
  hardly compress;
- a message is sent as one websocket message in fragments of ``frame_size``
  (1 MiB), memoryview slices of the caller's buffer (no copy of ours): a
  single 100 MB frame moves ~5x slower, and fragments let ``send`` wait for
  the socket after each one;
- a message longer than one frame starts with an 8-byte fragment giving its
  length; the receiver copies each fragment as it comes into one buffer of
  that size (at most ``max_message_size``) and hands it out as a read-only
  ``memoryview``, instead of keeping every fragment until a join copies them
  all again (twice the memory, one more copy); a fragmented message without
  that length, or longer or shorter than it, closes the link;
- ``max_message_size`` bounds what a peer can make us assemble; fragments
  are bounded (twice ``frame_size``), handshake messages are read fragment
  by fragment and cut at 1 KiB, and at most ``max_handshakes`` run at once,
  so unauthenticated peers cannot make a node buffer much;
- backpressure: ``send`` waits (``drain``) once ``write_limit`` bytes are
  queued for the socket; a receiver stops reading from its socket once
  ``max_queue`` fragments wait for ``recv``, so TCP flow control reaches back
  to a fast sender and nobody buffers without limit;
- the transport's ``transfers`` log records how long each fragmented
  message took to send or to arrive (``p2pfl.transport.transfers``): two
  ``perf_counter`` calls per message, so a node can report what its data
  plane moves on the wire apart from the time it waits for its peers.

Every link runs the Ed25519 handshake (``p2pfl.transport.handshake``) first,
bound to the TLS session by its ``tls-unique`` channel binding; see
``p2pfl.transport.tls`` for why clients accept self-signed certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import struct
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, NoReturn, cast
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.connection import Connection as WebSocket
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode

from p2pfl.errors import ConfigError
from p2pfl.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    LINK,
    RELAY,
    Connection,
    Handler,
    Transport,
    finish_handlers,
)
from p2pfl.transport.errors import AuthenticationFailed, FramingError, TransportClosed
from p2pfl.transport.handshake import Authenticator
from p2pfl.transport.tls import TlsFiles, client_context, server_context
from p2pfl.transport.transfers import TransferLog

log = logging.getLogger(__name__)

_RELAY_PATH = "/relay"
"""The request path of a connection dialled to ask for a relay (``base.RELAY``)."""

_LENGTH = struct.Struct(">Q")
"""The first fragment of a message longer than one frame: its length in bytes."""


def _buffer(size: int) -> memoryview:
    """``size`` writable bytes for an incoming message, pages not touched yet.

    numpy asks the kernel for transparent huge pages on large blocks: filling
    them costs one fault per 2 MiB rather than per 4 KiB, which on a virtual
    machine is the difference between ~1 and ~6 GB/s (a ``bytearray`` of 100 MB
    costs as much to fault in as to receive).
    """
    return np.empty(size, dtype=np.uint8).data.cast("B")


@dataclass(frozen=True)
class WsOptions:
    """Limits and timings of websocket links (module docstring)."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    frame_size: int = 1 << 20
    max_queue: int = 16
    write_limit: int = 1 << 20
    open_timeout: float = 10.0
    close_timeout: float = 5.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_handshakes: int = 64

    def __post_init__(self) -> None:
        if self.max_message_size < 1 or self.frame_size < 1024:
            raise ConfigError("max_message_size must be positive and frame_size at least 1024")
        if self.max_queue < 1 or self.write_limit < 1 or self.max_handshakes < 1:
            raise ConfigError("max_queue, write_limit and max_handshakes must be positive")

    def websocket_arguments(self) -> dict[str, Any]:
        return {
            "compression": None,
            "max_size": (self.max_message_size + _LENGTH.size, 2 * self.frame_size),
            "max_queue": self.max_queue,
            "write_limit": self.write_limit,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "close_timeout": self.close_timeout,
        }


def _closed(peer: str, exc: ConnectionClosed) -> TransportClosed:
    return TransportClosed(f"link to {peer} closed: {exc}")


def channel_binding(websocket: WebSocket, address: str) -> bytes:
    """``tls-unique`` of the link's TLS session, or b"" for plain ws."""
    ssl_object = websocket.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return b""
    value = ssl_object.get_channel_binding("tls-unique")
    if not value:
        raise AuthenticationFailed(address, "no-channel-binding", "TLS gave no tls-unique value")
    return b"tls-unique:" + bytes(value)


class _Channel:
    """A websocket before authentication: small messages only (``Channel`` of the handshake)."""

    def __init__(self, websocket: WebSocket, address: str) -> None:
        self._ws = websocket
        self._address = address

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise _closed(self._address, exc) from None

    async def recv(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        try:
            stream = cast(AsyncGenerator[bytes, None], self._ws.recv_streaming(decode=False))
            async with contextlib.aclosing(stream) as fragments:
                async for fragment in fragments:
                    parts.append(bytes(fragment))
                    size += len(fragment)
                    if size > limit:
                        break  # the link is refused and closed; the rest does not matter
        except ConnectionClosed as exc:
            raise _closed(self._address, exc) from None
        return b"".join(parts)[: limit + 1]


class WsConnection(Connection):
    def __init__(
        self,
        websocket: WebSocket,
        peer_id: str,
        address: str,
        options: WsOptions,
        owner: WsTransport,
    ) -> None:
        self._ws = websocket
        self._peer_id = peer_id
        self._address = address
        self._options = options
        self._owner = owner
        self._closed = False

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def remote_address(self) -> str:
        return self._address

    @property
    def max_message_size(self) -> int:
        return self._options.max_message_size

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise TransportClosed(f"link to {self._peer_id} closed by this end")
        size = self._check_size(message)
        frame = self._options.frame_size
        try:
            if size <= frame:
                await self._ws.send(message)
            else:
                view = memoryview(message).cast("B")
                slices = (view[i : i + frame] for i in range(0, size, frame))
                began = time.perf_counter()
                await self._ws.send(itertools.chain([_LENGTH.pack(size)], slices))
                seconds = time.perf_counter() - began
                self._owner.transfers.record(
                    self._peer_id, received=False, size=size, seconds=seconds
                )
        except ConnectionClosed as exc:
            raise _closed(self._peer_id, exc) from None

    async def recv(self) -> bytes | memoryview:
        if self._closed:
            raise TransportClosed(f"link to {self._peer_id} closed by this end")
        started = False
        try:
            stream = cast(AsyncGenerator[bytes | str, None], self._ws.recv_streaming())
            async with contextlib.aclosing(stream) as fragments:
                first = await anext(fragments)
                began, started = time.perf_counter(), True
                try:
                    second = await anext(fragments)
                except StopAsyncIteration:
                    return await self._whole(first)
                message = await self._assemble(first, second, fragments)
                seconds = time.perf_counter() - began
                self._owner.transfers.record(
                    self._peer_id, received=True, size=message.nbytes, seconds=seconds
                )
                return message
        except ConnectionClosed as exc:
            raise _closed(self._peer_id, exc) from None
        except asyncio.CancelledError:
            if started:  # half a message was read: the stream cannot find the next one
                await asyncio.shield(self._ws.close(CloseCode.INTERNAL_ERROR, "recv cancelled"))
            raise

    async def _whole(self, message: bytes | str) -> bytes:
        if isinstance(message, str):
            await self._refuse(CloseCode.UNSUPPORTED_DATA, "binary messages only")
        return cast(bytes, message)

    async def _assemble(
        self, header: bytes | str, second: bytes | str, rest: AsyncGenerator[bytes | str, None]
    ) -> memoryview:
        """Copy a fragmented message into one buffer of the size its header announced."""
        if isinstance(header, str) or len(header) != _LENGTH.size:
            await self._refuse(CloseCode.UNSUPPORTED_DATA, "a long message needs its length first")
        (size,) = _LENGTH.unpack(cast(bytes, header))
        if size > self.max_message_size:
            await self._refuse(
                CloseCode.MESSAGE_TOO_BIG,
                f"message of {size} bytes too big (limit {self.max_message_size})",
            )
        target = _buffer(size)
        filled = 0
        fragment: bytes | str = second
        while True:
            end = filled + len(fragment)
            if isinstance(fragment, str) or end > size:
                await self._refuse(CloseCode.PROTOCOL_ERROR, "message longer than announced")
            target[filled:end] = cast(bytes, fragment)
            filled = end
            del fragment  # a fragment must not outlive its copy while the next arrives
            try:
                fragment = await anext(rest)
            except StopAsyncIteration:
                break
        if filled != size:
            await self._refuse(CloseCode.PROTOCOL_ERROR, "message shorter than announced")
        return target.toreadonly()

    async def _refuse(self, code: CloseCode, reason: str) -> NoReturn:
        await self._ws.close(code, reason)
        raise FramingError(f"{self._peer_id} broke the framing ({reason}); link closed")

    async def close(self) -> None:
        self._closed = True
        self._owner._connections.discard(self)
        await self._ws.close()

    async def wait_closed(self) -> None:
        await self._ws.wait_closed()


def _split(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``ws://h:p``, ``wss://h:p`` or ``h:p`` (scheme "")."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.hostname is None or port is None:
        raise ConfigError(f"not a websocket address (ws[s]://HOST:PORT): {address!r}")
    return parts.scheme, parts.hostname, port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _join(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{_host_port(host, port)}"


class WsTransport(Transport):
    """Websocket links: wss with ``tls`` files, plain ws only with ``insecure=True``.

    Dialling ``wss://`` needs no files (the handshake authenticates the peer);
    listening uses TLS whenever ``tls`` is given. A ``dial_only`` transport (a site
    that accepts no inbound connection) needs no files and refuses to listen.
    ``transfers`` holds the newest fragmented messages' times on the wire, every
    link's (module docstring).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        tls: TlsFiles | None = None,
        insecure: bool = False,
        options: WsOptions | None = None,
        dial_only: bool = False,
    ) -> None:
        if tls is None and not insecure and not dial_only:
            raise ConfigError("websocket links need TLS files; pass insecure=True for plain ws")
        if insecure:
            log.warning(
                "INSECURE: plain ws:// links are allowed; model updates and the ledger travel "
                "unencrypted, readable and alterable on the network path"
            )
        self._auth = authenticator
        self._insecure = insecure
        self._options = options or WsOptions()
        self._server_ssl: ssl.SSLContext | None = server_context(tls) if tls else None
        self._client_ssl = client_context(tls)
        self._server: Server | None = None
        self._on_connection: Handler | None = None
        self._connections: set[WsConnection] = set()
        self._pending: set[WebSocket] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._dial_only = dial_only
        self.transfers = TransferLog()

    async def listen(self, address: str, on_connection: Handler) -> str:
        if self._closed:
            raise TransportClosed("the transport is closed")
        if self._server is not None:
            raise RuntimeError("this transport is already listening")
        if self._dial_only:
            raise ConfigError(f"cannot listen at {address}: this transport only dials")
        scheme, host, port = _split(address)
        want = "wss" if self._server_ssl is not None else "ws"
        if scheme not in ("", want):
            raise ConfigError(f"cannot listen at {address}: this transport serves {want}://")
        self._on_connection = on_connection
        self._server = await serve(
            self._accept,
            host,
            port,
            ssl=self._server_ssl,
            server_header=None,
            open_timeout=self._options.open_timeout,
            **self._options.websocket_arguments(),
        )
        bound_port = self._server.sockets[0].getsockname()[1]
        return _join(want, host, bound_port)

    async def connect(
        self, address: str, expected_peer: str | None = None, *, purpose: str = LINK
    ) -> Connection:
        if self._closed:
            raise TransportClosed("the transport is closed")
        scheme, host, port = _split(address)
        if scheme == "ws" and not self._insecure:
            raise ConfigError(f"refusing plain {address}: pass insecure=True to allow ws://")
        if scheme not in ("ws", "wss"):
            raise ConfigError(f"not a websocket address (ws[s]://HOST:PORT): {address!r}")
        uri = _join(scheme, host, port)
        try:
            websocket: ClientConnection = await ws_connect(
                uri + (_RELAY_PATH if purpose == RELAY else "/"),
                ssl=self._client_ssl if scheme == "wss" else None,
                proxy=None,
                user_agent_header=None,
                open_timeout=self._options.open_timeout,
                **self._options.websocket_arguments(),
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise TransportClosed(f"cannot connect to {uri}: {exc}") from None
        self._pending.add(websocket)
        try:
            binding = channel_binding(websocket, uri)
            peer_id = await self._auth.dial(
                _Channel(websocket, uri), address=uri, binding=binding, expected_peer=expected_peer
            )
        except BaseException:
            await websocket.close(CloseCode.POLICY_VIOLATION, "handshake failed")
            raise
        finally:
            self._pending.discard(websocket)
        return await self._wrap(websocket, peer_id, uri)

    async def _wrap(self, websocket: WebSocket, peer_id: str, address: str) -> WsConnection:
        connection = WsConnection(websocket, peer_id, address, self._options, self)
        if self._closed:
            await connection.close()
            raise TransportClosed("the transport is closed")
        self._connections.add(connection)
        return connection

    async def _accept(self, websocket: ServerConnection) -> None:
        host, port = websocket.remote_address[:2]
        address = _host_port(host, port)
        if len(self._pending) >= self._options.max_handshakes:
            log.warning(
                "dropped a link from %s: %d handshakes under way", address, len(self._pending)
            )
            await websocket.close(CloseCode.TRY_AGAIN_LATER, "too many handshakes under way")
            return
        self._pending.add(websocket)
        try:
            binding = channel_binding(websocket, address)
            peer_id = await self._auth.accept(
                _Channel(websocket, address), address=address, limit_key=host, binding=binding
            )
        except (AuthenticationFailed, TransportClosed) as exc:
            log.debug("no link from %s: %s", address, exc)
            await websocket.close(CloseCode.POLICY_VIOLATION, "handshake refused")
            return
        finally:
            self._pending.discard(websocket)
        try:
            connection = await self._wrap(websocket, peer_id, address)
        except TransportClosed:
            return
        if websocket.request is not None and websocket.request.path == _RELAY_PATH:
            connection.purpose = RELAY
        task = asyncio.create_task(self._handle(connection))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        await asyncio.wait({task})

    async def _handle(self, connection: WsConnection) -> None:
        assert self._on_connection is not None
        try:
            await self._on_connection(connection)
        except Exception:
            log.exception("the handler of the link from %s failed", connection.peer_id)
        finally:
            await connection.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()  # stops accepting, closes every accepted link with 1001
        links = [*self._pending, *(c._ws for c in self._connections)]
        await asyncio.gather(*(link.close(CloseCode.GOING_AWAY) for link in links))
        await finish_handlers(self._handlers, self._options.close_timeout)
        if self._server is not None:
            await self._server.wait_closed()

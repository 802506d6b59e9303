"""Links between two sites that accept no connection, spliced by a third that does.

Both ends dial the relay (a reachable member) as usual, with ``purpose =
RELAY``: the transport runs its TLS and the mutual handshake with the relay,
so the relay knows it talks to a member, and the member knows it talks to the
relay. Each end then asks to be spliced to the other::

    end -> relay   {"t": "splice", "peer": node id}
    relay -> end   {"t": "spliced"}   or   {"t": "refused", "code": str, "reason": str}

The relay refuses a peer that is not a member and a pair it is not assigned
(``topology.relays``: every node computes the same assignment from the ledger),
keeps one waiting request per (end, peer) (a newer one replaces it), and once
both ends of a pair have asked, answers both and pipes whole messages between
the two connections, opaque, one message in flight per direction (the
transports' bounded buffers do the rest: a slow end makes the relay wait,
which makes the fast end wait); when either connection ends it closes both.

Over the spliced pipe the two ends run an end-to-end session, the relay in
the middle (``open_relayed``):

1. each sends a fresh X25519 public key, ``{"t": "e2e", "v": 1, "key": 32 bytes}``;
2. they run the same mutual Ed25519 handshake as a direct link
   (``p2pfl.transport.handshake``), the smaller id as initiator, with the
   channel binding ``relay-x25519:`` + SHA-256(initiator key, responder key).
   The binding plays the part ``tls-unique`` plays on a direct link: a relay
   that swaps in keys of its own holds two sessions with two bindings, and
   neither end's proof verifies at the other, so the link is refused before
   a byte of it moves; the nonces make a recorded proof useless;
3. the X25519 shared secret, through HKDF-SHA256 with the binding, gives one
   ChaCha20-Poly1305 key per direction; every message is sealed under its
   direction's key with a counter nonce, so a message the relay alters,
   replays, reorders or drops fails to open and the link closes
   (``TransportClosed``), as a dropout would.

So the relay sees what a neighbour's link shows anyway (who talks to whom,
when, and the sizes of the messages), never a key or a byte of plaintext
(docs/threat-model.md, "Relays"). A relayed link is a ``Connection`` like
any other: the node serves it as it serves a direct one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pfl.transport.base import Connection
from p2pfl.transport.errors import (
    AuthenticationFailed,
    FramingError,
    MessageTooLarge,
    RelayRefused,
    TransportClosed,
)
from p2pfl.transport.handshake import Authenticator
from protocols.records import is_node_id

log = logging.getLogger(__name__)

VERSION = 1
TAG_SIZE = 16
MAX_CONTROL = 512  # bytes: a splice request, its answer, a key message
BINDING = b"relay-x25519:"

Allowed = Callable[[str, str], tuple[str, str] | None]
"""``allowed(end, peer)``: None when this relay splices ``end`` to ``peer``, else (code, reason)."""


def _pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _unpack(data: bytes | memoryview, kind: str, keys: set[str]) -> dict[str, Any] | None:
    """The small map ``data`` holds if it is a ``kind`` message with ``keys``, else None."""
    if len(data) > MAX_CONTROL:
        return None
    try:
        message = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if isinstance(message, dict) and message.get("t") == kind and set(message) == keys:
        return message
    return None


def _refusal(data: bytes | memoryview) -> tuple[str, str] | None:
    message = _unpack(data, "refused", {"t", "code", "reason"})
    if message is None:
        return None
    code, reason = message["code"], message["reason"]
    return (code[:40] if isinstance(code, str) else "refused", str(reason)[:200])


# -- the ends ---------------------------------------------------------------------------------


class _Channel:
    """A connection as the handshake's raw channel (small messages, cut at ``limit``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def send(self, data: bytes) -> None:
        await self._conn.send(data)

    async def recv(self, limit: int) -> bytes:
        return bytes((await self._conn.recv())[: limit + 1])


@dataclass(frozen=True)
class Keys:
    """One relayed session's direction keys and the binding its handshake signed."""

    binding: bytes
    send: bytes
    receive: bytes


def session_keys(mine: X25519PrivateKey, theirs: bytes, *, initiator: bool) -> Keys:
    """The binding and direction keys of a session from our key and the peer's public key."""
    own = mine.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    first, second = (own, theirs) if initiator else (theirs, own)
    binding = BINDING + hashlib.sha256(first + second).digest()
    shared = mine.exchange(X25519PublicKey.from_public_bytes(theirs))
    okm = HKDF(hashes.SHA256(), 64, salt=binding, info=b"p2pfl relayed session/1").derive(shared)
    forward, backward = okm[:32], okm[32:]  # initiator -> responder, and back
    return Keys(binding, *((forward, backward) if initiator else (backward, forward)))


class RelayedConnection(Connection):
    """A link to ``peer`` through a relay, sealed end to end (module docstring)."""

    def __init__(self, inner: Connection, peer_id: str, relay: str, keys: Keys) -> None:
        self._inner = inner
        self._peer_id = peer_id
        self.relay = relay
        self._seal = ChaCha20Poly1305(keys.send)
        self._open = ChaCha20Poly1305(keys.receive)
        self._sent = 0
        self._received = 0
        self._lock = asyncio.Lock()  # sealing order is sending order
        self._closed = False

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def remote_address(self) -> str:
        return f"{self._inner.remote_address} (relay {self.relay})"

    @property
    def max_message_size(self) -> int:
        return self._inner.max_message_size - TAG_SIZE

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise TransportClosed(f"link to {self._peer_id} closed by this end")
        self._check_size(message)
        async with self._lock:
            nonce = self._sent.to_bytes(12, "little")
            self._sent += 1
            sealed = self._seal.encrypt(nonce, message, None)
            try:
                await self._inner.send(sealed)
            except MessageTooLarge as exc:  # the relay's link allows less: nothing was sent
                self._sent -= 1
                raise MessageTooLarge(f"{exc} (sealed for the relayed link)") from None

    async def recv(self) -> bytes | memoryview:
        if self._closed:
            raise TransportClosed(f"link to {self._peer_id} closed by this end")
        sealed = await self._inner.recv()
        nonce = self._received.to_bytes(12, "little")
        try:
            message = self._open.decrypt(nonce, sealed, None)
        except InvalidTag:
            await self.close()
            raise TransportClosed(
                f"relayed link to {self._peer_id} via {self.relay}: a message did not open "
                "(altered, replayed, reordered or dropped on the way); link closed"
            ) from None
        self._received += 1
        return message

    async def close(self) -> None:
        self._closed = True
        await self._inner.close()

    async def wait_closed(self) -> None:
        await self._inner.wait_closed()


async def open_relayed(
    conn: Connection,
    authenticator: Authenticator,
    *,
    peer: str,
    wait: float,
) -> RelayedConnection:
    """Ask the relay ``conn`` leads to for ``peer``, then open the end-to-end session.

    Waits up to ``wait`` seconds for the peer to ask too; the handshake then has the
    authenticator's own timeout. Raises ``RelayRefused``, ``TransportClosed`` (also
    when the peer does not come in time) or ``AuthenticationFailed``; ``conn`` is
    closed on any failure.
    """
    relay, me = conn.peer_id, authenticator.node_id
    try:
        await conn.send(_pack({"t": "splice", "peer": peer}))
        try:
            async with asyncio.timeout(wait):
                answer = await conn.recv()
        except TimeoutError:
            raise TransportClosed(
                f"relay {relay}: {peer} did not ask to be spliced to us in {wait} s"
            ) from None
        refused = _refusal(answer)
        if refused is not None:
            raise RelayRefused(relay, *refused)
        if _unpack(answer, "spliced", {"t"}) is None:
            raise RelayRefused(relay, "malformed", "the relay's answer is not a splice")
        return await _session(conn, authenticator, me=me, peer=peer, relay=relay)
    except BaseException:
        await conn.close()
        raise


async def _session(
    conn: Connection, authenticator: Authenticator, *, me: str, peer: str, relay: str
) -> RelayedConnection:
    initiator = me < peer
    address = f"{peer} via relay {relay}"
    mine = X25519PrivateKey.generate()
    own = mine.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        async with asyncio.timeout(authenticator.timeout):
            await conn.send(_pack({"t": "e2e", "v": VERSION, "key": own}))
            message = _unpack(await conn.recv(), "e2e", {"t", "v", "key"})
    except TimeoutError:
        raise AuthenticationFailed(peer, "timeout", "no session key through the relay") from None
    if message is None or message["v"] != VERSION:
        raise AuthenticationFailed(peer, "malformed", "expected a session key message")
    theirs = message["key"]
    if not isinstance(theirs, bytes) or len(theirs) != 32 or theirs == own:
        raise AuthenticationFailed(peer, "malformed", "a session key of 32 fresh bytes")
    keys = session_keys(mine, theirs, initiator=initiator)
    channel = _Channel(conn)
    if initiator:
        await authenticator.dial(channel, address=address, binding=keys.binding, expected_peer=peer)
    else:
        await authenticator.accept(
            channel,
            address=address,
            limit_key=f"relay:{relay}",
            binding=keys.binding,
            expected_peer=peer,
        )
    return RelayedConnection(conn, peer, relay, keys)


# -- the relay --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Waiting:
    conn: Connection
    peer: str
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class Splice:
    """Two connections piped together, and what moved through them."""

    ends: tuple[Connection, Connection]
    messages: int = 0
    bytes: int = 0

    async def close(self) -> None:
        for conn in self.ends:
            await conn.close()


class Splicer:
    """The relay's side: the handler of ``RELAY`` connections (module docstring).

    ``allowed`` is asked about every request; ``request_timeout`` bounds the wait
    for an end's request after its handshake; ``ended`` is called each time a
    splice ends (a relay that is done with its own run waits for those it carries).
    """

    def __init__(
        self,
        allowed: Allowed,
        *,
        request_timeout: float = 10.0,
        ended: Callable[[], None] | None = None,
    ) -> None:
        self._allowed = allowed
        self._ended = ended
        self.request_timeout = request_timeout
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self.splices: dict[tuple[str, str], Splice] = {}

    async def serve(self, conn: Connection) -> None:
        """Serve one end's connection until its splice ends (or it is refused)."""
        end = conn.peer_id
        try:
            async with asyncio.timeout(self.request_timeout):
                request = await conn.recv()
        except (TimeoutError, TransportClosed):
            return
        message = _unpack(request, "splice", {"t", "peer"})
        if message is None or not is_node_id(message["peer"]) or message["peer"] == end:
            await self._refuse(conn, "malformed", "expected a splice request naming a peer")
            return
        peer: str = message["peer"]
        verdict = self._allowed(end, peer)
        if verdict is not None:
            await self._refuse(conn, *verdict)
            return
        partner = self._waiting.pop((peer, end), None)
        if partner is None:
            await self._wait(conn, peer)
            return
        try:
            await self._splice(partner.conn, conn)
        finally:
            partner.done.set()

    async def _refuse(self, conn: Connection, code: str, reason: str) -> None:
        log.debug("refused to relay %s: %s (%s)", conn.peer_id, reason, code)
        with contextlib.suppress(TransportClosed, MessageTooLarge):
            await conn.send(_pack({"t": "refused", "code": code, "reason": reason[:200]}))

    async def _wait(self, conn: Connection, peer: str) -> None:
        key = (conn.peer_id, peer)
        old = self._waiting.pop(key, None)
        if old is not None:  # the end asked again: its newest connection waits
            old.done.set()
        waiting = self._waiting[key] = _Waiting(conn, peer)
        closed = asyncio.ensure_future(conn.wait_closed())
        done = asyncio.ensure_future(waiting.done.wait())
        try:
            await asyncio.wait({closed, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            done.cancel()
            if self._waiting.get(key) is waiting:
                del self._waiting[key]

    async def _splice(self, first: Connection, second: Connection) -> None:
        pair = (first.peer_id, second.peer_id)
        key = (min(pair), max(pair))
        old = self.splices.pop(key, None)
        if old is not None:  # an end reconnected: the newest splice wins
            await old.close()
        splice = self.splices[key] = Splice((first, second))
        log.info("relaying %s <-> %s", *key)
        try:
            for conn in (first, second):
                await conn.send(_pack({"t": "spliced"}))
            pumps = [
                asyncio.ensure_future(self._pump(splice, a, b))
                for a, b in ((first, second), (second, first))
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (TransportClosed, MessageTooLarge):
            pass
        finally:
            await splice.close()
            if self.splices.get(key) is splice:
                del self.splices[key]
            log.info("stopped relaying %s <-> %s", *key)
            if self._ended is not None:
                self._ended()

    @staticmethod
    async def _pump(splice: Splice, source: Connection, sink: Connection) -> None:
        """Move whole messages from ``source`` to ``sink`` until either ends."""
        with contextlib.suppress(TransportClosed, FramingError, MessageTooLarge):
            while True:
                message = await source.recv()
                await sink.send(message)
                splice.messages += 1
                splice.bytes += len(message)
                del message

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The pairs relayed now, ``"a b"``: messages and bytes moved."""
        return {
            f"{a} {b}": {"messages": s.messages, "bytes": s.bytes}
            for (a, b), s in sorted(self.splices.items())
        }


__all__ = [
    "Keys",
    "RelayedConnection",
    "Splice",
    "Splicer",
    "open_relayed",
    "session_keys",
]

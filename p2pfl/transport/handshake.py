"""The mutual Ed25519 challenge-response every link runs before anything else.

Both ends speak at once; each message is a small msgpack map::

    hello   {"t": "hello", "v": 1, "id": node id, "nonce": 32 fresh random bytes}
    proof   {"t": "proof", "sig": Ed25519 signature of the transcript below}
    ok      {"t": "ok"}
    refused {"t": "refused", "code": str, "reason": str}

1. Each end sends its hello and reads the peer's. The peer's id must be a
   member: ``is_member(id)`` returns its verify key from the ledger, or
   ``None`` for a stranger or a revoked member, who is refused here and never
   gets a signature out of us. A dialer that expected another id refuses too.
2. Each end signs ``transcript(role, ...)`` and sends the proof; it covers a
   domain tag, the signer's role, both nonces, both ids and the channel
   binding. Fresh nonces make a recorded proof useless on any other link; the
   role stops a proof being reflected back; the binding (TLS ``tls-unique``)
   ties the proof to this TLS session, so a man in the middle with two TLS
   sessions cannot relay it. Without TLS the binding is empty and the nonces
   alone bind the proof to the link.
3. Each end checks the peer's proof and answers ok or refused, so both ends
   learn the outcome: a dialer gets ``AuthenticationFailed`` from ``connect``,
   not a link that dies on its first read.

A member the node has banned for repeated protocol faults (``banned(id)``,
``p2pfl.node.faults``) is refused at step 1 too (code ``banned``), before
anything is signed for it.

``Handshake`` is the sans-I/O state of one end; ``Authenticator`` drives it
over a transport's raw channel, logs refusals, and rate-limits addresses that
keep failing with a ``RateLimiter`` (a token bucket per address, clock injected).

Why a rate-limited address is not simply refused: members share hosts (and
addresses behind a NAT, or 127.0.0.1 on a test machine) with strangers, and a
stranger failing handshakes from that address must not lock a member out. So
an address with no token left still gets a handshake, on probation: at most
``max_probation`` such handshakes run at once (beyond that: refused at once),
and any failure in one is answered and reported as ``rate-limited``, exactly
as before. A stranger gains nothing by it: its hello names an id that is not a
member (or is one it cannot sign for), so it is refused at step 1 without a
signature of ours, or at step 3 with one bound to nonces it will never see
again; only an end that proves a member's key gets through, and a bucket keyed
by a claimed id would have let a stranger lock that member out by claiming it.
Failures still drain the address's bucket, and every inbound handshake, on
probation or not, counts against ``max_pending`` (unauthenticated handshakes
under way at once), so neither a flood nor slow peers make us hold more than
that many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import msgpack
import nacl.exceptions
import nacl.signing

from p2pfl.transport.errors import AuthenticationFailed, RateLimited, TransportClosed
from protocols.records import is_node_id, node_id_for

log = logging.getLogger(__name__)

VERSION = 1
TAG = b"p2pfl-handshake/1"
NONCE_SIZE = 32
MAX_HANDSHAKE_MESSAGE = 1024
INITIATOR, RESPONDER = b"initiator", b"responder"
_LIMITED = "too many failed handshakes"

MembershipCheck = Callable[[str], bytes | None]
"""``is_member(node_id)``: the member's Ed25519 verify key (32 bytes), or None if not one now."""


def transcript(
    signer: bytes,
    initiator_nonce: bytes,
    responder_nonce: bytes,
    initiator_id: str,
    responder_id: str,
    binding: bytes,
) -> bytes:
    """The bytes an end signs: every field length-prefixed, so no two transcripts collide."""
    fields = (
        TAG,
        signer,
        initiator_nonce,
        responder_nonce,
        initiator_id.encode(),
        responder_id.encode(),
        binding,
    )
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def _pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def refusal_message(code: str, reason: str) -> bytes:
    return _pack({"t": "refused", "code": code, "reason": reason[:200]})


class Handshake:
    """One end of one handshake, without I/O: bytes in, bytes out, ``AuthenticationFailed``.

    Call ``hello()``, then ``receive_hello`` (returns the proof to send), then
    ``receive_proof`` (returns the ok to send), then ``receive_verdict``.
    """

    def __init__(
        self,
        signing_key: nacl.signing.SigningKey,
        is_member: MembershipCheck,
        *,
        initiator: bool,
        nonce: bytes,
        binding: bytes = b"",
        expected_peer: str | None = None,
        address: str = "?",
        banned: Callable[[str], bool] | None = None,
    ) -> None:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a handshake nonce has {NONCE_SIZE} bytes, not {len(nonce)}")
        self._key = signing_key
        self._is_member = is_member
        self.node_id = node_id_for(bytes(signing_key.verify_key))
        self.initiator = initiator
        self.nonce = nonce
        self.binding = binding
        self.expected_peer = expected_peer
        self._banned = banned
        self.peer = expected_peer or address  # who we are talking to, for errors
        self.peer_id: str | None = None
        self._peer_nonce = b""
        self._peer_key = b""

    def hello(self) -> bytes:
        return _pack({"t": "hello", "v": VERSION, "id": self.node_id, "nonce": self.nonce})

    def receive_hello(self, data: bytes) -> bytes:
        message = self._decode(data, "hello", {"t", "v", "id", "nonce"})
        peer_id, nonce = message["id"], message["nonce"]
        if message["v"] != VERSION:
            self._refuse("version", f"handshake version {message['v']!r}, we speak {VERSION}")
        if not is_node_id(peer_id) or not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            self._refuse("malformed", "hello without a valid node id and 32-byte nonce")
        self.peer = peer_id
        if nonce == self.nonce:
            self._refuse("malformed", "our own nonce came back")
        if peer_id == self.node_id:
            self._refuse("self", "the peer claims our own node id")
        if self.expected_peer is not None and peer_id != self.expected_peer:
            self._refuse("unexpected-peer", f"we dialled {self.expected_peer}")
        key = self._is_member(peer_id)
        if key is None:
            self._refuse("not-member", "not a member of the federation, or revoked")
        if len(key) != 32 or node_id_for(bytes(key)) != peer_id:
            self._refuse("bad-key", "the ledger's key for this id does not match it")
        if self._banned is not None and self._banned(peer_id):
            self._refuse("banned", "disconnected for a while after repeated protocol errors")
        self.peer_id, self._peer_nonce, self._peer_key = peer_id, nonce, bytes(key)
        signature = self._key.sign(self._transcript(self.initiator)).signature
        return _pack({"t": "proof", "sig": bytes(signature)})

    def receive_proof(self, data: bytes) -> bytes:
        if self.peer_id is None:
            raise RuntimeError("receive_proof before receive_hello")
        message = self._decode(data, "proof", {"t", "sig"})
        signature = message["sig"]
        if not isinstance(signature, bytes):
            self._refuse("malformed", "proof without a signature")
        try:
            nacl.signing.VerifyKey(self._peer_key).verify(
                self._transcript(not self.initiator), signature
            )
        except (nacl.exceptions.BadSignatureError, ValueError):
            self._refuse("bad-signature", "the proof does not verify with the ledger's key")
        return _pack({"t": "ok"})

    def receive_verdict(self, data: bytes) -> str:
        """The authenticated peer id, once the peer accepted our proof too."""
        self._decode(data, "ok", {"t"})
        assert self.peer_id is not None
        return self.peer_id

    def _transcript(self, signer_is_initiator: bool) -> bytes:
        assert self.peer_id is not None
        pairs = ((self.nonce, self.node_id), (self._peer_nonce, self.peer_id))
        (i_nonce, i_id), (r_nonce, r_id) = pairs if self.initiator else pairs[::-1]
        role = INITIATOR if signer_is_initiator else RESPONDER
        return transcript(role, i_nonce, r_nonce, i_id, r_id, self.binding)

    def _decode(self, data: bytes, kind: str, keys: set[str]) -> dict[str, Any]:
        message: Any = None
        if len(data) <= MAX_HANDSHAKE_MESSAGE:
            try:
                message = msgpack.unpackb(data, raw=False, strict_map_key=True)
            except (ValueError, TypeError, msgpack.UnpackException):
                message = None
        if isinstance(message, dict) and message.get("t") == "refused":
            code, reason = message.get("code"), message.get("reason")
            code = code if isinstance(code, str) else "refused"
            reason = reason if isinstance(reason, str) else ""
            error = RateLimited if code == "rate-limited" else AuthenticationFailed
            raise error(self.peer, code[:40], reason[:200], by_peer=True)
        if not isinstance(message, dict) or message.get("t") != kind or set(message) != keys:
            self._refuse("malformed", f"expected a {kind} message")
        return message

    def _refuse(self, code: str, reason: str) -> NoReturn:
        raise AuthenticationFailed(self.peer, code, reason)


class RateLimiter:
    """Token buckets per remote address: each failed handshake takes a token.

    An address with no token left is refused without a handshake until the
    bucket refills (``refill_per_second``). Full buckets are forgotten, and at
    most ``max_addresses`` are kept (the oldest go first), so memory is bounded.
    """

    def __init__(
        self,
        *,
        burst: int = 10,
        refill_per_second: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 4096,
    ) -> None:
        if burst < 1 or refill_per_second <= 0 or max_addresses < 1:
            raise ValueError("a rate limiter needs burst >= 1, refill > 0 and max_addresses >= 1")
        self.burst = burst
        self.refill_per_second = refill_per_second
        self._clock = clock
        self._max = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def tokens(self, address: str) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), 0.0))
        if address in self._buckets:
            tokens = min(float(self.burst), tokens + (self._clock() - at) * self.refill_per_second)
        return tokens

    def allowed(self, address: str) -> bool:
        """Whether a handshake from ``address`` may run now."""
        return self.tokens(address) >= 1.0

    def record_failure(self, address: str) -> bool:
        """Take a token; True when this failure blocks the address."""
        tokens = max(0.0, self.tokens(address) - 1.0)
        self._buckets.pop(address, None)
        self._buckets[address] = (tokens, self._clock())
        if len(self._buckets) > self._max:
            self._forget()
        return tokens < 1.0

    def _forget(self) -> None:
        full = [a for a in self._buckets if self.tokens(a) >= self.burst]
        for address in full:
            del self._buckets[address]
        while len(self._buckets) > self._max:
            del self._buckets[next(iter(self._buckets))]


class Channel(Protocol):
    """A transport's raw link before authentication."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, limit: int) -> bytes:
        """The next message (cut to ``limit + 1`` bytes); ``TransportClosed`` at the end."""
        ...


@dataclass(frozen=True)
class Refusal:
    """A refused handshake, for an audit log (``Authenticator(on_refusal=...)``)."""

    address: str
    peer: str
    code: str
    reason: str
    inbound: bool
    by_peer: bool


class Authenticator:
    """Runs ``Handshake``s for a node: its signing key, the ledger's membership, the limits."""

    def __init__(
        self,
        signing_key: nacl.signing.SigningKey,
        is_member: MembershipCheck,
        *,
        limiter: RateLimiter | None = None,
        timeout: float = 10.0,
        on_refusal: Callable[[Refusal], None] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        banned: Callable[[str], bool] | None = None,
        max_pending: int = 64,
        max_probation: int = 4,
    ) -> None:
        if max_pending < 1 or max_probation < 1:
            raise ValueError("an authenticator needs max_pending >= 1 and max_probation >= 1")
        self._key = signing_key
        self._is_member = is_member
        self.node_id = node_id_for(bytes(signing_key.verify_key))
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.timeout = timeout
        self._on_refusal = on_refusal
        self._random = random_bytes
        self._banned = banned
        self.max_pending = max_pending
        self.max_probation = max_probation
        self.pending = 0  # inbound handshakes under way
        self.on_probation = 0  # of which from rate-limited addresses

    async def accept(
        self,
        channel: Channel,
        *,
        address: str,
        limit_key: str,
        binding: bytes = b"",
        expected_peer: str | None = None,
    ) -> str:
        """Authenticate an incoming link; the peer's id, or ``AuthenticationFailed``.

        ``limit_key`` (the remote host) is what the rate limiter counts failures by;
        a limited one gets a handshake on probation (module docstring). With
        ``expected_peer`` (the responder of a relayed link knows whom it asked
        for), a peer proving another id is refused.
        """
        limited = not self.limiter.allowed(limit_key)
        busy = self.pending >= self.max_pending
        if busy or (limited and self.on_probation >= self.max_probation):
            code = "busy" if busy and not limited else "rate-limited"
            reason = "too many handshakes under way" if code == "busy" else _LIMITED
            log.debug("dropped a connection from %s: %s", address, code)
            self._report(address, address, code, reason, True, False)
            await _send_quietly(channel, refusal_message(code, reason))
            raise RateLimited(address, code, reason)
        self.pending += 1
        self.on_probation += limited
        try:
            return await self._run(
                channel, address, binding, initiator=False, expected=expected_peer, limited=limited
            )
        except (AuthenticationFailed, TransportClosed):
            if self.limiter.record_failure(limit_key):
                log.warning("rate-limiting %s after repeated failed handshakes", limit_key)
            raise
        finally:
            self.pending -= 1
            self.on_probation -= limited

    async def dial(
        self,
        channel: Channel,
        *,
        address: str,
        binding: bytes = b"",
        expected_peer: str | None = None,
    ) -> str:
        """Authenticate a link we dialled; the peer's id, or ``AuthenticationFailed``."""
        return await self._run(channel, address, binding, initiator=True, expected=expected_peer)

    async def _run(
        self,
        channel: Channel,
        address: str,
        binding: bytes,
        *,
        initiator: bool,
        expected: str | None,
        limited: bool = False,
    ) -> str:
        shake = Handshake(
            self._key,
            self._is_member,
            initiator=initiator,
            nonce=self._random(NONCE_SIZE),
            binding=binding,
            expected_peer=expected,
            address=address,
            banned=self._banned,
        )
        try:
            # A failed send is not the end: the peer may have refused us and closed, and the
            # next recv reads its reason before it raises TransportClosed.
            async with asyncio.timeout(self.timeout):
                await _send_quietly(channel, shake.hello())
                reply = shake.receive_hello(await channel.recv(MAX_HANDSHAKE_MESSAGE))
                await _send_quietly(channel, reply)
                reply = shake.receive_proof(await channel.recv(MAX_HANDSHAKE_MESSAGE))
                await _send_quietly(channel, reply)
                return shake.receive_verdict(await channel.recv(MAX_HANDSHAKE_MESSAGE))
        except TimeoutError:
            error = AuthenticationFailed(shake.peer, "timeout", f"no answer in {self.timeout} s")
            if limited:
                error = RateLimited(address, "rate-limited", _LIMITED)
            self._refused(error, address, not initiator)
            raise error from None
        except AuthenticationFailed as failed:
            error = failed
            if limited and not failed.by_peer:  # on probation: the refusal it had before
                error = RateLimited(address, "rate-limited", _LIMITED)
            self._refused(error, address, not initiator)
            if not error.by_peer:
                await _send_quietly(channel, refusal_message(error.code, error.reason))
            if error is failed:
                raise
            raise error from None

    def _refused(self, error: AuthenticationFailed, address: str, inbound: bool) -> None:
        direction = "from" if inbound else "to"
        log.warning("refused link %s %s: %s", direction, address, error)
        self._report(address, error.peer, error.code, error.reason, inbound, error.by_peer)

    def _report(
        self, address: str, peer: str, code: str, reason: str, inbound: bool, by_peer: bool
    ) -> None:
        if self._on_refusal is not None:
            self._on_refusal(Refusal(address, peer, code, reason, inbound, by_peer))


async def _send_quietly(channel: Channel, data: bytes) -> None:
    with contextlib.suppress(TransportClosed):
        await channel.send(data)

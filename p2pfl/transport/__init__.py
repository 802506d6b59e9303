"""Authenticated message links between peers: one small interface, two implementations.

``WsTransport`` (websockets, wss with TLS) links institutions; ``MemoryTransport``
links simulated peers in one process. Both run the Ed25519 handshake of
``handshake.Authenticator`` before a link is handed out, and both pass the one
conformance suite in ``tests/p2pfl/transport/test_transport.py``.
"""

from __future__ import annotations

from p2pfl.transport.base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    LINK,
    RELAY,
    Connection,
    Handler,
    Transport,
)
from p2pfl.transport.errors import (
    AuthenticationFailed,
    FramingError,
    MessageTooLarge,
    RateLimited,
    RelayRefused,
    TransportClosed,
)
from p2pfl.transport.handshake import Authenticator, MembershipCheck, RateLimiter, Refusal
from p2pfl.transport.memory import MemoryNetwork, MemoryTransport
from p2pfl.transport.tls import TlsFiles, make_self_signed
from p2pfl.transport.transfers import Transfer, TransferLog, wire_totals
from p2pfl.transport.ws import WsOptions, WsTransport

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "LINK",
    "RELAY",
    "AuthenticationFailed",
    "Authenticator",
    "Connection",
    "FramingError",
    "Handler",
    "MembershipCheck",
    "MemoryNetwork",
    "MemoryTransport",
    "MessageTooLarge",
    "RateLimited",
    "RateLimiter",
    "Refusal",
    "RelayRefused",
    "TlsFiles",
    "Transfer",
    "TransferLog",
    "Transport",
    "TransportClosed",
    "WsOptions",
    "WsTransport",
    "make_self_signed",
    "wire_totals",
]

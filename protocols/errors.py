"""Every error the protocol cores raise, in one tree.

The class says whose fault it is:

- ``LocalProtocolError``: our own misuse of a core (a call out of order, a bad argument).
- ``PeerProtocolError``: a peer sent something wrong; carries the peer's id.
- ``DecodeError``: bytes that are not a valid message (the one error ``decode`` raises).
- ``MembershipError``: membership events or change keys no federation could follow.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of all protocol-core errors."""


class LocalProtocolError(ProtocolError):
    """This node used a protocol core wrongly."""


class PeerProtocolError(ProtocolError):
    """A peer sent a message that breaks the protocol."""

    def __init__(self, peer: object, message: str) -> None:
        super().__init__(f"peer {peer!r}: {message}")
        self.peer = peer


class DecodeError(ProtocolError, ValueError):
    """A byte string is not a valid encoded message."""


class MembershipError(ProtocolError, ValueError):
    """Events that no federation could follow (the message says which and why)."""

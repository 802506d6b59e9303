"""The errors a transport raises, in one tree (all ``P2PFLError``: the CLI prints them plainly).

They say whose fault it is:

- ``MessageTooLarge``: our misuse, a message over the configured maximum (nothing sent);
- ``AuthenticationFailed``: a refused handshake, by us or by the peer
  (``RateLimited``: an address refused for a while after too many failures);
- ``TransportClosed``: a link that is gone or could not be made
  (``FramingError``: closed by us because the peer broke the framing;
  ``RelayRefused``: a relay would not splice us to the peer we asked for).
"""

from __future__ import annotations

from p2pfl.errors import P2PFLError


class TransportClosed(P2PFLError):
    """A link to a peer broke, or could not be made."""


class FramingError(TransportClosed):
    """We closed a link because the peer broke the framing: a message over our limit,
    or a fragmented one longer or shorter than it announced. The peer's fault."""


class RelayRefused(TransportClosed):
    """A relay refused to splice us to a peer (``p2pfl.transport.relay``).

    ``relay`` is its node id, ``code`` a short reason (``not-member``,
    ``not-assigned``, ``malformed``, ``replaced``); the link is retried like one
    that could not be made: the relay's ledger may not know what ours does yet.
    """

    def __init__(self, relay: str, code: str, reason: str) -> None:
        super().__init__(f"relay {relay} refused the splice ({code}): {reason}")
        self.relay = relay
        self.code = code
        self.reason = reason


class MessageTooLarge(P2PFLError):
    """We tried to send a message over the configured maximum size; nothing was sent."""


class AuthenticationFailed(P2PFLError):
    """A handshake was refused, by us or by the peer.

    ``peer`` is the node id the peer claimed, or its address when it never said;
    ``code`` is a short machine-readable reason (``not-member``, ``bad-signature``,
    ``unexpected-peer``, ``malformed``, ``timeout``, ``rate-limited``, ...);
    ``by_peer`` is true when the peer refused us rather than we it.
    """

    def __init__(self, peer: str, code: str, reason: str, *, by_peer: bool = False) -> None:
        whom = "the peer refused us" if by_peer else "refused"
        super().__init__(f"handshake with {peer}: {whom} ({code}): {reason}")
        self.peer = peer
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class RateLimited(AuthenticationFailed):
    """An address failed the handshake too often; its connections are refused for a while."""


__all__ = [
    "AuthenticationFailed",
    "FramingError",
    "MessageTooLarge",
    "RateLimited",
    "RelayRefused",
    "TransportClosed",
]

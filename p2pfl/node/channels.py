"""The channels that share one link: each message starts with its channel's byte.

1 ledger sync (protocols.ledger_sync)    2 gossip (protocols.wire)
3 secure aggregation (protocols.secagg)  4 control (reserved; ignored today)

A ``Router`` hands each received frame to its channel's handler, from one table;
a frame with no channel byte, or a byte no handler is registered for, is the
sending peer's protocol error, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import IntEnum


class Channel(IntEnum):
    LEDGER = 1
    GOSSIP = 2
    SECAGG = 3
    CONTROL = 4


def tag(channel: Channel) -> bytes:
    """The byte a frame of ``channel`` starts with.

    An encoder that takes a prefix (``protocols.wire.encode``) puts it in front
    while it builds the frame, so a model-sized frame is never copied again.
    """
    return bytes((channel,))


def tagged(channel: Channel, frame: bytes | bytearray | memoryview) -> bytes:
    """``frame`` behind its channel's byte: one copy of the frame, whatever its type."""
    return b"".join((tag(channel), frame))


FrameHandler = Callable[[str, Channel, memoryview], None]
"""``handler(peer, channel, body)``: a frame's body is what follows its channel byte."""
PeerError = Callable[[str, str], None]
"""``peer_error(peer, error)``: what to do with a frame no handler takes."""


class Router:
    """Frames to handlers by their channel byte (module docstring)."""

    def __init__(self, handlers: Mapping[Channel, FrameHandler], peer_error: PeerError) -> None:
        self._handlers = {int(channel): (channel, h) for channel, h in handlers.items()}
        self._peer_error = peer_error

    def route(self, peer: str, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view:
            self._peer_error(peer, "an empty frame (no channel)")
            return
        entry = self._handlers.get(view[0])
        if entry is None:
            self._peer_error(peer, f"unknown channel {view[0]}")
            return
        channel, handler = entry
        handler(peer, channel, view[1:])

"""The channels that share one link: each message starts with its channel's byte.

1 ledger sync (protocols.ledger_sync)    2 gossip (protocols.wire)
3 secure aggregation (protocols.secagg)  4 control (reserved; ignored today)
"""

from __future__ import annotations

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

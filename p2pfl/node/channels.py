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


def tagged(channel: Channel, frame: bytes | bytearray | memoryview) -> bytes:
    """``frame`` behind its channel's byte (one copy of the frame)."""
    return bytes((channel,)) + (frame if isinstance(frame, bytes) else bytes(frame))

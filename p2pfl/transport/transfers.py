"""How long large messages took on the wire, as the transport that carried them saw it.

``WsTransport`` keeps a ``TransferLog`` (its ``transfers``) and records each
message it sends or receives in more than one fragment; smaller messages and
other transports record nothing. What the times cover:

- received: from the arrival of the message's first fragment to that of its
  last, the copy into the message buffer included. Fragments that waited in
  buffers while the reader was busy (at most ``max_queue`` fragments and the
  socket's buffers) are not counted, so the time can fall a little short of
  the wire's and the rate come out a little high;
- sent: from the start of ``send`` until it returned, i.e. until the last
  fragment was handed to the socket (``write_limit`` bytes and the socket's
  buffer may still be on the way); it includes waiting on a slow reader.

The log keeps the newest ``keep`` transfers; its owner takes them (``take``),
e.g. once a round. A record costs two ``perf_counter`` calls and an append.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Transfer:
    """One large message: to or from ``peer``, ``size`` bytes in ``seconds``."""

    peer: str
    received: bool
    size: int
    seconds: float


class TransferLog:
    """The newest ``keep`` large transfers of a transport (module docstring)."""

    def __init__(self, keep: int = 64) -> None:
        if keep < 1:
            raise ValueError("a transfer log keeps at least one transfer")
        self._transfers: deque[Transfer] = deque(maxlen=keep)

    def record(self, peer: str, *, received: bool, size: int, seconds: float) -> None:
        self._transfers.append(Transfer(peer, received, size, seconds))

    def take(self) -> list[Transfer]:
        """The transfers recorded since the last ``take``, oldest first; the log is then empty."""
        taken = list(self._transfers)
        self._transfers.clear()
        return taken


def wire_totals(transfers: Iterable[Transfer]) -> dict[str, int | float]:
    """Bytes and seconds on the wire, received and sent, summed (checkpoint metadata)."""
    totals: dict[str, int | float] = {
        "recv_wire_bytes": 0,
        "recv_wire_seconds": 0.0,
        "sent_wire_bytes": 0,
        "sent_wire_seconds": 0.0,
    }
    for t in transfers:
        way = "recv" if t.received else "sent"
        totals[f"{way}_wire_bytes"] += t.size
        totals[f"{way}_wire_seconds"] += t.seconds
    return totals

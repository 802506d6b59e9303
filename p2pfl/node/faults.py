"""What a node does about members that break the protocol: count, audit sparingly, ban.

A member is authenticated, so every fault has a sender: a frame that does not
decode, a model of the wrong length, NaN or infinite values, a round far ahead
or outside the secure window, a replay, a frame claiming another member's id,
a frame on a channel its round does not use. The frame is dropped where it is
found (the protocol cores raise ``PeerProtocolError``); ``Faults`` is told of
it with a kind (a short word naming where it was found) and decides the rest:

- it counts faults per member within ``window`` seconds (at most ``limit``
  timestamps per member are kept, so a flood costs constant memory);
- it says when to audit: once per (member, kind) per ``window``, each record
  carrying how many faults of that kind came since the previous one, so a
  flood of bad frames writes a handful of lines, not one per frame;
- a member with ``limit`` faults within ``window`` is banned for ``ban_seconds``:
  the node closes its link and the handshake refuses it (code ``banned``)
  until the ban lifts, which then happens by itself.

The clock is an argument; the state is bounded by the number of members that
ever faulted (authenticated ids only, never an address).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """What to do about one fault: audit it now (with ``count`` faults of its kind), ban."""

    audit: bool
    count: int
    banned: bool


@dataclass
class _Member:
    recent: deque[float]
    total: int = 0
    bans: int = 0
    banned_until: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)  # faults of each kind, all time
    unaudited: dict[str, int] = field(default_factory=dict)  # since the kind's last record
    audited_at: dict[str, float] = field(default_factory=dict)


class Faults:
    """Faults per member, with the audit and ban decisions (module docstring)."""

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        ban_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or ban_seconds <= 0:
            raise ValueError("faults need limit >= 1, window > 0 and ban_seconds > 0")
        self.limit = limit
        self.window = window
        self.ban_seconds = ban_seconds
        self._clock = clock
        self._members: dict[str, _Member] = {}

    def fault(self, peer: str, kind: str) -> Verdict:
        """Note one fault of ``peer``; a ban starts when this one reaches the limit."""
        now = self._clock()
        member = self._members.get(peer)
        if member is None:
            member = self._members[peer] = _Member(deque(maxlen=self.limit))
        member.total += 1
        member.kinds[kind] = member.kinds.get(kind, 0) + 1
        member.unaudited[kind] = member.unaudited.get(kind, 0) + 1
        audit = now - member.audited_at.get(kind, -self.window) >= self.window
        count = member.unaudited[kind]
        if audit:
            member.audited_at[kind] = now
            member.unaudited[kind] = 0
        banned = False
        if now >= member.banned_until:
            member.recent.append(now)
            while member.recent and member.recent[0] < now - self.window:
                member.recent.popleft()
            if len(member.recent) >= self.limit:
                member.banned_until = now + self.ban_seconds
                member.bans += 1
                member.recent.clear()
                banned = True
        return Verdict(audit, count, banned)

    def banned(self, peer: str) -> bool:
        """Whether ``peer`` is banned now (the handshake asks this)."""
        member = self._members.get(peer)
        return member is not None and self._clock() < member.banned_until

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per member that faulted: totals by kind, bans, seconds of ban left (status file)."""
        now = self._clock()
        return {
            peer: {
                "faults": m.total,
                "kinds": dict(m.kinds),
                "bans": m.bans,
                "banned": now < m.banned_until,
                "ban_left_seconds": round(max(0.0, m.banned_until - now), 3),
            }
            for peer, m in self._members.items()
        }

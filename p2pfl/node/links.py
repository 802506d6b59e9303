"""Links to neighbours: who dials whom, reconnecting with backoff, and what is resent.

Rules:

- Of two neighbours, the one with the smaller node id dials, the other
  accepts; a link either end opens replaces an older one to the same peer
  (the newest wins), so a restarted peer is never locked out by a dead link.
  Reachability comes first (``dials``): a member whose ledger record has no
  address accepts no inbound connection, so on an edge where exactly one end
  is reachable the unreachable end dials, whatever the ids; where neither is,
  both dial the member relaying the edge (``p2pfl.node.relaying``).
- A dialler that fails or loses its link waits ``next(delays)`` from
  ``backoff()``, a generator of delays (it never sleeps itself: the caller
  does), and tries again, forever, until the node stops. The first failed dial
  in a row is logged at INFO with its reason, and so is the dial that recovers;
  the retries between them at DEBUG. Before it first
  reaches a peer, it retries at least every 0.5 s for 15 s
  (``first_contact_delay``): peers started at once come up seconds apart.
- A peer that refuses us as a stranger (``not-member``) holds a replica that
  has not learnt of our admission yet; it will through ledger sync with
  another member. Until then the dialler retries on ``stranger_delays``,
  slower than the usual backoff's start: each refusal costs a token of the
  peer's rate limiter for our host (five, one back every five seconds), and
  the usual 0.2 s start would spend them all in three seconds, locking us
  (and every node sharing our host) out for longer than the peer needs to
  learn of us.
- Each link has one reader and one writer; frames for a peer go through its
  queue in order, so a ledger record sent before a protocol message arrives
  before it.
- Round frames (gossip and secure aggregation) are *retained* per peer, tagged
  with a round, until the round layer prunes them (``prune``: once both ends
  are past that round, ``p2pfl.node.exchange.replay_floor``); a new link to
  the peer first replays them. A frame written to a socket that a reset then
  kills is lost with it, even after this node finished its round, so the
  replay is what a slower neighbour's round gets it from. A restarted
  neighbour thus gets what was sent to it while it was down, and a duplicate
  after a mere reconnection is dropped by the protocol core as such, never
  applied twice. Retention is bounded per peer (``replay_budget`` bytes): a
  frame of a newer round makes room by forgetting the oldest frames of older
  rounds; one that still does not fit is sent but not kept, so a large model
  costs no second copy; a neighbour that misses it closes its round without
  us (straggler or dropout rules).

What the status file shows of a link (``Link.snapshot``) is its live state:
``up`` while a connection is open, ``connecting`` while this end dials (with
the attempt's number), ``refused`` when the last handshake was refused (with
its reason), ``down`` otherwise (with the error that took it down, or why the
last attempt failed). ``since`` moves only when a link comes up or goes down,
so a link that keeps failing to connect says since when it has been trying.
An error is kept only with the state it explains: a link that comes up
forgets it. When the node stops, ``shut`` marks every link down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.transport import (
    AuthenticationFailed,
    Connection,
    FramingError,
    MessageTooLarge,
    Transport,
    TransportClosed,
)

log = logging.getLogger(__name__)


def backoff(
    initial: float = 0.2,
    maximum: float = 5.0,
    *,
    factor: float = 2.0,
    jitter: float = 0.25,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Delays before reconnection attempts: ``initial``, growing by ``factor`` up to ``maximum``.

    Each delay is shortened by up to ``jitter`` (a fraction) drawn from ``rng``,
    so peers that lost each other at once do not retry in lockstep. The
    generator is infinite and never sleeps.
    """
    if not 0 < initial <= maximum or factor < 1 or not 0 <= jitter < 1:
        raise ValueError("backoff needs 0 < initial <= maximum, factor >= 1, 0 <= jitter < 1")
    draw = rng or random.Random()
    delay = initial
    while True:
        yield delay * (1 - jitter * draw.random())
        delay = min(maximum, delay * factor)


FIRST_CONTACT_RETRY = 0.5
FIRST_CONTACT_WINDOW = 15.0


def first_contact_delay(delay: float, waited: float) -> float:
    """The delay before a retry to a peer never reached yet, ``waited`` s into the dialling.

    Sites started together come up within seconds of each other (a daemon's imports
    alone take a few), and a backoff doubling from 0.2 s would add up to its last
    delay to the first link: for the first ``FIRST_CONTACT_WINDOW`` seconds a dial
    is retried at least every ``FIRST_CONTACT_RETRY`` seconds (a closed port costs a
    round trip), then the backoff takes over.
    """
    return min(delay, FIRST_CONTACT_RETRY) if waited < FIRST_CONTACT_WINDOW else delay


def dials(me: str, peer: str, *, me_reachable: bool = True, peer_reachable: bool = True) -> bool:
    """Whether ``me`` dials its neighbour ``peer`` (module docstring).

    Exactly one end reachable: the other end dials. Both reachable: the smaller
    id. Neither: both ends dial (the relay that splices them), so both get True.
    """
    if me_reachable != peer_reachable:
        return not me_reachable
    return me < peer if me_reachable else True


def _unknown_to_peer(exc: Exception) -> bool:
    """The peer refused us as a stranger: its replica does not know our admission yet."""
    return isinstance(exc, AuthenticationFailed) and exc.by_peer and exc.code == "not-member"


def _raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was cancelled and the error got lost.

    A cancellation that arrives while a link's cleanup awaits its writer (``serve``)
    is swallowed with the writer's own: the dial loop would then dial on forever and
    the node's stop would wait for it (a daemon that never exited after its rounds).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class LinkState(StrEnum):
    DOWN = "down"
    CONNECTING = "connecting"
    REFUSED = "refused"
    UP = "up"


@dataclass(eq=False)
class Session:
    """One live connection to a peer, with its outgoing queue."""

    conn: Connection
    queue: asyncio.Queue[bytes | bytearray] = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class Link:
    """What the node knows of its link to one peer (the status file shows it)."""

    peer: str
    address: str = ""  # where this end dials: the peer's address, or its relay's
    dials: bool = False
    via: str = ""  # the member relaying the link ("": a direct link)
    state: LinkState = LinkState.DOWN
    since: float = field(default_factory=time.time)
    error: str = ""  # why the link is down or refused ("" while up or connecting)
    attempts: int = 0  # dial attempts since the link was last up
    connects: int = 0
    unsent: int = 0  # frames too large to send
    sent_bytes: int = 0
    received_bytes: int = 0
    synced: bool = False
    retained: list[tuple[int, bytes | bytearray]] = field(default_factory=list)
    retained_bytes: int = 0
    session: Session | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False  # dialled no more: the dial loop returns once the live link ends

    def set_state(self, state: LinkState, error: str = "") -> None:
        """Enter ``state``; ``error`` explains a down or refused link and is dropped otherwise."""
        if (state is LinkState.UP) != (self.state is LinkState.UP):
            self.since = time.time()
        if state is LinkState.UP:
            self.attempts = 0
        elif state is LinkState.CONNECTING:
            self.attempts += 1
        self.state = state
        self.error = error if state in (LinkState.DOWN, LinkState.REFUSED) else ""

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "address": self.address,
            "dials": self.dials,
            "via": self.via,
            "since": self.since,
            "last_error": self.error,
            "attempts": self.attempts,
            "connects": self.connects,
            "unsent_frames": self.unsent,
            "sent_bytes": self.sent_bytes,
            "received_bytes": self.received_bytes,
            "retained_frames": len(self.retained),
            "retained_bytes": self.retained_bytes,
        }


FrameHandler = Callable[[str, bytes | memoryview], None]
RelayDial = Callable[[str, str, str], Awaitable[Connection]]
"""``relay_dial(peer, relay, relay_address)``: a link to ``peer`` through ``relay``."""
UpHandler = Callable[[str], list[bytes]]
DownHandler = Callable[[str, str], None]


class LinkManager:
    """The node's links: accepts, dials, queues, replays (module docstring)."""

    def __init__(
        self,
        me: str,
        transport: Transport,
        *,
        on_frame: FrameHandler,
        on_up: UpHandler,
        on_down: DownHandler,
        delays: Callable[[], Iterator[float]],
        stranger_delays: Callable[[], Iterator[float]] = lambda: backoff(1.0, 5.0),
        replay_budget: int = 64 << 20,
        on_fault: DownHandler | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        relay_dial: RelayDial | None = None,
    ) -> None:
        self.me = me
        self._relay_dial = relay_dial
        self._on_fault = on_fault  # (peer, error): a link closed for the peer's framing
        self._stranger_delays = stranger_delays
        self._sleep = sleep
        self.replay_budget = replay_budget
        self.transport = transport
        self._on_frame = on_frame
        self._on_up = on_up
        self._on_down = on_down
        self._delays = delays
        self.links: dict[str, Link] = {}

    def link(self, peer: str) -> Link:
        if peer not in self.links:
            self.links[peer] = Link(peer)
        return self.links[peer]

    def add_neighbour(
        self, peer: str, address: str, *, dials: bool | None = None, via: str = ""
    ) -> Link:
        """Keep a link to ``peer``; ``dials`` says whether this end dials (default: by ids).

        With ``via``, the link goes through that relay, dialled at ``address``; a
        change of relay takes effect at the next dial (a live link stays up).
        """
        link = self.link(peer)
        link.address = address
        link.dials = self.me < peer if dials is None else dials
        link.via = via
        link.retired = False
        return link

    def retire(self, peer: str) -> bool:
        """Dial ``peer`` no more once its live link ends; False if none is live now.

        The live link is left to end by itself, and the dial loop returns then: a
        member that left lingers until its neighbours confirm they hold its last
        records, then closes its links, and cutting one before would leave it
        waiting out its linger for a confirmation that cannot come (the node closes
        a revoked member's link itself, as no longer a valid member). With no live
        link the caller cancels the loop.
        """
        link = self.links.get(peer)
        if link is None or link.session is None:
            return False
        link.retired = True
        return True

    # -- sending ---------------------------------------------------------------------

    def send(self, peer: str, frame: bytes | bytearray, *, round: int | None = None) -> None:
        """Queue ``frame`` for ``peer``; with ``round``, keep it for replay after a reconnection."""
        link = self.link(peer)
        if round is not None:
            self._retain(link, round, frame)
        if link.session is not None:
            link.session.queue.put_nowait(frame)

    def _retain(self, link: Link, round: int, frame: bytes | bytearray) -> None:
        """Keep ``frame`` for replay, forgetting older rounds' frames first if it needs room.

        Nothing is forgotten for a frame that would not fit even then.
        """
        size = len(frame)
        retained = link.retained  # in the order sent: round tags never decrease
        older = sum(len(f) for r, f in retained if r < round)
        if link.retained_bytes - older + size > self.replay_budget:
            return
        while link.retained_bytes + size > self.replay_budget:
            link.retained_bytes -= len(retained.pop(0)[1])
        retained.append((round, frame))
        link.retained_bytes += size

    def broadcast(self, frame: bytes) -> None:
        """Queue ``frame`` for every peer with a live link (ledger and control messages)."""
        for link in self.links.values():
            if link.session is not None:
                link.session.queue.put_nowait(frame)

    def prune(self, peer: str, below: int) -> None:
        """Forget retained frames of rounds before ``below`` for ``peer``."""
        link = self.links.get(peer)
        if link is not None and link.retained:
            link.retained = [(r, f) for r, f in link.retained if r >= below]
            link.retained_bytes = sum(len(f) for _, f in link.retained)

    # -- connections -----------------------------------------------------------------

    async def dial_loop(self, peer: str) -> None:
        """Keep a link to ``peer`` up, dialling with backoff; runs until cancelled, or until
        the link ends once the peer is retired (``retire``)."""
        link = self.link(peer)
        delays = self._delays()
        failed = 0  # dials failed in a row: the first is logged at INFO, the rest at DEBUG
        stranger = self._stranger_delays()
        waited = 0.0  # before the first contact: see ``first_contact_delay``
        while True:
            _raise_if_cancelled()
            if link.retired and link.session is None:
                return
            if link.session is not None:  # the peer dialled us: wait for that link to end
                link.ended.clear()
                await link.ended.wait()
                continue
            link.set_state(LinkState.CONNECTING)
            wait = delays
            where = f"{link.address} (relay {link.via})" if link.via else link.address
            try:
                conn = await self._connect(link)
            except (AuthenticationFailed, TransportClosed, ConfigError, OSError) as exc:
                refused = isinstance(exc, AuthenticationFailed)
                reason = str(exc) or type(exc).__name__
                link.set_state(LinkState.REFUSED if refused else LinkState.DOWN, reason)
                failed += 1
                level = logging.INFO if failed == 1 else logging.DEBUG
                what = "handshake refused by" if refused else "cannot reach"
                log.log(level, "%s %s at %s: %s (retrying)", what, peer, where, reason)
                wait = stranger if _unknown_to_peer(exc) else delays
            else:
                if failed:
                    log.info("reached %s at %s after %d failed dials", peer, where, failed)
                failed = 0
                delays, stranger = self._delays(), self._stranger_delays()
                wait = delays
                await self.serve(conn)
                if link.retired:
                    return
            delay = next(wait)
            if link.connects == 0 and wait is delays:
                delay = first_contact_delay(delay, waited)
                waited += delay
            _raise_if_cancelled()
            await self._sleep(delay)

    async def _connect(self, link: Link) -> Connection:
        """Dial ``link``'s peer: directly, or through its relay."""
        if not link.via:
            return await self.transport.connect(link.address, expected_peer=link.peer)
        if self._relay_dial is None:
            raise ConfigError(f"the link to {link.peer} needs a relay, and this node dials none")
        return await self._relay_dial(link.peer, link.via, link.address)

    async def serve(self, conn: Connection) -> None:
        """Run one link until it closes: replay, then read and write (the accept handler)."""
        peer = conn.peer_id
        link = self.link(peer)
        old = link.session
        session = Session(conn)
        link.session = session
        if old is not None:
            log.info("a new link to %s replaces the old one", peer)
            await old.conn.close()
        link.connects += 1
        link.synced = False
        link.set_state(LinkState.UP)
        for first in self._on_up(peer):
            session.queue.put_nowait(first)
        for _, frame in link.retained:
            session.queue.put_nowait(frame)
        reason = "closed"
        writer = asyncio.create_task(self._write(link, session))
        try:
            reason = await self._read(link, session)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer  # (a cancellation of this task too: the dial loop re-raises it)
            await conn.close()
            if link.session is session:
                link.session = None
                link.synced = False
                link.set_state(LinkState.DOWN, reason)
                self._on_down(peer, reason)
                link.ended.set()

    async def _read(self, link: Link, session: Session) -> str:
        while True:
            try:
                data = await session.conn.recv()
            except FramingError as exc:
                if self._on_fault is not None:
                    self._on_fault(link.peer, str(exc))
                return str(exc)
            except TransportClosed as exc:
                return str(exc)
            link.received_bytes += len(data)
            self._on_frame(link.peer, data)
            del data  # a model-sized frame must not outlive its use while the next one arrives

    async def _write(self, link: Link, session: Session) -> None:
        while True:
            frame = await session.queue.get()
            try:
                await session.conn.send(frame)
            except MessageTooLarge as exc:
                link.unsent += 1
                log.error("not sent to %s: %s", link.peer, exc)
                continue
            except TransportClosed:
                await session.conn.close()  # the reader sees it and ends the link
                return
            link.sent_bytes += len(frame)
            del frame  # nor may a sent one wait here for the next

    def refused(self, peer: str, reason: str) -> None:
        """A handshake with ``peer`` was refused (either way); an open link stays up."""
        link = self.links.get(peer)
        if link is not None and link.session is None:
            link.set_state(LinkState.REFUSED, reason)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {peer: link.snapshot() for peer, link in sorted(self.links.items())}

    def shut(self, reason: str) -> None:
        """Every link is down: the node stopped and its transport, closed, holds none open."""
        for link in self.links.values():
            link.session = None
            link.synced = False
            if link.state is not LinkState.DOWN:
                link.set_state(LinkState.DOWN, reason)

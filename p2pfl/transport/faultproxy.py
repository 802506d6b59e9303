"""A fault-injecting TCP proxy for rehearsals, tests and benchmarks on one machine.

Loopback links never lose a packet, wait or slow down, so a federation rehearsed
on one machine never meets what a WAN does to it. ``FaultProxy`` sits in front
of one listener (a node daemon's ``listen`` port): peers dial the proxy, and it
dials the target for each connection it accepts, then forwards the bytes both
ways, unchanged (a TLS session passes through end to end: the proxy never reads
it), adding what ``LinkFaults`` asks for:

- latency: every chunk read on one side is written on the other ``latency`` +
  U(0, ``jitter``) seconds later, order kept (a chunk never overtakes the one
  before it), reading never waiting for writing, so latency does not cap
  throughput;
- bandwidth: a token bucket per direction (``bandwidth`` bytes per second,
  ``burst`` bytes deep) paces the writes; 0 leaves a direction uncapped;
- resets: each connection is reset (``SO_LINGER`` 0, both sides get an RST) after
  an exponentially distributed time (``resets_per_second``) or number of bytes
  forwarded both ways (``resets_per_mb``), whichever comes first; or at a
  moment the caller chooses (``reset_all``);
- partitions, at moments the caller chooses (``partition``, ``heal``): ``"up"``
  cuts the bytes from the dialler to the target, ``"down"`` those back,
  ``"both"`` both ways (``DIRECTIONS``).

While a direction is cut, every chunk due on it (what is read then, and what
was still in flight, delayed or paced) is discarded and counted (``dropped``):
it is never delivered, as a partition loses packets. Nothing tells the other
side: an end of stream or a failure of one side that would travel a cut
direction waits for the heal, so each end learns of the cut only by its own
timeouts, as it would across a real network. A ``"both"`` partition refuses new
connections (accepted, then reset at once: ``refused``); a one-way partition
accepts and forwards them with the same direction cut, so a dialler's
handshake waits for an answer that never comes, as behind a one-way cut on a
real network. ``heal`` ends the partition: later bytes flow, new connections are
forwarded, and every connection that lost bytes to it is reset then (a TCP
stream with a hole in it cannot go on: a real one would have retransmitted
them or timed out), while those that lost nothing carry on as if nothing had
happened (``heal(reset=False)`` lets all of them go on, holes and all).

Every draw comes from a ``random.Random`` seeded with ``(seed, connection
index)`` (``connection_rng``), so a seed gives the same faults to the n-th
connection of every run; ``LinkFaults.reset_after`` is the pure schedule a test
can recompute. A link is one proxy: give each daemon (or each pair) its own, with
its own faults, and record the proxy's address in the ledger (``[node]
advertise``, docs/node.md). ``async with FaultProxy(...)`` closes it cleanly:
the listener, every connection and every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType

log = logging.getLogger(__name__)

MB = 1_000_000
CHUNK = 64 << 10  # bytes read at once
QUEUED = 64  # chunks in flight per direction before reading waits
DIRECTIONS = ("up", "down", "both")  # what ``FaultProxy.partition`` cuts


@dataclass(frozen=True)
class LinkFaults:
    """What a proxy does to the connections through it (seconds, bytes); zeros do nothing."""

    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float = 0.0  # bytes per second, each direction; 0: uncapped
    burst: int = CHUNK  # token-bucket depth, bytes
    resets_per_second: float = 0.0
    resets_per_mb: float = 0.0

    def __post_init__(self) -> None:
        values = (self.latency, self.jitter, self.bandwidth, self.resets_per_second)
        if min(*values, self.resets_per_mb) < 0:
            raise ValueError("fault rates, latency and bandwidth must be >= 0")
        if self.burst < 1:
            raise ValueError("a token bucket needs burst >= 1 byte")

    def reset_after(self, rng: random.Random) -> tuple[float, float]:
        """(seconds, bytes) after which a connection is reset; ``inf`` for never.

        Drawn first from the connection's ``rng``, seconds then bytes, so the
        schedule of a seed can be recomputed outside the proxy.
        """
        seconds = rng.expovariate(self.resets_per_second) if self.resets_per_second else math.inf
        size = rng.expovariate(self.resets_per_mb) * MB if self.resets_per_mb else math.inf
        return seconds, size

    def delay(self, rng: random.Random) -> float:
        """The latency of one chunk."""
        return self.latency + (rng.uniform(0.0, self.jitter) if self.jitter else 0.0)


def connection_rng(seed: int, index: int, stream: str = "resets") -> random.Random:
    """The generator of connection ``index`` (accept order) of a proxy seeded ``seed``."""
    return random.Random(f"{seed}/{index}/{stream}")


class TokenBucket:
    """``rate`` bytes per second, ``burst`` deep; ``take`` says how long to wait first."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = now

    def take(self, size: int, now: float) -> float:
        """Take ``size`` tokens (going into debt); the seconds until the debt is paid."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= size
        return max(0.0, -self.tokens / self.rate)


@dataclass(frozen=True)
class Reset:
    """A connection the proxy reset: its index, seconds after it opened, bytes forwarded."""

    connection: int
    after: float
    forwarded: int


@dataclass(eq=False)
class _Pipe:
    """One connection's state: both streams and what has crossed."""

    index: int
    opened: float
    sides: list[asyncio.StreamWriter] = field(default_factory=list)
    forwarded: int = 0
    reset_bytes: float = math.inf
    ended: int = 0  # directions that reached their end of stream
    lost: int = 0  # bytes a partition discarded
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FaultProxy:
    """A TCP proxy from ``host:port`` (0: a free port) to ``target``, with ``faults``."""

    def __init__(
        self,
        target: tuple[str, int],
        faults: LinkFaults | None = None,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.target = target
        self.faults = faults or LinkFaults()
        self.seed = seed
        self._bind = (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._pipes: set[_Pipe] = set()  # connections being forwarded
        self.resets: list[Reset] = []
        self.forwarded = 0  # bytes, both directions, all connections
        self._cut: str | None = None  # the partition's direction
        self._healed = asyncio.Event()  # set while no partition holds
        self._healed.set()
        self._dropped = 0
        self._refused = 0

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self._bind)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._accepted

    @property
    def active(self) -> int:
        """Connections being forwarded now."""
        return len(self._tasks)

    @property
    def partitioned(self) -> str | None:
        """The direction cut now (``DIRECTIONS``), ``None`` while none is."""
        return self._cut

    @property
    def dropped(self) -> int:
        """Bytes partitions discarded so far, both directions, all connections."""
        return self._dropped

    @property
    def refused(self) -> int:
        """Connections refused so far (accepted during a ``"both"`` partition, then reset)."""
        return self._refused

    def partition(self, direction: str = "both") -> None:
        """Cut ``direction`` (``DIRECTIONS``) from now until ``heal`` (module docstring).

        A partition in force is replaced: ``"up"`` then ``"both"`` cuts both ways.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"a partition cuts one of {', '.join(DIRECTIONS)}, not {direction!r}")
        self._cut = direction
        self._healed.clear()

    def heal(self, *, reset: bool = True) -> int:
        """End the partition; reset the connections that lost bytes to it, and say how many.

        ``reset=False`` lets them go on instead, a hole in each stream: what the
        endpoints make of it depends on where the lost chunks began and ended (a
        websocket over plain TCP on loopback may lose whole messages and parse on;
        TLS numbers its records, so a session cannot read past a lost one). Call it
        from the proxy's event loop; healing an unpartitioned proxy does nothing.
        """
        self._cut = None
        self._healed.set()
        if not reset:
            return 0
        broken = [pipe for pipe in self._pipes if pipe.lost and not pipe.done.is_set()]
        for pipe in broken:
            self._reset(pipe)
        return len(broken)

    def _cuts(self, direction: str) -> bool:
        return self._cut is not None and self._cut in (direction, "both")

    async def _across(self, direction: str) -> None:
        """Wait until news of an end may travel ``direction`` (it is not cut)."""
        while self._cuts(direction):
            await self._healed.wait()

    async def close(self) -> None:
        """Stop listening, drop every connection, wait for every task; idempotent."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut == "both":
            self._refused += 1
            _linger_zero(writer)
            writer.transport.abort()
            return
        index = self._accepted
        self._accepted += 1
        task = asyncio.get_running_loop().create_task(self._serve(index, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Forward one connection until both directions end, a side fails, or its reset."""
        loop = asyncio.get_running_loop()
        pipe = _Pipe(index, loop.time(), [writer])
        directions: list[asyncio.Task[None]] = []
        self._pipes.add(pipe)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                log.debug("proxy connection %d: target %s: %s", index, self.target, exc)
                return
            pipe.sides.append(up_writer)
            seconds, pipe.reset_bytes = self.faults.reset_after(connection_rng(self.seed, index))
            directions = [
                loop.create_task(self._direction(pipe, reader, up_writer, "up")),
                loop.create_task(self._direction(pipe, up_reader, writer, "down")),
            ]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(seconds) else seconds):
                    await pipe.done.wait()
            self._reset(pipe)
        finally:
            self._pipes.discard(pipe)
            for task in directions:
                task.cancel()
            await asyncio.gather(*directions, return_exceptions=True)
            for side in pipe.sides:
                side.transport.abort()

    def reset_all(self) -> int:
        """Reset every connection being forwarded, now (a fault at a moment a test chooses).

        What is still in flight through the proxy (delayed or paced) is lost with
        them, as it is with an RST on a real link. Returns how many were reset.
        """
        live = [pipe for pipe in self._pipes if len(pipe.sides) == 2 and not pipe.done.is_set()]
        for pipe in live:
            self._reset(pipe)
        return len(live)

    def _reset(self, pipe: _Pipe) -> None:
        """Abort both sides: an RST each way if still open (a reset), a plain drop once ended."""
        if not pipe.done.is_set():
            after = asyncio.get_running_loop().time() - pipe.opened
            self.resets.append(Reset(pipe.index, after, pipe.forwarded))
            for side in pipe.sides:
                _linger_zero(side)
        pipe.done.set()
        for side in pipe.sides:
            side.transport.abort()

    async def _direction(
        self,
        pipe: _Pipe,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        name: str,
    ) -> None:
        """Read one side, hand chunks to the writer with their delivery times."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED)
        rng = connection_rng(self.seed, pipe.index, name)
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deliver(pipe, queue, writer, name))
            last = 0.0
            try:
                while data := await reader.read(CHUNK):
                    last = max(last, loop.time() + self.faults.delay(rng))
                    await queue.put((last, data))
            except OSError:
                await self._across(name)
                pipe.done.set()  # a side failed: drop the other too
                return
            await queue.put((last, b""))  # end of stream, after what was read

    async def _deliver(
        self,
        pipe: _Pipe,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        name: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self.faults.bandwidth, self.faults.burst, loop.time())
        back = "down" if name == "up" else "up"
        while True:
            at, data = await queue.get()
            await asyncio.sleep(max(0.0, at - loop.time()))
            if not data:
                await self._across(name)
                with contextlib.suppress(OSError):
                    writer.write_eof()
                pipe.ended += 1
                if pipe.ended == 2:
                    pipe.done.set()
                return
            if self.faults.bandwidth:
                await asyncio.sleep(bucket.take(len(data), loop.time()))
            if self._cuts(name):  # lost: neither delivered nor kept
                pipe.lost += len(data)
                self._dropped += len(data)
                continue
            pipe.forwarded += len(data)
            self.forwarded += len(data)
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                await self._across(back)
                pipe.done.set()
                return
            if pipe.forwarded >= pipe.reset_bytes:
                self._reset(pipe)
                return


def _linger_zero(writer: asyncio.StreamWriter) -> None:
    """Make the coming close an RST (``SO_LINGER`` on, 0 seconds)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

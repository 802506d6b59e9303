"""The fault proxy (``p2pfl.transport.faultproxy``) between two loopback sockets.

A target server on 127.0.0.1 either echoes or counts what it receives; clients
dial the proxy in front of it. Timings are checked within tolerances wide enough
for a loaded machine, and one-sided where load can only add time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from p2pfl.transport.faultproxy import FaultProxy, LinkFaults, TokenBucket, connection_rng

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def proxied(
    faults: LinkFaults, handler: Handler = echo, seed: int = 0
) -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with FaultProxy(("127.0.0.1", port), faults, seed=seed) as proxy:
            yield proxy
    finally:
        server.close()
        await server.wait_closed()


async def dial(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


def test_bytes_cross_both_ways_unchanged() -> None:
    payload = os.urandom(3_000_000)

    async def main() -> bytes:
        async with proxied(LinkFaults(latency=0.001, jitter=0.002)) as proxy:
            reader, writer = await dial(proxy)

            async def send() -> None:
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sending = asyncio.create_task(send())
            back = await reader.read()  # to the end of stream: the echo's, through the proxy
            await sending
            writer.close()
            return back

    back = asyncio.run(main())
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()


def test_latency_is_added_each_way() -> None:
    latency = 0.1

    async def main() -> list[float]:
        async with proxied(LinkFaults(latency=latency)) as proxy:
            reader, writer = await dial(proxy)
            rtts = []
            for _ in range(3):
                t0 = time.perf_counter()
                writer.write(b"ping")
                await writer.drain()
                await reader.readexactly(4)
                rtts.append(time.perf_counter() - t0)
            writer.close()
            return rtts

    rtts = asyncio.run(main())
    assert all(2 * latency <= rtt < 2 * latency + 0.15 for rtt in rtts), rtts


def test_bandwidth_is_capped_per_direction() -> None:
    rate, size = 4_000_000.0, 2_000_000
    received: list[int] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(1 << 16):
            total += len(data)
        received.append(total)
        writer.write(b"done")
        await writer.drain()
        writer.close()

    async def main() -> float:
        async with proxied(LinkFaults(bandwidth=rate), count) as proxy:
            reader, writer = await dial(proxy)
            t0 = time.perf_counter()
            writer.write(bytes(size))
            await writer.drain()
            writer.write_eof()
            assert await reader.read() == b"done"
            writer.close()
            return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    assert received == [size]
    expected = (size - LinkFaults().burst) / rate
    assert expected * 0.95 <= elapsed < expected * 1.5 + 0.2, (elapsed, expected)


def test_the_token_bucket_paces_to_its_rate() -> None:
    bucket = TokenBucket(1000.0, 100, now=0.0)
    assert bucket.take(100, 0.0) == 0.0
    assert bucket.take(500, 0.0) == pytest.approx(0.5)
    assert bucket.take(100, 0.5) == pytest.approx(0.1)  # the debt was paid at 0.5


def test_connections_are_reset_at_the_seeded_times() -> None:
    faults, seed = LinkFaults(resets_per_second=2.0), 3
    expected = [faults.reset_after(connection_rng(seed, i))[0] for i in range(3)]

    async def main() -> tuple[list[float], list[type[BaseException] | None], FaultProxy]:
        seen, how = [], []
        async with proxied(faults, seed=seed) as proxy:
            for _ in expected:
                reader, writer = await dial(proxy)
                t0 = time.perf_counter()
                error: type[BaseException] | None = None
                try:
                    await reader.read()
                except ConnectionResetError as exc:
                    error = type(exc)
                seen.append(time.perf_counter() - t0)
                how.append(error)
                writer.close()
            return seen, how, proxy

    seen, how, proxy = asyncio.run(main())
    assert how == [ConnectionResetError] * 3  # an RST, not a clean end of stream
    assert [r.connection for r in proxy.resets] == [0, 1, 2]
    for got, want, reset in zip(seen, expected, proxy.resets, strict=True):
        assert reset.after == pytest.approx(want, abs=0.05)
        assert want - 0.05 <= got < want + 0.25


def test_connections_are_reset_after_the_seeded_bytes() -> None:
    faults, seed = LinkFaults(resets_per_mb=1.0), 5
    limit = faults.reset_after(connection_rng(seed, 0))[1]  # about 243 kB for this seed

    async def main() -> tuple[int, FaultProxy]:
        async with proxied(faults, seed=seed) as proxy:
            reader, writer = await dial(proxy)
            back = 0
            with pytest.raises(ConnectionResetError):
                while True:
                    writer.write(bytes(10_000))
                    await writer.drain()
                    data = await reader.read(1 << 16)
                    if not data:
                        break
                    back += len(data)
            writer.close()
            return back, proxy

    back, proxy = asyncio.run(main())
    (reset,) = proxy.resets
    assert limit <= reset.forwarded < limit + 2 * (64 << 10)
    assert back < reset.forwarded


def test_reset_all_cuts_every_connection_now_and_loses_what_is_in_flight() -> None:
    async def main() -> tuple[int, list[bytes], FaultProxy]:
        async with proxied(LinkFaults(latency=0.5)) as proxy:
            streams = [await dial(proxy) for _ in range(2)]
            for _, writer in streams:
                writer.write(b"in flight")  # delayed half a second: still in the proxy
                await writer.drain()
            await asyncio.sleep(0.05)
            count = proxy.reset_all()
            got = []
            for reader, writer in streams:
                with pytest.raises(ConnectionResetError):
                    got.append(await reader.read())
                writer.close()
            return count, got, proxy

    count, got, proxy = asyncio.run(main())
    assert count == 2 and got == []
    assert sorted(r.connection for r in proxy.resets) == [0, 1]


def test_the_proxy_closes_cleanly_with_connections_open() -> None:
    async def main() -> None:
        async with proxied(LinkFaults(latency=0.01)) as proxy:
            streams = [await dial(proxy) for _ in range(3)]
            for reader, writer in streams:
                writer.write(b"x")
                await writer.drain()
                assert await reader.readexactly(1) == b"x"
            port = proxy.port
            assert proxy.active == 3
            await proxy.close()
            assert proxy.active == 0  # every connection's task ended
            for reader, writer in streams:
                assert await reader.read() == b""  # dropped, not left hanging
                writer.close()
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            await proxy.close()  # idempotent

    asyncio.run(main())


def test_bad_faults_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        LinkFaults(latency=-1.0)
    with pytest.raises(ValueError, match="burst"):
        LinkFaults(burst=0)


# -- partitions ---------------------------------------------------------------------------

GUARD = 10.0  # seconds any wait below may take before the test fails (a guard, not a figure)


class Target:
    """A server on 127.0.0.1 that keeps what each connection sent, and its writers to answer."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.ended: list[bool] = []
        self.changed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(bytearray())
        self.writers.append(writer)
        self.ended.append(False)
        self.changed.set()
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                self.received[index] += data
                self.changed.set()
        self.ended[index] = True
        self.changed.set()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(GUARD):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (the proxy's counters) until it holds, within the guard."""
    async with asyncio.timeout(GUARD):
        while not predicate():
            await asyncio.sleep(0.01)


@asynccontextmanager
async def target_proxy() -> AsyncIterator[tuple[Target, FaultProxy]]:
    target = Target()
    try:
        async with proxied(LinkFaults(), target.handle) as proxy:
            yield target, proxy
    finally:
        target.close()


async def connected(
    target: Target, proxy: FaultProxy
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter]:
    """A connection through ``proxy``, once the target holds it: (reader, writer, its writer)."""
    before = len(target.writers)
    reader, writer = await dial(proxy)
    await target.until(lambda: len(target.writers) > before)
    return reader, writer, target.writers[before]


def test_an_up_partition_loses_what_the_dialler_sends_and_lets_the_answers_through() -> None:
    async def main() -> None:
        async with target_proxy() as (target, proxy):
            reader, writer, back = await connected(target, proxy)
            proxy.partition("up")
            assert proxy.partitioned == "up"
            writer.write(b"lost")
            await writer.drain()
            await until(lambda: proxy.dropped == 4)
            back.write(b"answer")
            await back.drain()
            assert await reader.readexactly(6) == b"answer"  # the other way still flows
            assert target.received == [bytearray()]  # discarded, not held back
            assert proxy.refused == 0
            writer.close()

    asyncio.run(main())


def test_a_down_partition_loses_what_the_target_sends_and_lets_the_dialler_through() -> None:
    async def main() -> None:
        async with target_proxy() as (target, proxy):
            reader, writer, back = await connected(target, proxy)
            proxy.partition("down")
            back.write(b"lost!")
            await back.drain()
            await until(lambda: proxy.dropped == 5)
            writer.write(b"ask")
            await writer.drain()
            await target.until(lambda: target.received[0] == b"ask")
            assert proxy.heal() == 1  # it lost bytes: reset, not resumed with a hole
            with pytest.raises(ConnectionResetError):
                await reader.read()  # nothing of what was lost arrives, ever
            writer.close()

    asyncio.run(main())


def test_a_partition_both_ways_loses_everything_and_refuses_new_connections() -> None:
    async def main() -> None:
        async with target_proxy() as (target, proxy):
            _reader, writer, back = await connected(target, proxy)
            proxy.partition("both")
            writer.write(b"up")
            back.write(b"down")
            await writer.drain()
            await back.drain()
            await until(lambda: proxy.dropped == 6)
            for _ in range(2):
                refused_reader, refused_writer = await dial(proxy)
                with contextlib.suppress(ConnectionResetError):
                    assert await refused_reader.read() == b""
                refused_writer.close()
            assert proxy.refused == 2
            assert proxy.connections == 1 and len(target.writers) == 1  # none reached it
            assert target.received == [bytearray()]
            writer.close()

    asyncio.run(main())


def test_an_end_of_stream_waits_for_the_heal_and_a_connection_that_lost_nothing_goes_on() -> None:
    async def main() -> None:
        async with target_proxy() as (target, proxy):
            reader, writer, back = await connected(target, proxy)
            _closing_reader, closing_writer, _ = await connected(target, proxy)
            proxy.partition("both")
            closing_writer.write_eof()
            await asyncio.sleep(0.2)  # time for an end of stream to cross, were it let through
            assert target.ended == [False, False]
            assert proxy.heal() == 0  # neither lost a byte: both carry on
            assert proxy.partitioned is None
            await target.until(lambda: target.ended[1])  # the end crossed once healed
            writer.write(b"after")
            await writer.drain()
            await target.until(lambda: target.received[0] == b"after")
            back.write(b"back")
            await back.drain()
            assert await reader.readexactly(4) == b"back"
            assert proxy.dropped == 0 and proxy.resets == []
            writer.close()
            closing_writer.close()

    asyncio.run(main())


def test_heal_resets_what_lost_bytes_and_forwards_new_connections_again() -> None:
    async def main() -> None:
        async with target_proxy() as (target, proxy):
            reader, writer, _ = await connected(target, proxy)
            proxy.partition("both")
            writer.write(b"x" * 1000)
            await writer.drain()
            await until(lambda: proxy.dropped == 1000)
            assert proxy.heal() == 1
            with pytest.raises(ConnectionResetError):
                await reader.read()
            assert [r.connection for r in proxy.resets] == [0]
            fresh_reader, fresh_writer, fresh_back = await connected(target, proxy)
            fresh_writer.write(b"flows")
            await fresh_writer.drain()
            await target.until(lambda: target.received[1] == b"flows")
            fresh_back.write(b"again")
            await fresh_back.drain()
            assert await fresh_reader.readexactly(5) == b"again"
            assert target.received[0] == b""  # what was lost stays lost
            assert (proxy.dropped, proxy.refused, proxy.connections) == (1000, 0, 2)
            writer.close()
            fresh_writer.close()

    asyncio.run(main())


def test_heal_without_reset_lets_a_connection_go_on_past_what_it_lost() -> None:
    async def main() -> None:
        async with target_proxy() as (target, proxy):
            reader, writer, back = await connected(target, proxy)
            proxy.partition("both")
            writer.write(b"lost")
            await writer.drain()
            await until(lambda: proxy.dropped == 4)
            assert proxy.heal(reset=False) == 0
            writer.write(b"later")
            await writer.drain()
            await target.until(lambda: target.received[0] == b"later")  # the hole stays
            back.write(b"back")
            await back.drain()
            assert await reader.readexactly(4) == b"back"
            assert proxy.resets == []
            writer.close()

    asyncio.run(main())


def test_a_one_way_partition_forwards_new_connections_with_the_same_direction_cut() -> None:
    async def main() -> None:
        async with target_proxy() as (target, proxy):
            proxy.partition("down")
            _reader, writer, back = await connected(target, proxy)  # accepted: not refused
            writer.write(b"hello")
            await writer.drain()
            await target.until(lambda: target.received[0] == b"hello")
            back.write(b"never")
            await back.drain()
            await until(lambda: proxy.dropped == 5)
            assert proxy.refused == 0 and proxy.connections == 1
            proxy.partition("both")  # a partition in force is replaced
            assert proxy.partitioned == "both"
            writer.write(b"now lost")
            await writer.drain()
            await until(lambda: proxy.dropped == 13)
            assert target.received[0] == b"hello"
            writer.close()

    asyncio.run(main())


def test_a_partition_names_a_direction() -> None:
    proxy = FaultProxy(("127.0.0.1", 9))
    with pytest.raises(ValueError, match="up, down, both"):
        proxy.partition("sideways")
    assert proxy.partitioned is None

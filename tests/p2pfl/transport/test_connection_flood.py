"""A flood of strangers and slow connections on one port cannot keep a member out.

One websocket listener on 127.0.0.1 (plain ws: TLS changes nothing here but
the CPU bill), with the node's kind of rate limiter. Against it, from the same
address as the honest member: 500 strangers' handshakes at once (each gets the
listener's hello and is refused as a non-member), 100 slow-loris TCP
connections (50 silent, 50 trickling an HTTP request a byte at a time) and 20
that finish the websocket upgrade and then say nothing. While the slow ones
still hang and a second wave of strangers runs, the member must connect; the
slow ones must be cut at the open and handshake timeouts; the process's
resident memory (``VmRSS`` in ``/proc/self/status``, client and server sides
together) must grow by a bounded amount.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import nacl.signing
import pytest
from websockets.asyncio.client import connect as ws_connect

from p2pfl.transport import (
    AuthenticationFailed,
    Authenticator,
    RateLimiter,
    TransportClosed,
    WsOptions,
    WsTransport,
)
from protocols.records import node_id_for

STRANGERS, SLOW, SILENT = 500, 100, 20
TIMEOUT = 1.0  # the listener's open and handshake timeouts
RSS_GROWTH_LIMIT = 256 << 20


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def nid(key: nacl.signing.SigningKey) -> str:
    return node_id_for(bytes(key.verify_key))


async def stranger(transport: WsTransport, address: str) -> str:
    try:
        await transport.connect(address)
    except AuthenticationFailed as exc:
        return exc.code
    except TransportClosed:
        return "closed"
    return "connected"


async def slow_loris(port: int, trickle: bool) -> float:
    """Open TCP, send nothing or a byte every 0.2 s; seconds until the server hangs up."""
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    try:
        for byte in request if trickle else b"":
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    if await reader.read(1) == b"":
                        return time.monotonic() - began
        await reader.read(1)  # the server closes first
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - began


async def silent_after_upgrade(address: str) -> float:
    """Finish the websocket upgrade, never send a hello; seconds until the server closes."""
    began = time.monotonic()
    with contextlib.suppress(Exception):
        async with ws_connect(address, open_timeout=10, ping_interval=None) as ws:
            await ws.wait_closed()
    return time.monotonic() - began


async def member_connects(transport: WsTransport, address: str, expected: str) -> float:
    """Seconds until the member has its link (it retries what a busy listener refuses)."""
    began = time.monotonic()
    while True:
        try:
            link = await transport.connect(address, expected_peer=expected)
        except (AuthenticationFailed, TransportClosed):
            await asyncio.sleep(0.05)
            continue
        await link.close()
        return time.monotonic() - began


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_flood_from_the_members_own_address_does_not_keep_it_out() -> None:
    node, member, outsider = (nacl.signing.SigningKey.generate() for _ in range(3))
    members = {nid(node): bytes(node.verify_key), nid(member): bytes(member.verify_key)}
    listener_auth = Authenticator(
        node,
        members.get,
        limiter=RateLimiter(burst=5, refill_per_second=0.05),  # 20 s per token back
        timeout=TIMEOUT,
    )
    options = WsOptions(open_timeout=TIMEOUT)
    listener = WsTransport(listener_auth, insecure=True, options=options)
    strangers = WsTransport(
        Authenticator(outsider, {nid(node): bytes(node.verify_key)}.get), insecure=True
    )
    honest = WsTransport(Authenticator(member, members.get), insecure=True)

    async def handler(connection: object) -> None:
        await asyncio.sleep(0)

    async def main() -> tuple[list[str], float, list[float], list[float], int]:
        async with listener, strangers, honest:
            address = await listener.listen("ws://127.0.0.1:0", handler)
            port = int(address.rsplit(":", 1)[1])
            before = vm_rss()
            async with asyncio.timeout(30):
                codes = await asyncio.gather(
                    *(stranger(strangers, address) for _ in range(STRANGERS))
                )
                slow = [asyncio.create_task(slow_loris(port, i % 2 == 1)) for i in range(SLOW)]
                silent = [asyncio.create_task(silent_after_upgrade(address)) for _ in range(SILENT)]
                await asyncio.sleep(0.2)  # the slow ones hang on
                second = [asyncio.create_task(stranger(strangers, address)) for _ in range(50)]
                waited = await member_connects(honest, address, nid(node))
                hung = await asyncio.gather(*slow)
                quiet = await asyncio.gather(*silent)
                await asyncio.gather(*second)
            growth = vm_rss() - before
        return list(codes), waited, hung, quiet, growth

    codes, waited, hung, quiet, growth = asyncio.run(main())
    print(
        f"{STRANGERS} strangers: {sorted(set(codes))}; member in after {waited:.2f} s; "
        f"slow-loris cut after at most {max(hung):.2f} s, silent after {max(quiet):.2f} s; "
        f"VmRSS grew {growth / 2**20:.1f} MiB"
    )
    assert "connected" not in codes and "rate-limited" in codes
    assert waited < 10.0  # without probation it waits ~20 s for a token
    assert max(hung) < TIMEOUT + 4.0 and max(quiet) < TIMEOUT + 4.0
    assert growth < RSS_GROWTH_LIMIT

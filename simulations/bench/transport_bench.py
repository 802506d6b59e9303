"""Throughput of one large message over the websocket transport, ws and wss, on loopback.

    python simulations/bench/transport_bench.py [--size-mb 100] [--repeat 5]
        [--mode processes|inproc] [--frame-kib 1024]

The sender dials, the Ed25519 handshake runs, then the sender sends a
``--size-mb`` message and waits for the receiver's 8-byte acknowledgement
(sent once the whole message is assembled); GB/s = size / that round trip,
best and median of ``--repeat`` (after one warm-up message). With
``--mode processes`` (default) the receiver is a second OS process, as
between two daemons; with ``--mode inproc`` both ends share one event loop
(and one core). Baselines measured in the same run put the figures in
context on a shared machine: a memory copy of the message, and raw loopback
TCP (``sendall`` / ``recv_into``) between two processes, before and after
the websocket runs, with the load average at both ends.

Two figures per line: wall-clock GB/s (best and median), what the run saw on
this machine as shared at the time; and "CPU-bound" GB/s, the size over the
CPU seconds (user + system, median) of the busier end (``--mode inproc``:
of the one process that runs both ends), i.e. the rate if each end had a
core to itself. On a busy machine the first understates the transport.

Targets (issue 6): ws >= 1.5 GB/s, wss >= 0.8 GB/s between two daemons.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from p2pfl.transport import (
    Authenticator,
    Connection,
    TlsFiles,
    WsOptions,
    WsTransport,
    make_self_signed,
)
from protocols.records import node_id_for

MB = 1_000_000
SENDER, RECEIVER = nacl.signing.SigningKey(b"\x01" * 32), nacl.signing.SigningKey(b"\x02" * 32)
LEDGER = {node_id_for(bytes(k.verify_key)): bytes(k.verify_key) for k in (SENDER, RECEIVER)}


def transport(key: nacl.signing.SigningKey, scheme: str, tls_dir: Path, frame: int) -> WsTransport:
    options = WsOptions(max_message_size=1 << 30, frame_size=frame)  # other limits: defaults
    auth = Authenticator(key, LEDGER.get)
    if scheme == "wss":
        tls = TlsFiles(tls_dir / "tls-cert.pem", tls_dir / "tls-key.pem")
        return WsTransport(auth, tls=tls, options=options)
    return WsTransport(auth, insecure=True, options=options)


async def serve(scheme: str, tls_dir: Path, frame: int, ready: asyncio.Future[str] | None) -> None:
    """The receiving end: acknowledge each message with its length, until the link closes."""
    done = asyncio.Event()

    async def on_connection(connection: Connection) -> None:
        try:
            cpu = time.process_time()
            while True:
                message = await connection.recv()
                used, cpu = time.process_time() - cpu, time.process_time()
                await connection.send(struct.pack(">Qd", len(message), used))
        except Exception:
            return
        finally:
            done.set()

    async with transport(RECEIVER, scheme, tls_dir, frame) as receiver:
        address = await receiver.listen("127.0.0.1:0", on_connection)
        if ready is None:
            print(address, flush=True)
        else:
            ready.set_result(address)
        await done.wait()


async def send(address: str, scheme: str, tls_dir: Path, args: argparse.Namespace) -> Timings:
    size = args.size_mb * MB
    message = os.urandom(size)
    timings = Timings()
    async with transport(SENDER, scheme, tls_dir, args.frame_kib * 1024) as sender:
        link = await sender.connect(address, expected_peer=node_id_for(bytes(RECEIVER.verify_key)))
        for i in range(args.repeat + 1):
            start, cpu = time.perf_counter(), time.process_time()
            await link.send(message)
            received, receiver_cpu = struct.unpack(">Qd", await link.recv())
            assert received == size
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            if i:  # the first is a warm-up
                # In one process the receiver's CPU time is inside ours: both ends share a core.
                timings.add(wall, cpu if args.mode == "inproc" else max(cpu, receiver_cpu))
        await link.close()
    return timings


async def run_ws(scheme: str, tls_dir: Path, args: argparse.Namespace) -> Timings:
    frame = args.frame_kib * 1024
    if args.mode == "inproc":
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as group:
            group.create_task(serve(scheme, tls_dir, frame, ready))
            return await send(await ready, scheme, tls_dir, args)
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", scheme, "--tls-dir", str(tls_dir),
        "--frame-kib", str(args.frame_kib), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    address = (await child.stdout.readline()).decode().strip()
    try:
        return await send(address, scheme, tls_dir, args)
    finally:
        await child.wait()


def tcp_baseline(args: argparse.Namespace) -> Timings:
    """Raw loopback TCP between this process and a child: sendall, recv_into, 8-byte ack."""
    size = args.size_mb * MB
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the receiver
        connection, _ = listener.accept()
        buffer = memoryview(bytearray(size))
        cpu = time.process_time()
        for _ in range(args.repeat + 1):
            got = 0
            while got < size:
                got += connection.recv_into(buffer[got:])
            used, cpu = time.process_time() - cpu, time.process_time()
            connection.sendall(struct.pack(">Qd", got, used))
        connection.close()
        os._exit(0)
    listener.close()
    message = os.urandom(size)
    timings = Timings()
    with socket.create_connection(("127.0.0.1", port)) as connection:
        for i in range(args.repeat + 1):
            start, cpu = time.perf_counter(), time.process_time()
            connection.sendall(message)
            ack = connection.recv(16, socket.MSG_WAITALL)
            received, receiver_cpu = struct.unpack(">Qd", ack)
            assert received == size
            if i:
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                timings.add(wall, max(cpu, receiver_cpu))
    os.waitpid(pid, 0)
    return timings


def memcpy_baseline(args: argparse.Namespace) -> Timings:
    source = os.urandom(args.size_mb * MB)
    target = bytearray(len(source))
    timings = Timings()
    for _ in range(args.repeat):
        start, cpu = time.perf_counter(), time.process_time()
        target[:] = source
        timings.add(time.perf_counter() - start, time.process_time() - cpu)
    return timings


@dataclass
class Timings:
    """Per run: wall-clock seconds, and CPU seconds of the busier end."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)


def report(name: str, size: int, timings: Timings) -> None:
    best, median = size / min(timings.wall) / 1e9, size / statistics.median(timings.wall) / 1e9
    per_cpu = size / statistics.median(timings.cpu) / 1e9
    print(
        f"{name:<32} wall: best {best:5.2f} GB/s, median {median:5.2f} GB/s"
        f" | CPU-bound: {per_cpu:5.2f} GB/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mode", choices=["processes", "inproc"], default="processes")
    parser.add_argument("--frame-kib", type=int, default=1024)
    parser.add_argument("--serve", choices=["ws", "wss"], help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the ws run's INSECURE warning is expected here
    if args.serve:
        asyncio.run(serve(args.serve, args.tls_dir, args.frame_kib * 1024, None))
        return
    size = args.size_mb * MB
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.size_mb} MB message, {args.repeat} runs, frames of {args.frame_kib} KiB,")
    print(f"mode {args.mode}; {os.cpu_count()} CPUs, load average {load}")
    report("memory copy (baseline)", size, memcpy_baseline(args))
    report("raw TCP, 2 processes (before)", size, tcp_baseline(args))
    with tempfile.TemporaryDirectory() as tmp:
        tls_dir = Path(tmp)
        make_self_signed(tls_dir, ["127.0.0.1"])
        for scheme in ("ws", "wss"):
            report(f"{scheme} ({args.mode})", size, asyncio.run(run_ws(scheme, tls_dir, args)))
    report("raw TCP, 2 processes (after)", size, tcp_baseline(args))
    print(f"load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

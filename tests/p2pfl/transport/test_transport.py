"""One conformance suite, ``check_transport(make_pair)``, run against every transport.

``make_pair(...)`` is an async context manager yielding a ``Pair``: two
authenticated connections (the dialer's and the listener's end) and the two
transports that made them. The suite runs on the in-memory transport and on
websockets, plain (ws) and with TLS (wss). No test waits on a clock except
the backpressure check, which must observe that a send does *not* finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from cryptography import x509
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from p2pfl.cli import main as cli_main
from p2pfl.errors import ConfigError, KeyFileError
from p2pfl.transport import (
    Authenticator,
    Connection,
    FramingError,
    MemoryNetwork,
    MessageTooLarge,
    TlsFiles,
    TransferLog,
    Transport,
    TransportClosed,
    WsOptions,
    WsTransport,
    make_self_signed,
    wire_totals,
)
from p2pfl.transport.tls import client_context, server_context
from protocols.records import node_id_for

MiB = 1 << 20


def signing_key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


def node_id(key: nacl.signing.SigningKey) -> str:
    return node_id_for(bytes(key.verify_key))


def members(*keys: nacl.signing.SigningKey) -> Callable[[str], bytes | None]:
    table = {node_id(k): bytes(k.verify_key) for k in keys}
    return table.get


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- the pair factories -------------------------------------------------------------------


@dataclass
class Pair:
    dialer: Connection
    listener: Connection
    dialer_transport: Transport
    listener_transport: Transport
    handler_done: asyncio.Event  # set when the listener's handler returns


MakePair = Callable[..., contextlib.AbstractAsyncContextManager[Pair]]


@contextlib.asynccontextmanager
async def _pair_over(
    dialer_transport: Transport, listener_transport: Transport, address: str
) -> AsyncIterator[Pair]:
    accepted: asyncio.Queue[Connection] = asyncio.Queue()
    handler_done = asyncio.Event()

    async def on_connection(connection: Connection) -> None:
        try:
            await accepted.put(connection)
            await connection.wait_closed()
        finally:
            handler_done.set()

    async with dialer_transport, listener_transport:
        bound = await listener_transport.listen(address, on_connection)
        dialer = await dialer_transport.connect(bound, expected_peer=node_id(signing_key(2)))
        listener = await accepted.get()
        yield Pair(dialer, listener, dialer_transport, listener_transport, handler_done)


def memory_pair_factory() -> MakePair:
    def make_pair(
        max_message_size: int = 256 * MiB, listener_max_message_size: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[Pair]:
        network = MemoryNetwork()
        ledger = members(signing_key(1), signing_key(2))
        dialer = network.transport(
            Authenticator(signing_key(1), ledger), max_message_size=max_message_size
        )
        listener = network.transport(
            Authenticator(signing_key(2), ledger),
            max_message_size=listener_max_message_size or max_message_size,
        )
        return _pair_over(dialer, listener, "listener")

    return make_pair


def ws_pair_factory(tls: TlsFiles | None) -> MakePair:
    def make_pair(
        max_message_size: int = 256 * MiB, listener_max_message_size: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[Pair]:
        ledger = members(signing_key(1), signing_key(2))

        def transport(key: int, limit: int) -> WsTransport:
            return WsTransport(
                Authenticator(signing_key(key), ledger),
                tls=tls,
                insecure=tls is None,
                options=WsOptions(max_message_size=limit),
            )

        listener_limit = listener_max_message_size or max_message_size
        return _pair_over(
            transport(1, max_message_size), transport(2, listener_limit), "127.0.0.1:0"
        )

    return make_pair


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["memory", "ws", "wss"])
def make_pair(request: pytest.FixtureRequest, tls_files: TlsFiles) -> MakePair:
    if request.param == "memory":
        return memory_pair_factory()
    return ws_pair_factory(tls_files if request.param == "wss" else None)


# -- the conformance checks ---------------------------------------------------------------


async def check_small_round_trip(make_pair: MakePair) -> None:
    async with make_pair() as pair:
        messages = [b"", b"x", b"hello", payload(1000, 1)]
        for message in messages:
            await pair.dialer.send(message)
        assert [await pair.listener.recv() for _ in messages] == messages
        await pair.listener.send(bytearray(b"reply"))
        await pair.listener.send(memoryview(b"view"))
        assert await pair.dialer.recv() == b"reply"
        assert await pair.dialer.recv() == b"view"
        assert pair.dialer.peer_id == node_id(signing_key(2))
        assert pair.listener.peer_id == node_id(signing_key(1))


async def check_large_round_trip(make_pair: MakePair) -> None:
    big = [payload(8 * MiB + 3, 2), payload(64 * MiB, 3)]
    back = payload(8 * MiB, 4)
    async with make_pair() as pair:
        received: list[bytes] = []

        async def receive() -> None:
            received.extend([await pair.listener.recv() for _ in big])
            await pair.listener.send(back)

        async with asyncio.TaskGroup() as group:
            group.create_task(receive())
            for message in big:
                await pair.dialer.send(message)
        assert received == big
        assert await pair.dialer.recv() == back


async def check_concurrent_both_ways(make_pair: MakePair) -> None:
    """Two senders per end, both directions at once: each sender's messages arrive in order."""
    count = 60
    sizes = [0, 10, 3000, 70_000, MiB + 17]

    def message(sender: int, seq: int) -> bytes:
        body = bytes([sender * 31 + seq % 251]) * sizes[seq % len(sizes)]
        return sender.to_bytes(1, "big") + seq.to_bytes(4, "big") + body

    async def send_all(connection: Connection, sender: int) -> None:
        for seq in range(count):
            await connection.send(message(sender, seq))

    async def receive_all(connection: Connection, senders: tuple[int, int]) -> None:
        next_seq = dict.fromkeys(senders, 0)
        for _ in range(2 * count):
            data = await connection.recv()
            sender, seq = data[0], int.from_bytes(data[1:5], "big")
            assert seq == next_seq[sender]
            assert data == message(sender, seq)
            next_seq[sender] += 1
        assert next_seq == dict.fromkeys(senders, count)

    async with make_pair() as pair, asyncio.TaskGroup() as group:
        group.create_task(receive_all(pair.listener, (1, 2)))
        group.create_task(receive_all(pair.dialer, (3, 4)))
        group.create_task(send_all(pair.dialer, 1))
        group.create_task(send_all(pair.dialer, 2))
        group.create_task(send_all(pair.listener, 3))
        group.create_task(send_all(pair.listener, 4))


async def check_sender_enforces_max_size(make_pair: MakePair) -> None:
    limit = 3 * MiB + 5
    async with make_pair(max_message_size=limit) as pair:
        assert pair.dialer.max_message_size == limit
        with pytest.raises(MessageTooLarge, match="over the"):
            await pair.dialer.send(bytes(limit + 1))
        exact = payload(limit, 5)
        async with asyncio.TaskGroup() as group:
            receiving = group.create_task(pair.listener.recv())
            await pair.dialer.send(exact)
        assert receiving.result() == exact


async def check_receiver_enforces_max_size(make_pair: MakePair) -> None:
    """A peer whose limit is above ours cannot make us take a message over ours."""
    async with make_pair(max_message_size=8 * MiB, listener_max_message_size=MiB) as pair:
        with contextlib.suppress(TransportClosed):  # the link may close while it sends
            async with asyncio.TaskGroup() as group:
                group.create_task(pair.dialer.send(bytes(3 * MiB)))
                with pytest.raises(FramingError, match="too big"):  # the peer's fault
                    await pair.listener.recv()
        with pytest.raises(TransportClosed):
            await pair.dialer.recv()
        with pytest.raises(TransportClosed):
            await pair.dialer.send(b"after")


async def _check_close(pair: Pair, closer: Connection, other: Connection) -> None:
    await closer.send(b"last words")
    await closer.close()
    await closer.close()  # idempotent
    assert await other.recv() == b"last words"
    with pytest.raises(TransportClosed):
        await other.recv()
    with pytest.raises(TransportClosed):
        await other.send(b"too late")
    with pytest.raises(TransportClosed):
        await closer.send(b"after close")
    with pytest.raises(TransportClosed):
        await closer.recv()


async def check_close_by_dialer(make_pair: MakePair) -> None:
    async with make_pair() as pair:
        await _check_close(pair, pair.dialer, pair.listener)


async def check_close_by_listener(make_pair: MakePair) -> None:
    async with make_pair() as pair:
        await _check_close(pair, pair.listener, pair.dialer)


async def check_close_wakes_a_waiting_reader(make_pair: MakePair) -> None:
    async with make_pair() as pair:
        local = asyncio.create_task(pair.dialer.recv())
        remote = asyncio.create_task(pair.listener.recv())
        await pair.dialer.close()
        for task in (local, remote):
            with pytest.raises(TransportClosed):
                await task


async def check_backpressure(make_pair: MakePair) -> None:
    """A peer that does not read makes ``send`` wait after a bounded amount."""
    chunk = payload(MiB, 6)
    bound = 256  # MiB a transport may hold between two peers before send must wait
    async with make_pair() as pair:
        sent = 0
        pending: asyncio.Task[None] | None = None
        while sent < bound:
            task = asyncio.create_task(pair.dialer.send(chunk))
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done:
                pending = task
                break
            task.result()
            sent += 1
        assert pending is not None, f"{bound} MiB were buffered without send waiting"
        for _ in range(sent + 1):  # reading lets the blocked send finish
            assert await pair.listener.recv() == chunk
        await pending


async def check_transport_close_ends_links(make_pair: MakePair) -> None:
    async with make_pair() as pair:
        await pair.listener_transport.close()
        await pair.handler_done.wait()
        with pytest.raises(TransportClosed):
            await pair.dialer.recv()
        with pytest.raises(TransportClosed):
            await pair.listener.send(b"x")
        with pytest.raises(TransportClosed):
            await pair.listener_transport.connect("127.0.0.1:1")


CHECKS: list[Callable[[MakePair], Awaitable[None]]] = [
    check_small_round_trip,
    check_large_round_trip,
    check_concurrent_both_ways,
    check_sender_enforces_max_size,
    check_receiver_enforces_max_size,
    check_close_by_dialer,
    check_close_by_listener,
    check_close_wakes_a_waiting_reader,
    check_backpressure,
    check_transport_close_ends_links,
]


def check_transport(make_pair: MakePair) -> None:
    """Every check, for a transport added later."""
    for check in CHECKS:
        asyncio.run(check(make_pair))


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(make_pair: MakePair, check: Callable[[MakePair], Awaitable[None]]) -> None:
    asyncio.run(check(make_pair))


# -- per transport ------------------------------------------------------------------------


def test_ws_large_message_arrives_in_one_read_only_buffer() -> None:
    async def check() -> None:
        async with ws_pair_factory(None)() as pair:
            big = payload(3 * MiB + 1, 7)
            async with asyncio.TaskGroup() as group:
                receiving = group.create_task(pair.listener.recv())
                await pair.dialer.send(memoryview(big)[1:])
            received = receiving.result()
            assert isinstance(received, memoryview) and received.readonly
            assert received == big[1:]
            await pair.dialer.send(b"small")
            assert await pair.listener.recv() == b"small"

    asyncio.run(check())


def test_ws_records_the_wire_time_of_large_messages_only() -> None:
    """Each end logs a fragmented message once, with its size; small ones cost no record."""

    async def check() -> None:
        async with ws_pair_factory(None)() as pair:
            sender = pair.dialer_transport
            receiver = pair.listener_transport
            assert isinstance(sender, WsTransport) and isinstance(receiver, WsTransport)
            await pair.dialer.send(b"small")
            assert await pair.listener.recv() == b"small"
            assert sender.transfers.take() == [] and receiver.transfers.take() == []
            big = payload(3 * MiB + 1, 8)
            async with asyncio.TaskGroup() as group:
                receiving = group.create_task(pair.listener.recv())
                await pair.dialer.send(big)
            assert receiving.result() == big
            [sent] = sender.transfers.take()
            [received] = receiver.transfers.take()
            assert (sent.peer, sent.received, sent.size) == (pair.dialer.peer_id, False, len(big))
            assert (received.peer, received.received, received.size) == (
                pair.listener.peer_id,
                True,
                len(big),
            )
            assert sent.seconds > 0 and received.seconds > 0
            assert receiver.transfers.take() == []  # taken once

    asyncio.run(check())


def test_transfer_log_is_bounded_and_sums_each_way() -> None:
    log = TransferLog(keep=2)
    log.record("a", received=True, size=10, seconds=1.0)
    log.record("a", received=False, size=20, seconds=2.0)
    log.record("b", received=True, size=30, seconds=0.5)
    taken = log.take()
    assert [t.size for t in taken] == [20, 30]  # the oldest fell out
    assert wire_totals(taken) == {
        "recv_wire_bytes": 30,
        "recv_wire_seconds": 0.5,
        "sent_wire_bytes": 20,
        "sent_wire_seconds": 2.0,
    }
    assert wire_totals([])["recv_wire_bytes"] == 0
    with pytest.raises(ValueError):
        TransferLog(keep=0)


def test_memory_transport_keeps_no_transfer_log() -> None:
    """Other transports are untouched: a node reads the figures only where ws records them."""

    async def check() -> None:
        async with memory_pair_factory()() as pair:
            big = payload(3 * MiB, 9)
            async with asyncio.TaskGroup() as group:
                receiving = group.create_task(pair.listener.recv())
                await pair.dialer.send(big)
            assert receiving.result() == big
            assert not hasattr(pair.dialer_transport, "transfers")

    asyncio.run(check())


@pytest.mark.parametrize(
    "fragments",
    [
        [b"no length first", b"x"],
        [(5).to_bytes(8, "big"), b"123456"],
        [(9).to_bytes(8, "big"), b"12"],
    ],
    ids=["no-length", "longer", "shorter"],
)
def test_ws_fragmented_message_must_match_its_length(fragments: list[bytes]) -> None:
    """A peer that breaks the framing gets the link closed, never a wrong message."""

    async def check() -> None:
        async with ws_pair_factory(None)() as pair:
            raw = pair.dialer._ws  # type: ignore[attr-defined]
            await raw.send(iter(fragments))
            with pytest.raises(TransportClosed, match="framing"):
                await pair.listener.recv()
            with pytest.raises(TransportClosed):
                await pair.dialer.recv()

    asyncio.run(check())


def test_memory_backpressure_is_exactly_the_buffer() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        ledger = members(signing_key(1), signing_key(2))
        accepted: asyncio.Queue[Connection] = asyncio.Queue()

        async def on_connection(connection: Connection) -> None:
            await accepted.put(connection)
            await connection.wait_closed()

        async with (
            network.transport(Authenticator(signing_key(1), ledger), buffer_size=4 * MiB) as a,
            network.transport(Authenticator(signing_key(2), ledger)) as b,
        ):
            dialer = await a.connect(await b.listen("b", on_connection))
            listener = await accepted.get()
            for _ in range(4):
                await dialer.send(bytes(MiB))
            blocked = asyncio.create_task(dialer.send(b"one more"))
            await asyncio.sleep(0)  # one loop turn: the put found the queue full
            assert not blocked.done()
            await listener.recv()
            await blocked

    asyncio.run(main())


def test_close_cancels_a_handler_that_ignores_it() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        ledger = members(signing_key(1), signing_key(2))
        started, forever = asyncio.Event(), asyncio.Event()
        outcome: list[str] = []

        async def stubborn(connection: Connection) -> None:
            started.set()
            try:
                await forever.wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        a = network.transport(Authenticator(signing_key(1), ledger))
        b = network.transport(Authenticator(signing_key(2), ledger), close_timeout=0.05)
        async with a, b:
            await a.connect(await b.listen("b", stubborn))
            await started.wait()
            await b.close()
        assert outcome == ["cancelled"]

    asyncio.run(main())


def test_unreachable_addresses_raise_transport_closed(tls_files: TlsFiles) -> None:
    async def main() -> None:
        ledger = members(signing_key(1))
        async with MemoryNetwork().transport(Authenticator(signing_key(1), ledger)) as memory:
            with pytest.raises(TransportClosed, match="nothing listens"):
                await memory.connect("nowhere")
        async with WsTransport(Authenticator(signing_key(1), ledger), tls=tls_files) as ws:
            with pytest.raises(TransportClosed, match="cannot connect"):
                await ws.connect("wss://127.0.0.1:1")

    asyncio.run(main())


def test_plain_ws_needs_insecure_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(signing_key(1), members())
    with pytest.raises(ConfigError, match="insecure=True"):
        WsTransport(auth)
    with caplog.at_level(logging.WARNING, logger="p2pfl.transport.ws"):
        WsTransport(auth, insecure=True)
    assert "INSECURE" in caplog.text


def test_tls_transport_refuses_to_dial_plain_ws(tls_files: TlsFiles) -> None:
    async def main() -> None:
        async with WsTransport(Authenticator(signing_key(1), members()), tls=tls_files) as ws:
            with pytest.raises(ConfigError, match="insecure=True"):
                await ws.connect("ws://127.0.0.1:1")
            with pytest.raises(ConfigError, match="cannot listen"):
                await ws.listen("ws://127.0.0.1:0", _never_called)

    asyncio.run(main())


async def _never_called(connection: Connection) -> None:
    raise AssertionError("no link was expected")


class RecordingAuthenticator(Authenticator):
    bindings: list[bytes]

    async def dial(self, channel: Any, **kwargs: Any) -> str:
        self.bindings = [*getattr(self, "bindings", []), kwargs["binding"]]
        return await super().dial(channel, **kwargs)


def test_wss_binds_the_handshake_to_the_tls_session(tls_files: TlsFiles) -> None:
    async def main() -> None:
        ledger = members(signing_key(1), signing_key(2))
        dialer_auth = RecordingAuthenticator(signing_key(1), ledger)
        dialer = WsTransport(dialer_auth, tls=tls_files)
        listener = WsTransport(Authenticator(signing_key(2), ledger), tls=tls_files)
        async with _pair_over(dialer, listener, "127.0.0.1:0") as pair:
            await pair.dialer.send(b"ping")
            assert await pair.listener.recv() == b"ping"
        (binding,) = dialer_auth.bindings
        assert binding.startswith(b"tls-unique:") and len(binding) > len(b"tls-unique:") + 16

    asyncio.run(main())


def test_handler_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        network = MemoryNetwork()
        ledger = members(signing_key(1), signing_key(2))
        failed = asyncio.Event()

        async def handler(connection: Connection) -> None:
            failed.set()
            raise RuntimeError("handler bug")

        async with (
            network.transport(Authenticator(signing_key(1), ledger)) as a,
            network.transport(Authenticator(signing_key(2), ledger)) as b,
        ):
            link = await a.connect(await b.listen("b", handler))
            await failed.wait()
            with pytest.raises(TransportClosed):
                await link.recv()

    with caplog.at_level(logging.ERROR, logger="p2pfl.transport.memory"):
        asyncio.run(main())
    assert "handler bug" in caplog.text


def test_handshakes_under_way_are_bounded_and_timed_out() -> None:
    """Silent strangers hold a slot for at most the handshake timeout, and slots are few."""

    async def main() -> None:
        ledger = members(signing_key(2))
        auth = Authenticator(signing_key(2), ledger, timeout=0.2)
        options = WsOptions(max_handshakes=1)
        async with WsTransport(auth, insecure=True, options=options) as listener:
            address = await listener.listen("127.0.0.1:0", _never_called)
            async with ws_connect(address, compression=None) as first:
                await first.recv()  # the listener's hello: the first slot is taken
                async with ws_connect(address, compression=None) as second:
                    with pytest.raises(ConnectionClosed) as closed:
                        await second.recv()
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == CloseCode.TRY_AGAIN_LATER
                with pytest.raises(ConnectionClosed) as closed:
                    await first.recv()  # we never answer: refused after the timeout
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == CloseCode.POLICY_VIOLATION

    asyncio.run(main())


# -- TLS files ----------------------------------------------------------------------------


def test_self_signed_pair(tmp_path: Path) -> None:
    files = make_self_signed(tmp_path / "tls", ["node.example", "10.0.0.7"])
    assert stat.S_IMODE(os.stat(files.key_file).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["node.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert server_context(files).minimum_version == ssl.TLSVersion.TLSv1_3
    assert client_context().verify_mode == ssl.CERT_NONE
    pinned = client_context(TlsFiles(files.cert_file, files.key_file, cafile=files.cert_file))
    assert pinned.verify_mode == ssl.CERT_REQUIRED and pinned.check_hostname
    with pytest.raises(KeyFileError, match="not overwritten"):
        make_self_signed(tmp_path / "tls")


def test_bad_tls_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        server_context(TlsFiles(tmp_path / "nope.pem", tmp_path / "nope.key"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load"):
        server_context(TlsFiles(garbage, garbage))
    with pytest.raises(ConfigError, match="at least one host"):
        make_self_signed(tmp_path / "x", [])


def test_cli_tls_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["tls", "init", "--out", str(tmp_path), "--host", "a.example"]) == 0
    out = capsys.readouterr().out
    assert "tls-cert.pem" in out and "sha256" in out
    assert cli_main(["tls", "init", "--out", str(tmp_path)]) == 2

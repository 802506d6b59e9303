"""What a node checks before it joins (``p2pfl.node.preflight``), through ``p2pfl.Peer``.

Sites live in a tmp dir (``local_federation``) and link in memory. A refused start
raises its documented error and leaves the data directory exactly as it was
(every file's SHA-256 before and after).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import itertools
import logging
import os
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

import p2pfl
from p2pfl.errors import ConfigError, DataError
from p2pfl.node import DataDirInUse, PlanError
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.node.examples import heart_schema
from p2pfl.node.links import LinkManager
from p2pfl.node.preflight import check_listen_address
from p2pfl.spec import plan_from_table
from p2pfl.transport import Connection, MemoryNetwork, TlsFiles, TransportClosed
from p2pfl.transport.tls import check_tls_pair, make_self_signed

SITES = ("Cleveland", "Hungary", "Switzerland")
# A started peer rewrites nothing while a test looks; one that should have been refused
# (a regression) gives up waiting for its neighbours and ends its short run in bounded time.
QUIET = {"status_interval": 3600.0, "start_timeout": 60.0}


def plan(**sections: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": 2, "local_epochs": 1, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 5.0},
    }
    table.update(sections)
    return table


def federation(
    root: Path,
    table: dict[str, Any] | None = None,
    *,
    entrypoint: str = "p2pfl.node.examples:heart_site",
    args: list[Any] | None = None,
    address: str = "",
) -> list[SiteFiles]:
    """Three memory sites; ``address`` is the first site's ledger record (default: its listen)."""
    sites = [
        Site(
            name.lower(),
            f"memory://{name.lower()}",
            entrypoint,
            [name] if args is None else args,
            address=address if i == 0 else "",
            limits=QUIET,
        )
        for i, name in enumerate(SITES)
    ]
    return local_federation(root, sites, table or plan(), tls=False)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by relative path, with its SHA-256."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def start(site: SiteFiles, network: MemoryNetwork | None = None) -> None:
    """Start (and stop) a peer of ``site``; raises what the start raises."""

    async def attempt() -> None:
        async with p2pfl.Peer(load_config(site.config), network=network or MemoryNetwork()):
            pass

    asyncio.run(attempt())


def refused(site: SiteFiles, error: type[Exception], match: str) -> str:
    before = snapshot(site.directory)
    with pytest.raises(error, match=match) as info:
        start(site)
    assert snapshot(site.directory) == before  # no audit line, status, crate or ledger save
    assert "\n" not in str(info.value)
    return str(info.value)


# -- the plan ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"trainng": {"rounds": 2}}, "unknown key 'trainng'"),
        ({"training": {"rounds": 2, "learning_rate": 0.1}}, "unknown key 'learning_rate'"),
        ({"training": {"rounds": "ten"}}, "key 'rounds'"),
        ({"training": {"rounds": 0}}, "training.rounds must be at least 1"),
        (
            {"members": 6, "topology": {"kind": "base-k", "k": 2}, "secure": {"enabled": True}},
            "at step 1 of its schedule",
        ),
        (
            {"members": 3, "secure": {"enabled": True}},
            "tolerate no dropout.*allow_no_dropout = true",
        ),
    ],
)
def test_a_ledger_plan_that_cannot_run_is_refused_at_start(
    tmp_path: Path, sections: dict[str, Any], match: str
) -> None:
    files = federation(tmp_path, plan(**sections))
    message = refused(files[1], PlanError, match)
    assert "the ledger's training plan cannot run" in message


def test_an_explicit_allow_no_dropout_starts_and_is_part_of_the_plan_hash(
    tmp_path: Path,
) -> None:
    accepted = plan(members=3, secure={"enabled": True, "allow_no_dropout": True})
    start(federation(tmp_path, accepted)[0])
    explicit = plan_from_table(accepted)
    assert explicit.table()["secure"]["allow_no_dropout"] is True
    assert explicit.hash() != plan_from_table(plan(members=3)).hash()


def test_rounds_beyond_the_plan_are_refused_before_any_training(tmp_path: Path) -> None:
    files = federation(tmp_path)  # training.rounds = 2

    async def attempt() -> None:
        async with p2pfl.Peer(load_config(files[0].config), network=MemoryNetwork()) as peer:
            await peer.run(rounds=3)

    with pytest.raises(PlanError, match="3 rounds asked, but the approved plan has 2"):
        asyncio.run(attempt())
    assert not (files[0].directory / "checkpoints").exists()


# -- the data directory's lock -----------------------------------------------------------------


def test_a_second_peer_on_one_data_directory_is_refused_naming_the_pid(tmp_path: Path) -> None:
    files = federation(tmp_path)
    network = MemoryNetwork()

    async def both() -> str:
        async with p2pfl.Peer(load_config(files[0].config), network=network):
            before = snapshot(files[0].directory)
            with pytest.raises(DataDirInUse) as info:
                async with p2pfl.Peer(load_config(files[0].config), network=network):
                    pass
            assert snapshot(files[0].directory) == before
            return str(info.value)

    message = asyncio.run(both())
    assert str(files[0].directory) in message and f"pid {os.getpid()}" in message
    start(files[0])  # released when the first stopped


def test_a_start_that_fails_to_bind_writes_nothing(tmp_path: Path) -> None:
    files = federation(tmp_path)
    network = MemoryNetwork()
    clone = local_federation(
        tmp_path / "clone",
        [Site("a", files[0].address, "p2pfl.node.examples:heart_site", ["Cleveland"])],
        plan(),
        tls=False,
    )[0]

    async def both() -> None:
        async with p2pfl.Peer(load_config(files[0].config), network=network):
            before = snapshot(clone.directory)
            with pytest.raises(OSError, match="address already in use"):
                async with p2pfl.Peer(load_config(clone.config), network=network):
                    pass
            assert snapshot(clone.directory) == before

    asyncio.run(both())


# -- the listen address ------------------------------------------------------------------------


def test_a_listen_address_other_than_the_ledger_record_is_refused(tmp_path: Path) -> None:
    files = federation(tmp_path, address="memory://elsewhere")
    message = refused(files[0], ConfigError, "record in the ledger")
    assert "'memory://cleveland'" in message and "'memory://elsewhere'" in message


def _advertise(site: SiteFiles, address: str) -> None:
    """Give ``site``'s config ``[node] advertise = address`` (a proxy in front of it)."""
    table = tomllib.loads(site.config.read_text())
    table["node"]["advertise"] = address
    site.config.write_text(tomli_w.dumps(table))


def test_behind_a_proxy_the_ledger_record_is_compared_with_advertise(tmp_path: Path) -> None:
    files = federation(tmp_path, address="memory://proxy-of-cleveland")
    _advertise(files[0], "memory://proxy-of-cleveland")
    start(files[0])  # listen (memory://cleveland) differs from the record: advertise fits it


def test_an_advertised_address_other_than_the_ledger_record_is_refused(tmp_path: Path) -> None:
    files = federation(tmp_path, address="memory://proxy-of-cleveland")
    _advertise(files[0], "memory://cleveland")  # the record is the proxy's, not this
    message = refused(files[0], ConfigError, "set \\[node\\] advertise")
    assert "[node] advertise = 'memory://cleveland'" in message
    assert "'memory://proxy-of-cleveland'" in message


@pytest.mark.parametrize(
    ("listen", "recorded", "fits"),
    [
        ("wss://0.0.0.0:7443", "wss://hospital-a.example.org:7443", True),
        ("wss://[::]:7443", "wss://192.0.2.7:7443", True),
        ("ws://127.0.0.1:7443", "ws://127.0.0.1:7443", True),
        ("ws://127.0.0.1:7443", "ws://localhost:7443", True),
        ("wss://0.0.0.0:7443", "wss://192.0.2.7:7444", False),
        ("ws://0.0.0.0:7443", "wss://192.0.2.7:7443", False),
        ("wss://127.0.0.1:7443", "wss://192.0.2.7:7443", False),
        ("wss://127.0.0.1:0", "wss://127.0.0.1:7443", False),
    ],
)
def test_the_listen_address_must_be_what_neighbours_dial(
    listen: str, recorded: str, fits: bool
) -> None:
    if fits:
        asyncio.run(check_listen_address(listen, recorded))
        return
    with pytest.raises(ConfigError, match="set \\[node\\] listen") as info:
        asyncio.run(check_listen_address(listen, recorded))
    assert repr(listen) in str(info.value) and repr(recorded) in str(info.value)


class Refusing(Connection):
    """A connection whose peer hangs up at once."""

    peer_id = "peer"
    remote_address = "nowhere"
    max_message_size = 1 << 20

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        raise TransportClosed("gone")

    async def recv(self) -> bytes:
        raise TransportClosed("gone")

    async def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class Flaky:
    """Dials that fail ``failures`` times in a row, then a link, then fail again."""

    def __init__(self, failures: int) -> None:
        self.calls = 0
        self.failures = failures
        self.done = asyncio.Event()

    async def connect(self, address: str, expected_peer: str | None = None) -> Connection:
        self.calls += 1
        if self.calls == 2 * self.failures + 1:
            self.done.set()
        if self.calls == self.failures + 1:
            return Refusing()
        raise TransportClosed(f"cannot connect to {address}: connection refused")


def test_only_the_first_failed_dial_and_the_recovery_are_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = Flaky(failures=4)

    async def dial() -> None:
        links = LinkManager(
            "me",
            transport,  # type: ignore[arg-type]
            on_frame=lambda peer, frame: None,
            on_up=lambda peer: [],
            on_down=lambda peer, reason: None,
            delays=lambda: itertools.repeat(0.0),
        )
        links.add_neighbour("peer", "ws://127.0.0.1:9")
        task = asyncio.create_task(links.dial_loop("peer"))
        await asyncio.wait_for(transport.done.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    caplog.set_level(logging.INFO, logger="p2pfl.node.links")
    asyncio.run(dial())
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [
        "cannot reach peer at ws://127.0.0.1:9: cannot connect to ws://127.0.0.1:9: "
        "connection refused (retrying)",
        "reached peer at ws://127.0.0.1:9 after 4 failed dials",
        "cannot reach peer at ws://127.0.0.1:9: cannot connect to ws://127.0.0.1:9: "
        "connection refused (retrying)",
    ]


# -- the TLS pair ------------------------------------------------------------------------------


def test_the_tls_pair_must_be_a_readable_current_pair(tmp_path: Path) -> None:
    one, two = make_self_signed(tmp_path / "one"), make_self_signed(tmp_path / "two")
    check_tls_pair(one)
    with pytest.raises(ConfigError, match="is not the key of certificate"):
        check_tls_pair(TlsFiles(one.cert_file, two.key_file))
    with pytest.raises(ConfigError, match="cannot read"):
        check_tls_pair(TlsFiles(tmp_path / "absent.pem", one.key_file))
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        check_tls_pair(TlsFiles(one.key_file, one.key_file))
    with pytest.raises(ConfigError, match="not a PEM private key"):
        check_tls_pair(TlsFiles(one.cert_file, one.cert_file))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    with pytest.raises(ConfigError, match=r"expired on .* UTC; make a new pair"):
        check_tls_pair(one, now=later)


# -- the data ----------------------------------------------------------------------------------

COUNTING = """\
from p2pfl.node.examples import heart_site

CALLS = []


def load(site):
    CALLS.append(site)
    return heart_site(site)


def from_file(path):
    with open(path) as handle:
        return handle.read()
"""


@pytest.fixture
def counting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An entrypoint module that counts its calls, importable from a folder on sys.path."""
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "preflight_counting.py").write_text(textwrap.dedent(COUNTING))
    monkeypatch.syspath_prepend(str(folder))
    import preflight_counting  # type: ignore[import-not-found]

    yield preflight_counting
    sys.modules.pop("preflight_counting", None)


def test_the_data_are_loaded_once_at_start_and_trained_on(tmp_path: Path, counting: Any) -> None:
    files = federation(tmp_path, entrypoint="preflight_counting:load")
    network = MemoryNetwork()
    finished: list[int] = []

    async def all_sites() -> None:
        async with contextlib.AsyncExitStack() as stack:
            peers = [
                await stack.enter_async_context(p2pfl.Peer(load_config(f.config), network=network))
                for f in files
            ]
            assert sorted(counting.CALLS) == sorted(SITES)  # at start, before any round
            finished.extend(await asyncio.gather(*(p.run() for p in peers)))

    asyncio.run(asyncio.wait_for(all_sites(), 120))
    assert finished == [2, 2, 2]
    assert sorted(counting.CALLS) == sorted(SITES)  # not loaded again to train


def test_an_entrypoint_that_cannot_be_imported_is_refused_with_the_fix(tmp_path: Path) -> None:
    files = federation(tmp_path, entrypoint="hospital_loader_not_installed:load")
    message = refused(files[0], ConfigError, "no module")
    assert "PYTHONPATH" in message and "p2pfl node check-data" in message


def test_an_entrypoint_whose_file_is_missing_is_refused_with_the_fix(
    tmp_path: Path, counting: Any
) -> None:
    missing = tmp_path / "patients.csv"
    files = federation(tmp_path, entrypoint="preflight_counting:from_file", args=[str(missing)])
    message = refused(files[0], DataError, "FileNotFoundError")
    assert str(missing) in message and "p2pfl node check-data" in message


def test_data_that_break_the_plan_schema_are_refused_in_one_line(tmp_path: Path) -> None:
    schema = heart_schema()
    schema["features"][0]["max"] = 0.0  # age above the mean is out of range
    data = {"input_shape": [37], "num_classes": 2, "schema": schema}
    files = federation(tmp_path, plan(data=data))
    message = refused(files[0], DataError, "do not fit the plan's data schema")
    assert "1 violations: age: " in message and "out of range" in message


def test_data_of_another_shape_are_refused_before_any_link(tmp_path: Path) -> None:
    files = federation(tmp_path, plan(data={"input_shape": [36], "num_classes": 2}))
    refused(files[0], DataError, r"samples have shape \(37,\); the plan says \(36,\)")

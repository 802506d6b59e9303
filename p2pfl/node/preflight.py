"""What a node checks before it joins: until every check passes it writes nothing, links nothing.

``Node._start`` runs, in this order:

1. ``DataDirLock``: an exclusive ``flock`` on ``DATA_DIR/node.lock``, held for the
   process's life, so one node owns one data directory; a second start is refused
   (``DataDirInUse``) naming the directory and the pid holding it, having written
   nothing (the lock file is there only while a node holds the directory);
2. ``preflight``: the node is a valid member; the ledger's plan passes the run-spec
   check ``federation create`` runs (``plan_from_table``: unknown keys, types,
   ranges and, with ``members``, every step of the topology and the secure
   neighbourhoods' dropout tolerance); the rounds asked fit the plan; the listen
   address is the one the node's own ledger record gives its neighbours; the TLS
   pair is a pair (``check_tls_pair``); the data entrypoint imports, runs and
   returns data that fit the plan's shapes and schema (those data are then the
   ones the node trains on);
3. the listener binds (a port in use fails here, still having written nothing),
   and only then does the audit log get its ``start`` record.

Each refusal is one line saying what is wrong and the fix, a ``P2PFLError``: the
CLI prints it and exits 2, and ``p2pfl.Peer`` raises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from p2pfl.errors import ConfigError, DataError
from p2pfl.identity import Identity
from p2pfl.node.config import NodeConfig
from p2pfl.node.data import LocalData, load_local_data, schema_report
from p2pfl.node.errors import DataDirInUse, PlanError
from p2pfl.schema import SchemaReport
from p2pfl.spec import Plan, plan_from_table
from p2pfl.transport import TlsFiles
from p2pfl.transport.tls import check_tls_pair
from protocols.ledger import Ledger

log = logging.getLogger(__name__)

LOCK_FILE = "node.lock"
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
RESOLVE_TIMEOUT = 5.0
CHECK_DATA = "`p2pfl node check-data --config FILE` checks them without starting the node"


# -- the data directory's lock ----------------------------------------------------------------


class DataDirLock:
    """An exclusive lock on a data directory, held until ``release`` (or the process ends).

    ``DATA_DIR/node.lock`` holds the holder's pid (for the refusal's message) and is
    there only while a node holds the directory: the holder removes it before it lets
    go, so a start refused later leaves the directory as it found it. A contender
    that locked a file removed under it (its inode is no longer the path's) tries
    again on the new one, so two processes never both hold the directory.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        path = data_dir / LOCK_FILE
        while True:
            fd = _open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise DataDirInUse(
                    f"{data_dir}: this data directory is in use by another node (pid {holder}); "
                    "stop that node first, or give this one its own [node] data_dir"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise ConfigError(f"{data_dir}: cannot lock {path}: {exc.strerror}") from None
            if _same_file(fd, path):
                break
            os.close(fd)  # its holder removed it as we locked it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Remove the lock file and let the directory go; idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(fd)  # closing releases the lock


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path.parent}: cannot open its lock file: {exc.strerror}") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """The pid the holder wrote, or "unknown" (it may be between its lock and its write)."""
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode("ascii").strip()))
    return "unknown"


# -- the checks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """What the checks found: the plan as the ledger holds it at start, the local data."""

    plan: Plan
    data: LocalData


async def preflight(
    config: NodeConfig, identity: Identity, ledger: Ledger, *, rounds: int | None = None
) -> Ready:
    """Every check a node passes before it binds its listener (module docstring)."""
    member = ledger.members().get(identity.node_id)
    if member is None:
        raise ConfigError(
            f"node {identity.node_id} is not a valid member of federation "
            f"{ledger.federation_id} (or it was revoked); ask a member to invite it"
        )
    plan = ledger_plan(ledger)
    plan.check_rounds(rounds)
    _warn_about_roster(plan, tuple(sorted(ledger.members())))
    if not config.listens:
        check_unreachable(member.address)
    elif config.node.advertise:
        await check_listen_address(config.node.advertise, member.address, setting="advertise")
    else:
        await check_listen_address(config.node.listen, member.address)
    tls = tls_files(config)
    if tls is not None:
        check_tls_pair(tls)
    data = await asyncio.to_thread(load_checked_data, config, plan)
    return Ready(plan, data)


def ledger_plan(ledger: Ledger) -> Plan:
    """The ledger's plan, checked as ``federation create`` checks one; ``PlanError`` if bad."""
    table = ledger.plan()
    try:
        return plan_from_table(table)
    except PlanError as exc:
        if table is None:
            raise
        raise PlanError(
            f"federation {ledger.federation_id}: the ledger's training plan cannot run: {exc} "
            "(the founder must publish a corrected plan)"
        ) from None


def _warn_about_roster(plan: Plan, roster: tuple[str, ...]) -> None:
    """A plan without ``members`` is checked for the roster when training starts; say now.

    Not a refusal: a member that joined from an older invitation may not know every
    member yet (ledger sync tells it).
    """
    if plan.members is not None:
        return
    try:
        plan.graph(roster)
    except PlanError as exc:
        log.warning(
            "the plan cannot run on the %d members this ledger knows now: %s "
            "(training refuses it unless the roster changes; `members` in a plan has "
            "`federation create` check it)",
            len(roster),
            exc,
        )


def tls_files(config: NodeConfig) -> TlsFiles | None:
    """The ``[tls]`` pair of a websocket node, if it has one (``ConfigError``: half a pair)."""
    tls = config.tls
    if config.node.listen.startswith("memory://") or not (tls.cert or tls.key):
        return None
    if not (tls.cert and tls.key):
        raise ConfigError("[tls] needs both cert and key")
    return TlsFiles(
        config.path(tls.cert), config.path(tls.key), config.path(tls.cafile) if tls.cafile else None
    )


# -- the listen address -----------------------------------------------------------------------


async def check_listen_address(listen: str, recorded: str, *, setting: str = "listen") -> None:
    """``ConfigError`` unless neighbours dialling ``recorded`` reach a node listening at ``listen``.

    Scheme and port must be the same; the host too, unless ``listen`` is a wildcard
    (``0.0.0.0``, ``::``), or the two names resolve to a common address. A member
    recorded without an address accepts no inbound link: nothing to compare.
    ``setting`` names the ``[node]`` key ``listen`` came from: ``advertise`` when a
    proxy, NAT or port forward in front of the node is what neighbours dial (then
    ``listen`` itself is not compared: only the operator knows where the proxy forwards).
    """
    if not recorded:
        return
    mine, theirs = urlsplit(listen), urlsplit(recorded)
    if (
        mine.scheme == theirs.scheme
        and _port(mine) == _port(theirs)
        and await _same_host(mine.hostname or "", theirs.hostname or "")
    ):
        return
    wildcard = ""
    if setting == "listen" and theirs.scheme in ("ws", "wss") and _port(theirs) is not None:
        wildcard = f", or {theirs.scheme}://0.0.0.0:{_port(theirs)} to listen on every interface"
    raise ConfigError(
        f"[node] {setting} = {listen!r}, but this node's record in the ledger says neighbours "
        f"reach it at {recorded!r}: they would dial where it does not listen; "
        f"set [node] {setting} = {recorded!r}{wildcard}"
    )


def check_unreachable(recorded: str) -> None:
    """``ConfigError`` when a node that starts no listener has an address in the ledger.

    Its neighbours would dial that address for ever instead of waiting for it to
    dial them (or for a relay): an unreachable site is admitted without an address.
    """
    if recorded:
        raise ConfigError(
            "[node] reachable = false (or an empty listen): this node starts no listener, "
            f"but its record in the ledger says neighbours reach it at {recorded!r}: they "
            "would dial where nothing listens; admit it without an address "
            "(`p2pfl federation invite --unreachable`), or make it reachable there"
        )


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


async def _same_host(listen_host: str, recorded_host: str) -> bool:
    if listen_host in WILDCARDS or listen_host.lower() == recorded_host.lower():
        return True
    return bool(await _addresses(listen_host) & await _addresses(recorded_host))


async def _addresses(host: str) -> set[str]:
    """The IP addresses ``host`` names (itself for a literal); none if it does not resolve."""
    with contextlib.suppress(ValueError):
        return {str(ipaddress.ip_address(host))}
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            found = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return set()
    return {str(info[4][0]) for info in found}


# -- the local data ---------------------------------------------------------------------------


def load_checked_data(config: NodeConfig, plan: Plan) -> LocalData:
    """Call the data entrypoint and check its data against the plan (one-line errors)."""
    source = config.data
    if not source.entrypoint:
        raise ConfigError(
            "[data] entrypoint is not set: name the function giving this node's data "
            "(module:function, see docs/node.md)"
        )
    try:
        data = load_local_data(
            source.entrypoint,
            source.args,
            source.kwargs,
            input_shape=plan.data.input_shape,
            num_classes=plan.data.num_classes,
        )
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {CHECK_DATA}") from None
    except DataError as exc:
        raise DataError(
            f"{exc}; fix the data, the entrypoint or its [data] args and kwargs: {CHECK_DATA}"
        ) from None
    if plan.data.schema is not None:
        report = schema_report(data, plan.data.schema)
        if not report.ok:
            raise DataError(_misfit(report))
    return data


def _misfit(report: SchemaReport, shown: int = 3) -> str:
    """The schema report as one line: counts and rules only, never a value."""
    violations = report.violations
    listed = "; ".join(v.describe() for v in violations[:shown])
    more = f"; and {len(violations) - shown} more" if len(violations) > shown else ""
    return (
        f"the local data do not fit the plan's data schema ({report.rows} rows, "
        f"{len(violations)} violations: {listed}{more}); nothing was sent: fix the data or "
        f"the entrypoint; {CHECK_DATA}"
    )

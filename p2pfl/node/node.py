"""The node: ``async with Node(config) as node: await node.run()``.

A node owns, in one ``asyncio.TaskGroup``: the listener (the transport runs
one handler per accepted link), a dial loop per neighbour it dials, a timer
that polls the protocol core at its deadlines, and housekeeping (ledger
anti-entropy and saves, the status file). ``run`` drives the rounds in the
caller's task (``p2pfl.node.rounds``). Nothing sleeps to coordinate: waits are
on events (a frame, a ledger change, a deadline) bounded by timeouts.

Every link carries four channels, told apart by the first byte of each
message (``p2pfl.node.channels``): ledger sync, gossip, secure aggregation,
control. One table routes each to its handler; the rounds get theirs through
``RoundDriver.on_frame``, and reach the node only as a ``RoundHost``
(``p2pfl.node.host``), which ``Node`` fits.

The data directory holds the ledger (saved after every change, atomically),
``checkpoints/`` (one per round), ``audit.jsonl`` (hash-chained),
``status.json``, ``node.lock`` while a node holds it and, once a run ends,
``crate/`` (its RO-Crate: ``p2pfl.provenance``). A start takes the lock, runs
the checks of ``p2pfl.node.preflight`` and binds its listener before it writes
any of them: a start refused on the way leaves the directory as it was.
With ``[dashboard] listen`` set, the node also serves a live page of itself
(``p2pfl.node.dashboard``), started and stopped with it.
A node restarted after a crash or SIGTERM resumes from its newest checkpoint
with the ledger it saved, catching up with its neighbours; the temporary files
of writes a kill interrupted are deleted first. A node that cannot write a
round's checkpoint or the ledger save that ends it (a full or read-only disk)
stops with ``StorageError`` rather than train on without durability; so does
one whose audit log the disk refuses a line, wherever it was recorded.

The status file says what is true now: each link's live state and the last
round mixed with that neighbour (``status``). When the node stops, it closes
its links and then writes the status a last time, with the phase it ended in
(finished, stopped, failed) and every link down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.identity import Identity, load_identity, read_passphrase_file
from p2pfl.ledger_file import load_ledger, open_inbox
from p2pfl.node.audit import AuditLog
from p2pfl.node.channels import Channel, Router, tag, tagged
from p2pfl.node.config import NodeConfig
from p2pfl.node.dashboard import Dashboard
from p2pfl.node.data import LocalData
from p2pfl.node.errors import NodeStopped, StorageError, storage_error
from p2pfl.node.events import Event, Finished, LinkDown, LinkUp, Refused
from p2pfl.node.faults import Faults
from p2pfl.node.inbox import merge_inbox
from p2pfl.node.latch import FailureLatch
from p2pfl.node.links import LinkManager, backoff, dials
from p2pfl.node.phases import Phase
from p2pfl.node.preflight import DataDirLock, Ready, preflight, tls_files
from p2pfl.node.relaying import RELAY_WAIT, Relaying
from p2pfl.node.replica import Replica
from p2pfl.node.rounds import RoundDriver
from p2pfl.node.status import peak_rss
from p2pfl.node.storage import NodeStorage
from p2pfl.node.view import NodeView
from p2pfl.transport import (
    RELAY,
    Authenticator,
    Connection,
    MemoryNetwork,
    RateLimiter,
    Refusal,
    TransferLog,
    Transport,
    WsOptions,
    WsTransport,
)
from p2pfl.transport.relay import Splicer, open_relayed
from protocols.errors import LocalProtocolError
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync

log = logging.getLogger(__name__)

_END = object()
_LEDGER_TAG = tag(Channel.LEDGER)
DELIVERY_ASK = 0.5  # seconds between asks to a neighbour that lacks our records (``delivered``)


class Node:
    """One federation member at work (module docstring). Build it with a ``NodeConfig``.

    ``network`` links nodes of one process in memory (``listen = "memory://NAME"``);
    ``passphrase`` opens a sealed key when the config names no passphrase file;
    ``rounds``, what ``run()`` completes by default, is checked against the plan
    when the node starts.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        network: MemoryNetwork | None = None,
        passphrase: bytes | None = None,
        rounds: int | None = None,
    ) -> None:
        self.config = config
        self._network = network
        self._passphrase = passphrase
        self._rounds_asked = rounds
        self._lock: DataDirLock | None = None
        self._ready: Ready | None = None
        self.audit: AuditLog | None = None
        self.address = ""
        self.transfers: TransferLog | None = None  # the ws transport's large transfers
        self.dashboard: Dashboard | None = None
        self.phase = Phase.CREATED
        self.last_error = ""
        self.started = time.time()
        self._changed = asyncio.Event()
        self._shown = asyncio.Event()  # something the dashboard shows may have changed
        self._timer_wake = asyncio.Event()
        self._subscribers: list[asyncio.Queue[Any]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.storage = NodeStorage(config)
        self._failure = FailureLatch()  # an audit append the disk refused stops the node
        self._open = False
        self._closed = False
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        # What ``_start`` builds; the properties below say so while it is missing.
        self._identity: Identity | None = None
        self._ledger: Ledger | None = None
        self._sync: LedgerSync | None = None
        self._replica: Replica | None = None
        self._links: LinkManager | None = None
        self._rounds: RoundDriver | None = None
        self._revoked: frozenset[str] = frozenset()  # their frames are refused
        self._roster_version: tuple[int, ...] | None = None  # ledger_changed's last
        self._refused_frames: dict[str, int] = {}
        self._auth: Authenticator | None = None
        self._relaying: Relaying | None = None
        self._unrelayed: set[str] = set()  # neighbours with no relay to reach them by (logged)
        self.splicer = Splicer(
            self._may_splice, request_timeout=config.limits.handshake_timeout, ended=self.changed
        )
        limits = config.limits
        self.faults = Faults(
            limit=limits.peer_faults,
            window=limits.peer_fault_window,
            ban_seconds=limits.peer_ban_seconds,
        )
        self._router = Router(
            {
                Channel.LEDGER: self._on_ledger_frame,
                Channel.GOSSIP: self._on_round_frame,
                Channel.SECAGG: self._on_round_frame,
                Channel.CONTROL: self._on_control_frame,
            },
            lambda peer, error: self.peer_error(peer, error, kind="frame"),
        )

    # -- properties -------------------------------------------------------------------

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            raise NodeStopped("the node is not started")
        return self._identity

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise NodeStopped("the node is not started: it has no ledger yet")
        return self._ledger

    @property
    def sync(self) -> LedgerSync:
        if self._sync is None:
            raise NodeStopped("the node is not started: it syncs no ledger yet")
        return self._sync

    @property
    def replica(self) -> Replica:
        if self._replica is None:
            raise NodeStopped("the node is not started: it syncs no ledger yet")
        return self._replica

    @property
    def links(self) -> LinkManager:
        if self._links is None:
            raise NodeStopped("the node is not started: it has no links yet")
        return self._links

    @property
    def rounds(self) -> RoundDriver:
        if self._rounds is None:
            raise NodeStopped("the node is not started: it runs no rounds yet")
        return self._rounds

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def local_data(self) -> LocalData:
        """The data the node loaded and checked when it started (``p2pfl.node.preflight``)."""
        if self._ready is None:
            raise NodeStopped("the node is not started: it has loaded no data yet")
        return self._ready.data

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        log.info("starting the node (data directory %s)", self.data_dir)
        try:
            await self._start()
        except BaseException as exc:
            await self._shutdown(exc)
            raise
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self._shutdown(exc)

    async def _start(self) -> None:
        """Lock, check, bind; only then write (``p2pfl.node.preflight``).

        A start refused before the listener is bound leaves the data directory as
        it was: no audit line, no status file, no crate, the ledger file untouched.
        """
        cfg = self.config
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: see config
        self._lock = DataDirLock.acquire(self.data_dir)
        passphrase = self._passphrase
        if cfg.passphrase_file is not None:
            passphrase = read_passphrase_file(cfg.passphrase_file)
        identity = self._identity = load_identity(cfg.key_file, passphrase)
        ledger = load_ledger(cfg.ledger_file)
        self._ready = await preflight(cfg, identity, ledger, rounds=self._rounds_asked)
        self._ledger = ledger
        self._revoked = frozenset(ledger.revoked())
        self._sync = LedgerSync(ledger, max_message_size=cfg.limits.max_message_size)
        self._replica = Replica(
            ledger,
            self._sync,
            send=lambda peer, frame: self.links.send(peer, tagged(Channel.LEDGER, frame)),
            peer_error=lambda peer, error: self.peer_error(peer, error, kind="ledger"),
            on_synced=self._mark_synced,
            on_change=self.ledger_changed,
            admits=self._admits,
            defer=self._drain_soon,
            on_frames=self.changed,
        )
        self._rounds = RoundDriver(self)
        self._relaying = Relaying(identity.node_id, ledger, self._rounds.edges)
        transport = self._transport()
        self._links = LinkManager(
            identity.node_id,
            transport,
            on_frame=self._on_frame,
            on_up=self._on_link_up,
            on_down=self._on_link_down,
            delays=lambda: backoff(cfg.limits.backoff_initial, cfg.limits.backoff_max),
            replay_budget=cfg.limits.replay_buffer,
            on_fault=lambda peer, error: self.peer_error(peer, error, kind="framing"),
            relay_dial=self._dial_relayed,
        )
        self._stack.push_async_callback(transport.close)
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        if cfg.listens:  # a site that accepts no inbound connection only dials (config)
            self.address = await transport.listen(cfg.node.listen, self._accept)
        # The node runs from here on (no await before the record: no link is up yet).
        self.audit = self.storage.open_audit()
        self.record(
            "start",
            node=identity.node_id,
            federation=ledger.federation_id,
            pid=os.getpid(),
            listen=cfg.node.listen if cfg.listens else "",
            insecure=cfg.insecure,
        )
        if self.address:
            log.info("node %s listening at %s", identity.node_id, self.address)
        else:
            log.info("node %s accepts no inbound connection: it dials out", identity.node_id)
        self._remove_partial_writes()
        open_inbox(cfg.ledger_file)  # tools post their records here from now on
        self._rounds.resume_from_checkpoint()
        self._spawn("timer", self._timer())
        self._spawn("housekeeping", self._housekeeping())
        if cfg.dashboard.listen:
            await self._open_dashboard()
        self._open = True
        self._take_inbox()  # what tools posted while no node ran
        self.update_links()
        self.set_phase(Phase.IDLE)
        self.storage.status.flush()  # a started node's status file is on disk

    def _remove_partial_writes(self) -> None:
        """A write killed halfway (SIGKILL, power loss) left a temporary file: delete it.

        The lock is held, so no writer of this node runs; the files they were to
        replace are whole (``p2pfl.atomic``).
        """
        for path in self.storage.remove_partial():
            log.warning("removed %s, left by a write that was interrupted", path)
            self.record("partial-removed", path=str(path))

    async def _open_dashboard(self) -> None:
        """The live page of this node, in its task group; closed with the node."""
        dashboard = Dashboard(
            self.config.dashboard, NodeView(self).snapshot, self._shown, self.data_dir
        )
        await dashboard.open()
        self._stack.push_async_callback(dashboard.close)
        self.dashboard = dashboard
        self._spawn("dashboard", dashboard.publish())

    def _transport(self) -> Transport:
        cfg = self.config
        limiter = RateLimiter(burst=5, refill_per_second=0.2)
        auth = Authenticator(
            self.identity.signing_key,
            self.ledger.verify_key,
            limiter=limiter,
            timeout=cfg.limits.handshake_timeout,
            on_refusal=self._on_refusal,
            banned=self.faults.banned,
        )
        self._auth = auth
        if cfg.node.listen.startswith("memory://") or (
            not cfg.node.listen and self._network is not None
        ):
            if self._network is None:
                raise ConfigError("listen = 'memory://...' needs a MemoryNetwork (Peer(network=))")
            return self._network.transport(auth, max_message_size=cfg.limits.max_message_size)
        tls = tls_files(cfg)
        options = WsOptions(
            max_message_size=cfg.limits.max_message_size,
            frame_size=cfg.limits.frame_size,
            open_timeout=cfg.limits.handshake_timeout,
        )
        transport = WsTransport(
            auth, tls=tls, insecure=cfg.insecure, options=options, dial_only=not cfg.listens
        )
        self.transfers = transport.transfers
        return transport

    def _spawn(self, name: str, coro: Any) -> None:
        assert self._tg is not None
        self._tasks[name] = self._tg.create_task(coro, name=f"p2pfl-node-{name}")

    def spawn(self, coro: Any) -> None:
        """A short task (closing a link) owned by the node's task group."""
        if self._tg is None or not self._open:
            coro.close()
            return
        self._tg.create_task(coro)

    async def _shutdown(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._open = False
        for task in self._tasks.values():
            task.cancel()
        stopping = exc is None or isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
        # The task group sees a cancellation (it may be its own doing), never the body's
        # error: that propagates as it is, not wrapped in an ExceptionGroup.
        cancelled = exc if isinstance(exc, asyncio.CancelledError) else None
        try:
            await self._stack.__aexit__(type(cancelled) if cancelled else None, cancelled, None)
        finally:
            try:
                if exc is not None and not stopping:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                if self.audit is not None:  # it ran: leave its status, ledger, log and crate
                    self._record_the_end(stopping)
                for queue in self._subscribers:
                    queue.put_nowait(_END)
            finally:
                self.storage.status.close()  # no status write outlives the node
                if self._lock is not None:
                    self._lock.release()

    def _record_the_end(self, stopping: bool) -> None:
        assert self.audit is not None
        if not (stopping and self.phase is Phase.FINISHED):
            self.phase = Phase.STOPPED if stopping else Phase.FAILED
        if self._links is not None:  # the transport is closed: no link is open any more
            self._links.shut(f"the node {self.phase.value}")
        if self._replica is not None:
            self._replica.drain()  # nothing received is left out of the last save
        self._save_ledger_quietly()
        self.record("stop", reason="requested" if stopping else self.last_error)
        self.audit.close()
        from p2pfl.node.crate import record_node_run  # rocrate: not in the start path

        record_node_run(self)  # the run as an RO-Crate
        self.storage.status.close()  # the writes handed over are done: this one comes last
        self.write_status()  # the last word: how the run ended, its links closed

    # -- running ----------------------------------------------------------------------

    async def run(self, rounds: int | None = None) -> int:
        """Train until ``rounds`` rounds are completed in all (the plan's count by default).

        A resumed node counts the rounds it completed before. Returns the number
        of rounds completed. Raises ``PlanError`` when ``rounds`` is beyond the
        plan's (before anything else), when the plan cannot run here or is not
        approved in time.
        """
        if not self._open or self._ready is None:
            raise NodeStopped("run() needs a started node: use `async with Node(config)`")
        if rounds is None:
            rounds = self._rounds_asked
        self._ready.plan.check_rounds(rounds)
        try:
            done = await self._failure.run(self.rounds.run(rounds))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.record("error", error=self.last_error)
            raise
        self.emit(Finished(done))
        return done

    def events(self) -> AsyncIterator[Event]:
        """Events from now until the current run finishes (``Finished``) or the node stops."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._subscribers.append(queue)

        async def iterate() -> AsyncIterator[Event]:
            try:
                while True:
                    item = await queue.get()
                    if item is _END:
                        return
                    yield item
                    if isinstance(item, Finished):
                        return
            finally:
                with contextlib.suppress(ValueError):
                    self._subscribers.remove(queue)

        if self._closed:
            queue.put_nowait(_END)
        return iterate()

    def emit(self, event: Event) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)
        self._shown.set()

    def record(self, event: str, **fields: Any) -> None:
        """Audit ``event``; an append the disk refuses stops the node (``p2pfl.node.latch``)."""
        if self.audit is None or self.audit.closed:
            return
        try:
            self.audit.record(event, **fields)
        except OSError as exc:
            kept = None if self._rounds is None else self._rounds.completed
            error = storage_error("the audit log", self.audit.path, exc, kept)
            if self._failure.fail(error):
                self.last_error = str(error)
                log.error("%s", error)
            return
        self._shown.set()

    def check_failure(self) -> None:
        """Raise the error that must stop the node, if one came (``FailureLatch.check``)."""
        self._failure.check()

    def set_phase(self, phase: Phase) -> None:
        if phase != self.phase:
            self.phase = phase
            self._shown.set()
            self.write_status()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait for ``predicate`` to hold, re-checking at every ledger or link change."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return predicate()
        return True

    async def delivered(self, peers: list[str], timeout: float) -> bool:
        """Ask ``peers`` until each holds every record this node wrote; False at ``timeout``.

        Every neighbour is asked once (the ask carries our state vector: it also tells
        them we hold theirs), those that lack ours again every ``DELIVERY_ASK`` seconds
        (their replies say what they hold; what they lack goes with the next exchange,
        ``protocols.ledger_sync``), and any that comes back after a reset, by itself.
        """
        sync = self.sync
        self.replica.send(sync.ask(peers))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while missing := [p for p in peers if not sync.holds_own(p)]:
            left = deadline - loop.time()
            if left <= 0:
                return False
            got = await self.wait_until(lambda: all(sync.holds_own(p) for p in peers),
                                        min(DELIVERY_ASK, left))  # fmt: skip
            if not got:
                self.replica.send(sync.ask(missing))
        return True

    def changed(self) -> None:
        self._changed.set()
        self._shown.set()

    # -- links ------------------------------------------------------------------------

    @property
    def relaying(self) -> Relaying:
        if self._relaying is None:
            raise NodeStopped("the node is not started: it relays nothing yet")
        return self._relaying

    async def _accept(self, conn: Connection) -> None:
        """The listener's handler: a neighbour's link, or an end asking us to relay."""
        if conn.purpose == RELAY:
            await self.splicer.serve(conn)
        else:
            await self.links.serve(conn)

    def _may_splice(self, end: str, peer: str) -> tuple[str, str] | None:
        """The splicer's rule (``Relaying.allowed``); each request served is audited.

        Refusals are not: an end whose ledger is ahead of ours asks again with
        backoff until ours catches up, and every ask would be a line.
        """
        verdict = self.relaying.allowed(end, peer) if self._open else ("stopping", "stopping")
        if verdict is None:
            self.record("relay", peer=end, to=peer)
        return verdict

    async def _dial_relayed(self, peer: str, relay: str, address: str) -> Connection:
        """A link to ``peer`` through ``relay`` (``p2pfl.transport.relay``)."""
        assert self._auth is not None
        conn = await self.links.transport.connect(address, expected_peer=relay, purpose=RELAY)
        return await open_relayed(conn, self._auth, peer=peer, wait=RELAY_WAIT)

    def update_links(self) -> None:
        """Dial the neighbours the plan's topology gives us (``p2pfl.node.links.dials``), and
        stop dialling members that left the run's roster (``RoundDriver.departed``): a live
        link to one is left to end by itself (``LinkManager.retire``).

        A neighbour that accepts no connection either, when this node accepts none,
        is dialled through the member relaying that edge (``p2pfl.node.relaying``).
        """
        if not self._open:
            return
        member_of = self.ledger.member  # not members(): a copy of them all, every change
        me = member_of(self.node_id)
        reachable = me is None or me.reachable
        for peer in sorted(self.rounds.wanted_links()):
            member = member_of(peer)
            if member is None:
                continue
            address, via = member.address, ""
            if not (reachable or member.reachable):
                via = self.relaying.relay_for(peer) or ""
                relay = member_of(via) if via else None
                if relay is None:
                    if peer not in self._unrelayed:  # once, not at every ledger change
                        self._unrelayed.add(peer)
                        log.warning(
                            "no member relays the link to %s (both accept no connection): %s",
                            peer,
                            self.relaying.error or "no relay assigned yet",
                        )
                    continue
                self._unrelayed.discard(peer)
                address = relay.address
            dialler = dials(
                self.node_id, peer, me_reachable=reachable, peer_reachable=member.reachable
            ) or (self.rounds.dials_everyone and member.reachable)  # a joiner: none dials it
            link = self.links.add_neighbour(peer, address, dials=dialler, via=via)
            name = f"dial-{peer}"
            task = self._tasks.get(name)
            if link.dials and (task is None or task.done()):
                self._spawn(name, self.links.dial_loop(peer))
        for peer in sorted(self.rounds.departed()):  # left or revoked: no more dialling
            name = f"dial-{peer}"
            task = self._tasks.get(name)
            if task is None or task.done():
                self._tasks.pop(name, None)
            elif self.links.link(peer).retired:
                continue  # its loop ends with its live link
            elif self.links.retire(peer):  # a leaver's link stays up until it closes it
                log.info(
                    "no longer dialling %s once its link ends: not a member of this epoch", peer
                )
            else:
                del self._tasks[name]
                task.cancel()
                log.info("no longer dialling %s: not a member of this epoch", peer)

    def _on_link_up(self, peer: str) -> list[bytes]:
        self.replica.drain()  # the frames of its last session, before this one's
        self.record("link-up", peer=peer)
        log.info("link to %s up", peer)
        self.emit(LinkUp(peer))
        self.changed()
        with contextlib.suppress(LocalProtocolError):
            self.sync.disconnect(peer)
        return [tagged(Channel.LEDGER, frame) for _, frame in self.sync.connect(peer)]

    def _on_link_down(self, peer: str, reason: str) -> None:
        self.replica.drain()  # what it sent is applied while its link still counts
        self.record("link-down", peer=peer, reason=reason)
        log.info("link to %s down: %s", peer, reason)
        self.emit(LinkDown(peer, reason))
        with contextlib.suppress(LocalProtocolError):
            self.sync.disconnect(peer)
        self.changed()

    def _on_refusal(self, refusal: Refusal) -> None:
        self.record(
            "auth-refused",
            address=refusal.address,
            peer=refusal.peer,
            code=refusal.code,
            reason=refusal.reason,
            inbound=refusal.inbound,
            by_peer=refusal.by_peer,
        )
        self.emit(Refused(refusal.address, refusal.peer, refusal.code, refusal.inbound))
        if self._links is not None:
            self._links.refused(refusal.peer, f"{refusal.code}: {refusal.reason}")

    # -- frames (the router's table: ``__init__``) ------------------------------------------

    def _on_frame(self, peer: str, data: bytes | bytearray | memoryview) -> None:
        if not self._admits(peer):
            return
        if data[:1] != _LEDGER_TAG:
            self.replica.drain()  # the ledger frames that came first are handled first
        self._router.route(peer, data)

    def _admits(self, peer: str) -> bool:
        """Whether a frame of ``peer`` is handled (when it arrives, and when a held ledger
        frame is drained): not what a banned member sent before its link closed, nor a
        revoked member's."""
        if self.faults.banned(peer):
            return False
        if peer in self._revoked:
            self._refuse_revoked(peer)
            return False
        return True

    def _refuse_revoked(self, peer: str) -> None:
        """A frame of a member revoked since its link came up: dropped, audited once."""
        count = self._refused_frames[peer] = self._refused_frames.get(peer, 0) + 1
        if count == 1:
            log.warning("refusing the frames of %s: revoked", peer)
            self.record("frames-refused", peer=peer, reason="revoked")

    def peer_error(self, peer: str, error: str, *, kind: str = "protocol") -> None:
        """``peer`` broke the protocol: the frame is dropped; count, audit sparingly, ban.

        One audit record per (peer, kind) per ``peer_fault_window`` (``p2pfl.node.faults``),
        with the count since the last one; past ``peer_faults`` the link is closed and
        the handshake refuses the member for ``peer_ban_seconds``.
        """
        verdict = self.faults.fault(peer, kind)
        if verdict.audit:
            log.warning("protocol error from %s: %s [%s]", peer, error, kind)
            self.record(
                "peer-protocol-error", peer=peer, kind=kind, error=error, count=verdict.count
            )
        else:
            log.debug("protocol error from %s: %s [%s]", peer, error, kind)
        if verdict.banned:
            limits = self.config.limits
            log.warning(
                "disconnecting %s for %.0f s: too many protocol errors",
                peer,
                limits.peer_ban_seconds,
            )
            self.record(
                "peer-banned",
                peer=peer,
                faults=limits.peer_faults,
                window=limits.peer_fault_window,
                seconds=limits.peer_ban_seconds,
            )
            link = None if self._links is None else self._links.links.get(peer)
            if link is not None and link.session is not None:
                self.spawn(link.session.conn.close())
            self.write_status()

    def _on_round_frame(self, peer: str, channel: Channel, body: memoryview) -> None:
        self.rounds.on_frame(peer, channel, body)

    def _on_control_frame(self, peer: str, channel: Channel, body: memoryview) -> None:
        if self._rounds is None:
            log.debug("control message from %s ignored: the node is not started", peer)
            return
        self._rounds.on_control(peer, body)  # a joiner's model request, or its answer

    def send_control(self, peer: str, frame: bytes) -> None:
        """A control message for ``peer``, sent now or never (not kept for replay)."""
        self.links.send(peer, tagged(Channel.CONTROL, frame))

    def _on_ledger_frame(self, peer: str, channel: Channel, frame: memoryview) -> None:
        self.replica.take(peer, frame)  # handled when the loop turns, with the others held

    def _drain_soon(self) -> None:
        """Drain the held ledger frames once the loop turns, in a task of the node's group:
        an error there stops the node, as it would have in the link's reader."""
        if self._tg is None or not self._open:
            self.replica.drain()
        else:
            self._tg.create_task(self._drain())

    async def _drain(self) -> None:
        self.replica.drain()

    def _mark_synced(self, peer: str) -> bool:
        link = self.links.link(peer)
        first, link.synced = not link.synced, True
        return first

    def write_ledger(self, update: bytes) -> None:
        """Flood a record this node just wrote, and note the ledger needs saving."""
        self.replica.write(update)

    def _take_inbox(self) -> None:
        """Merge and flood the records tools posted to our ledger file (``p2pfl.node.inbox``)."""
        merge_inbox(
            self.config.ledger_file, self.ledger, flood=self.replica.write, record=self.record
        )

    def ledger_changed(self) -> None:
        self.storage.ledger_dirty = True
        if self._relaying is not None:
            self._relaying.invalidate()
        roster = self.ledger.version("members", "revoked")
        if roster != self._roster_version:  # most changes are progress records: O(1) here
            self._roster_version = roster
            self._revoked = frozenset(self.ledger.revoked())
            members = self.ledger.members()
            for peer, link in list(self.links.links.items()):
                if peer not in members and link.session is not None:
                    self.record("link-closed", peer=peer, reason="no longer a valid member")
                    self.spawn(link.session.conn.close())
        self.rounds.on_ledger_changed()
        self.update_links()
        self.changed()

    def save_ledger(self) -> None:
        """Put the ledger on disk; ``StorageError`` if the directory refuses it."""
        self.storage.save_ledger(self.ledger)

    async def persist(self) -> None:
        """A round's durable group (``NodeStorage.persist``): ledger file and audit lines.

        The save that ends a round raises ``StorageError`` on: the node stops after
        that round rather than train on with a ledger it cannot keep. The periodic
        saves in between only say so, the next round's save decides.
        """
        await self.storage.persist(self.ledger)

    def _save_ledger_quietly(self) -> None:
        error = self.storage.save_ledger_quietly(self.ledger)
        if error is not None:
            self.last_error = error

    # -- the outbox -------------------------------------------------------------------

    def send(self, peer: str, frame: bytes | bytearray, *, round: int) -> None:
        """Queue a round's ``frame`` for ``peer``, kept for replay after a reconnection."""
        self.links.send(peer, frame, round=round)

    def linked(self) -> list[str]:
        """The peers this node has (or wants) a link with."""
        return list(self.links.links)

    def synced(self, peer: str) -> bool:
        """Whether the link to ``peer`` is up with the ledgers exchanged."""
        link = self.links.links.get(peer)
        return link is not None and link.synced

    def prune_replay(self, peer: str, below: int) -> None:
        self.links.prune(peer, below)

    def flushed(self) -> bool:
        """No frame of ours still waits in a link's queue."""
        return all(
            link.session is None or link.session.queue.empty() for link in self.links.links.values()
        )

    def relaying_now(self) -> int:
        """How many links between two other members this node pipes together now."""
        return len(self.splicer.splices)

    # -- timers -----------------------------------------------------------------------

    def wake_timer(self) -> None:
        self._timer_wake.set()

    async def _timer(self) -> None:
        """Poll the protocol core when its deadline passes."""
        loop = asyncio.get_running_loop()
        rounds = self.rounds
        while True:
            deadline = rounds.deadline
            self._timer_wake.clear()
            if deadline is not None and deadline <= loop.time():
                rounds.poll(loop.time())
                continue
            timeout = None if deadline is None else deadline - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._timer_wake.wait()

    async def _housekeeping(self) -> None:
        """Anti-entropy, ledger saves, the status file: periodic chores."""
        limits = self.config.limits
        last_sync = time.monotonic()
        while True:
            await asyncio.sleep(limits.status_interval)
            self._take_inbox()
            if time.monotonic() - last_sync >= limits.anti_entropy_interval:
                last_sync = time.monotonic()
                self.replica.anti_entropy()
            if self.storage.ledger_dirty:
                error = await self.storage.save_ledger_in_thread(self.ledger)
                self.last_error = error or self.last_error
            try:
                await asyncio.to_thread(self.storage.sync_audit)
            except StorageError as exc:  # the round that persists next stops the node
                log.error("%s", exc)
            self.write_status()

    # -- status -----------------------------------------------------------------------

    def status(self, *, rss: bool = True) -> dict[str, Any]:
        """What ``status.json`` holds: rounds numbered from 1, ``completed`` a count.

        ``rss=False`` leaves ``peak_rss_bytes`` to the status writer (``StatusWriter``).

        Each neighbour's entry is its link's live state (``LinkManager.snapshot``)
        with ``last_round``, the last round whose frames from it were mixed in.
        """
        identity, ledger, rounds = self._identity, self._ledger, self._rounds
        links = {} if self._links is None else self._links.snapshot()
        mixed = {} if rounds is None else rounds.mixed_with
        for peer, link in links.items():
            link["last_round"] = mixed.get(peer, 0)
        return {
            "node_id": None if identity is None else identity.node_id,
            "name": self.config.node.name,
            "federation": None if ledger is None else ledger.federation_id,
            "pid": os.getpid(),
            "address": self.address,
            "phase": self.phase.value,
            "started": self.started,
            "updated": time.time(),
            "last_error": self.last_error,
            "peak_rss_bytes": peak_rss() if rss else None,
            "neighbours": links,
            "peer_faults": self.faults.snapshot(),
            "relays": {} if self._relaying is None else self._relaying.snapshot(),
            "relaying": self.splicer.snapshot(),
            "relay_error": "" if self._relaying is None else self._relaying.error,
            **({} if rounds is None else rounds.status()),
        }

    def write_status(self) -> None:
        """Hand the status as it is now to the writer thread (``StatusWriter``)."""
        self.storage.status.submit(self.status(rss=False))  # the writer takes the RSS

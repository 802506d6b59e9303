"""The rounds of a node: approve, train, mix with the neighbours, checkpoint, report.

``RoundDriver`` is the node's learning half. Before the first round it waits
(bounded by ``start_timeout``) until the ledger's plan is approved by every
member of the roster and the links to the neighbours are up with their
ledgers exchanged; it refuses to train on a plan this node has not approved,
or on local data that break the plan's data schema (``check_local_data``).
Rounds are numbered 1..R here, in everything the driver writes and shows;
``completed`` is the number of rounds completed (0 before the first). The
exchange hands the core their indices (``p2pfl.node.numbering``), and the
driver converts where it calls the learner, the graph or the privacy masks.
A round r is then:

1. catch up: if every in-neighbour's ledger progress says it finished round r
   already (this node was down), skip to the round they are in;
2. ``core.begin_round`` (secure mode deals the self-mask shares), local
   training in a worker thread, ``core.start_round`` with the trained model;
3. wait for the core's ``RoundMixed`` (the core closes the round at its
   deadlines: stragglers in sync mode, dropouts in secure mode, whose
   declaration goes to the ledger before the survivors are asked to reveal);
4. evaluate on the local test set, write the checkpoint, report progress to
   the ledger and save it. A checkpoint or that save the disk refuses raises
   ``StorageError`` and the node stops: the round's progress is reported only
   once its checkpoint is on disk.

A websocket node's checkpoint also holds what its data plane moved on the
wire since the previous checkpoint: ``recv_wire_bytes``/``recv_wire_seconds``
and ``sent_wire_bytes``/``sent_wire_seconds``, summed over the fragmented
(large) messages received and sent (``p2pfl.transport.transfers``), apart
from the time spent waiting for the neighbours, which ``mix_seconds``
includes; a send still under way at a checkpoint counts in the next one.
Other transports record none, and the keys are absent.

The protocol core is the one the simulator drives (``GossipRoundCore`` over
``SyncGossip``, or ``SecureRoundCore``) with real keys: the X25519 key of the
identity, the members' box keys from the ledger, ``os.urandom`` self-mask seeds.
A holder acts on a receiver's dropout declaration only once the ledger holds
the same declaration signed by that receiver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl.errors import ConfigError
from p2pfl.node.channels import Channel
from p2pfl.node.checkpoint import Checkpoint, latest_checkpoint
from p2pfl.node.data import check_local_data
from p2pfl.node.errors import PlanError
from p2pfl.node.events import RoundCompleted, RoundSkipped, TrainingStarted
from p2pfl.node.exchange import Exchange, make_core
from p2pfl.node.host import RoundHost
from p2pfl.node.joining import model_digest
from p2pfl.node.local import Learner, warm_up
from p2pfl.node.membership import Membership
from p2pfl.node.numbering import FIRST, index
from p2pfl.node.personal import keep_personalised, selection_of
from p2pfl.node.phases import Phase
from p2pfl.node.privacy import NodePrivacy
from p2pfl.node.round_end import RoundEnd
from p2pfl.node.round_epochs import RoundEpochs, in_neighbours
from p2pfl.node.round_files import dealt_round, mark_dealt, split_state
from p2pfl.spec import Graph, Plan, plan_from_table
from p2pfl.transport import wire_totals
from protocols.gossip import RoundMixed
from protocols.membership import ABSENT_AFTER
from protocols.rounds import GossipRoundCore, TrackedRoundCore

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

MAX_EARLY_FRAMES = 1024
MAX_EARLY_FRAMES_PER_PEER = 64
"""Frames kept from one peer before rounds start; with ``2 * max_message_size`` bytes at
most, so one member cannot fill the buffer the others' first frames need."""


class RoundDriver(RoundEpochs, RoundEnd):
    """The learning half of a node, which it reaches as a ``RoundHost`` (module docstring).

    The node calls ``on_frame`` with every round frame, ``on_ledger_changed`` after
    every ledger change, and ``poll`` when ``deadline`` passes.
    """

    def __init__(self, node: RoundHost) -> None:
        self.node = node
        self.me = node.node_id
        self.plan: Plan | None = None
        self.plan_hash: bytes | None = None
        self.graph: Graph | None = None  # the current epoch's
        self.roster: tuple[str, ...] = ()  # the run's, epoch 0
        self.membership: Membership | None = None  # sync mode only
        self._edges: tuple[object, frozenset[tuple[str, str]]] | None = None
        self._roster_memo: tuple[object, object, tuple[int, ...], tuple[str, ...]] | None = None
        self._tentative: tuple[tuple[str, ...], tuple[int, ...], Graph | None] | None = None
        self._departed: tuple[Graph, tuple[str, ...], frozenset[str]] | None = None
        self.exchange: Exchange | None = None
        self.secure = False
        self.round = FIRST  # the number of the round in progress, or the next to run
        self.completed = 0  # rounds completed: the number of the last one (0: none)
        self.target: int | None = None
        self.resumed_from: int | None = None
        self._resume: Any = None
        self.learner: Learner | None = None
        self.privacy: NodePrivacy | None = None
        self._train_seconds = 0.0
        self._mix_seconds = 0.0
        self._wire: dict[str, int | float] = {}
        self._early: list[tuple[str, Channel, memoryview]] = []  # frames before the exchange
        self.last: dict[str, Any] = {}
        self._final: tuple[int, RoundMixed, float] | None = (
            None  # the last round this run completed
        )
        self._served: tuple[int, np.ndarray] | None = None  # what a joiner may ask for
        self._cut_off: int | None = None  # a round that mixed no neighbour
        self._answers: dict[str, tuple[int, np.ndarray]] = {}  # a joiner's start models
        self.mixed_with: dict[str, int] = {}
        """Per neighbour, the last round whose frames from it were mixed in."""

    # -- what the node calls --------------------------------------------------------------

    def on_frame(self, peer: str, channel: Channel, body: memoryview) -> None:
        """A gossip or secure-aggregation frame; kept (a bounded number) until rounds start."""
        if self.exchange is None:
            self._keep_early(peer, channel, body)
            return
        self.exchange.receive(peer, channel, body)

    def _keep_early(self, peer: str, channel: Channel, body: memoryview) -> None:
        mine = [len(b) for p, _, b in self._early if p == peer]
        budget = 2 * self.node.config.limits.max_message_size
        if len(mine) >= MAX_EARLY_FRAMES_PER_PEER or sum(mine) + len(body) > budget:
            self.node.peer_error(peer, "too many frames before the rounds started", kind="flood")
        elif len(self._early) < MAX_EARLY_FRAMES:
            self._early.append((peer, channel, body))

    def on_ledger_changed(self) -> None:
        membership = self.membership
        if membership is not None and membership.changes():
            membership.acknowledge(self.round)
            if self.exchange is not None:
                self.exchange.set_horizon(self.exchange_horizon())
        if self.exchange is not None:
            self.exchange.ledger_changed()

    @property
    def deadline(self) -> float | None:
        """When the core wants ``poll`` (None: no deadline, or no core yet)."""
        return None if self.exchange is None else self.exchange.deadline

    def poll(self, now: float) -> None:
        if self.exchange is not None:
            self.exchange.poll(now)

    # -- before training ----------------------------------------------------------------

    def resume_from_checkpoint(self) -> None:
        """Find the newest whole checkpoint; it is checked against the plan when training starts."""
        self._resume = latest_checkpoint(self.node.data_dir / "checkpoints")
        if self._resume is not None:
            self.completed = self._resume.round
            self.round = self._resume.round + 1
            arrived = self._resume.meta.get("arrived")
            if isinstance(arrived, list):
                self.mixed_with = {str(p): self._resume.round for p in arrived}

    def _roster(self) -> tuple[str, ...]:
        """The checkpoint's roster when resuming, else the valid members by node id: the same
        tuple until the ledger's members or revocations change (at 10,000 members, sorting
        them again at every ledger change cost more than the change)."""
        ledger = self.node.ledger
        version = ledger.version("members", "revoked")
        memo = self._roster_memo
        if (
            memo is None
            or memo[0] is not ledger
            or memo[1] is not self._resume
            or memo[2] != version
        ):
            if self._resume is not None and isinstance(self._resume.meta.get("roster"), list):
                roster = tuple(self._resume.meta["roster"])
            else:
                roster = tuple(sorted(ledger.members()))
            memo = self._roster_memo = (ledger, self._resume, version, roster)
        return memo[3]

    def wanted_links(self) -> set[str]:
        """The peers to keep links with: the graph's neighbours (tentative before training).

        Before training, a plan that does not fit the roster this replica knows (a
        secure plan when only the inviter and this node are known yet: the ledger of
        a member that joined before the last invitation) gives no graph; the node then
        links to every member it knows, so that ledger sync can bring the rest of the
        roster. Linking to none would leave it waiting for its approval forever
        whenever no member it knows dials it (they all have larger ids).
        """
        if self.graph is not None:
            return self.graph.links_of(self.me)
        graph = self._graph_or_tentative()
        if graph is None:
            return set(self._roster()) - {self.me}
        return graph.links_of(self.me) if self.me in graph.roster else set()

    def edges(self) -> frozenset[tuple[str, str]]:
        """Every link of the topology (tentative before training), as (smaller, larger) ids.

        What relays are assigned over (``p2pfl.node.relaying``): every member computes
        it from the same plan and roster. Where ``wanted_links`` falls back to every
        member, so does this (a complete graph over the roster known here). Kept until
        the plan, the roster or the graph changes: the same object while they do not.
        """
        epoch = None if self.graph is None else self.graph.roster  # the current epoch's graph
        key = (epoch, self.node.ledger.plan_hash(), self._roster())
        if self._edges is None or self._edges[0] != key:
            self._edges = (key, frozenset(self._all_edges()))
        return self._edges[1]

    def _all_edges(self) -> set[tuple[str, str]]:
        graph = self._graph_or_tentative()
        if graph is not None:
            return graph.edges()
        roster = self._roster()
        return {(a, b) for a in roster for b in roster if a < b}

    def _graph_or_tentative(self) -> Graph | None:
        """The epoch's graph, else the plan's over the roster known now (``None``: it does not
        fit), built again only when the plan or the roster changed, not at every change."""
        if self.graph is not None:
            return self.graph
        roster, plan = self._roster(), self.node.ledger.version("plan")
        memo = self._tentative
        if memo is None or memo[0] is not roster or memo[1] != plan:
            try:
                graph = plan_from_table(self.node.ledger.plan()).graph(roster)
            except ConfigError:
                graph = None
            memo = self._tentative = (roster, plan, graph)
        return memo[2]

    def _approved(self) -> bool:
        ledger = self.node.ledger
        plan_hash = ledger.plan_hash()
        if plan_hash is None:
            return False
        if ledger.approvals().get(self.me) != plan_hash:
            raise PlanError(
                f"node {self.me} has not approved the ledger's current plan "
                f"({plan_hash.hex()[:16]}...); run `p2pfl federation approve` first"
            )
        return set(self._roster()) <= ledger.approvers()

    def _missing_approvals(self) -> list[str]:
        return sorted(set(self._roster()) - self.node.ledger.approvers())

    async def prepare(self) -> None:
        """Plan approved, roster fixed, data loaded, model and core built; idempotent."""
        if self.exchange is not None:
            return
        warming = self._warm_up()
        try:
            await self._prepare(warming)
        finally:
            if warming is not None and not warming.done():
                warming.cancel()  # the worker thread finishes its step on its own

    def _warm_up(self) -> asyncio.Future[None] | None:
        """torch's first-step costs, paid in a worker thread while approvals and links come.

        From the plan this replica holds now (``local.warm_up``): its shapes and batch
        size; None without a readable plan (``Learner.load`` then warms up itself).
        """
        try:
            step = warm_up(plan_from_table(self.node.ledger.plan()))
        except ConfigError:
            return None
        return asyncio.ensure_future(asyncio.to_thread(step))

    async def _prepare(self, warming: asyncio.Future[None] | None) -> None:
        node = self.node
        limits = node.config.limits
        node.set_phase(Phase.WAITING_APPROVAL)
        if not self._approved():
            log.info("waiting for the plan's approval by %s", ", ".join(self._missing_approvals()))
        if not await node.wait_until(self._approved, limits.start_timeout):
            raise PlanError(
                f"the plan is not approved by {', '.join(self._missing_approvals()) or 'anyone'} "
                f"after {limits.start_timeout} s; members approve with `p2pfl federation approve`"
            )
        plan = plan_from_table(node.ledger.plan())
        plan_hash = node.ledger.plan_hash()
        assert plan_hash is not None
        log.info("plan %s... approved by every member of the roster", plan_hash.hex()[:16])
        self._check_resume(plan_hash)
        self.roster = self._roster()
        joining = plan.gossip.mode == "sync" and self._joining()
        if joining:
            self.roster = await self._await_join()
        graph = plan.graph(self.roster)
        if self.me not in graph.roster and not joining:
            raise PlanError(f"node {self.me} is not in the roster of this run")
        if plan.gossip.mode == "sync":
            self.membership = Membership(node, self.roster)
            self.membership.acknowledge(self.round)  # what was signed before the start
            graph = self._epoch_graph(plan, graph)
        self.plan, self.plan_hash, self.graph = plan, plan_hash, graph
        self.secure = plan.secure.enabled
        node.update_links()
        resume = None if self._resume is None else self._resume.model
        if warming is not None:
            await warming  # done before the model is built: it forks torch's generator
        self.learner = await Learner.load(
            node.local_data, plan, graph.index(self.me), resume, warm=warming is None
        )
        node.set_phase(Phase.CHECKING_DATA)
        check_local_data(self.learner.data, plan.data.schema, node.record)  # before any round
        self.privacy = NodePrivacy(node, plan, graph, self.learner, rounds=plan.training.rounds)
        core_state: dict[str, np.ndarray] = {}
        if self._resume is not None:  # model and optimizer live in the learner now, not twice
            core_state = self._restore_optimizer(self._resume)
            self._resume = dataclasses.replace(
                self._resume, model=np.zeros(0, np.float32), state={}
            )
        node.set_phase(Phase.CONNECTING)
        fresh = self._resume is None
        wait = limits.start_timeout if fresh else limits.rejoin_timeout
        if not self._neighbours_synced():
            log.info(
                "waiting up to %.0f s for the neighbours' links: %s",
                wait,
                ", ".join(sorted(graph.links_of(self.me))),
            )
        if not await node.wait_until(self._neighbours_synced, wait):
            log.warning("starting without links to every neighbour (their messages will wait)")
        if joining:
            await self._start_from_neighbours(graph)
        if self.secure:
            self._skip_dealt_round()
        core = make_core(
            node,
            plan,
            graph,
            round=self.round,
            dim=self.learner.dim,
            selection=selection_of(plan, self.learner),
        )
        if isinstance(core, GossipRoundCore):
            core.gossip.import_state(core_state)
        elif isinstance(core, TrackedRoundCore):
            core.import_state(core_state)
        self.exchange = Exchange(node, core, secure=self.secure, round=self.round)
        self.exchange.set_horizon(self.exchange_horizon())
        self._catch_up()
        early, self._early = self._early, []
        for peer, channel, body in early:
            self.exchange.receive(peer, channel, body)

    def _check_resume(self, plan_hash: bytes) -> None:
        ckpt = self._resume
        if ckpt is None:
            return
        meta = ckpt.meta
        if meta.get("federation") != self.node.ledger.federation_id or (
            meta.get("plan_hash") != plan_hash
        ):
            log.warning("checkpoint %s is of another federation or plan: starting over", ckpt.path)
            self.node.record("checkpoint-ignored", path=str(ckpt.path), reason="other plan")
            self._resume, self.round, self.completed = None, FIRST, 0
            self.mixed_with = {}
            return
        self.resumed_from = ckpt.round
        self.node.record("resumed", round=ckpt.round, checkpoint=str(ckpt.path))
        log.info("resuming after round %d from %s", ckpt.round, ckpt.path)

    def _restore_optimizer(self, ckpt: Checkpoint) -> dict[str, np.ndarray]:
        """The trainer (DP-SGD's too, installed by ``NodePrivacy``) continues its optimizer.

        Returns the round core's part of the state (``CORE_STATE`` names, prefix off).
        """
        assert self.learner is not None and self.plan is not None
        optimizer, core = split_state(ckpt.state)
        self.learner.restore_optimizer(optimizer if ckpt.has_state else None, ckpt.path)
        if self.plan.privacy.active:
            log.info(
                "differential privacy draws fresh noise and batches after a restart: "
                "the rounds from here differ from an uninterrupted run"
            )
        return core

    def _mark_dealt(self, r: int) -> None:
        assert self.plan_hash is not None
        mark_dealt(self.node.data_dir, r, self.plan_hash)

    def _skip_dealt_round(self) -> None:
        """Never deal twice in one secure round: a restart skips the round it had begun.

        The neighbours hold shares of the self-mask seed dealt before the crash;
        a second masked input with a fresh seed would not unmask. They finish the
        round without this node (it is declared dropped) and it joins the next one.
        """
        if self.plan_hash is None:
            return
        dealt = dealt_round(self.node.data_dir, self.plan_hash)
        if dealt is not None and dealt >= self.round:
            self.node.record("round-abandoned", round=dealt, reason="begun before a restart")
            log.warning("round %d was begun before the restart: joining round %d", dealt, dealt + 1)
            self.round = dealt + 1

    def _neighbours_synced(self) -> bool:
        assert self.graph is not None
        return all(self.node.synced(p) for p in self.graph.links_of(self.me))

    # -- the rounds ---------------------------------------------------------------------

    async def run(self, rounds: int | None) -> int:
        await self.prepare()
        assert self.plan is not None and self.graph is not None
        self.target = self.plan.check_rounds(rounds)
        neighbours = tuple(sorted(self.graph.links_of(self.me)))
        self.node.emit(
            TrainingStarted(
                self.round, self.target, self.graph.roster, neighbours, self._resume is not None
            )
        )
        self.node.record("training", round=self.round, rounds=self.target, neighbours=neighbours)
        log.info(
            "training from round %d of %d with %s (%.2f s of CPU since the process started)",
            self.round,
            self.target,
            ", ".join(neighbours),
            time.process_time(),
        )
        while self.round <= self.target:
            self.node.check_failure()  # an audit append failed: no round after it
            if self._cut_off is not None:
                await self._await_neighbours()
            if self._catch_up() and self.round <= self.target:
                await self._start_from_neighbours(self.graph, required=False)
            if self.round > self.target or not await self._enter_epoch(self.round):
                break
            await self._one_round(self.round)
        await self._linger()
        if (
            self.plan.personalise.method == "finetune"
            and self.completed == self.plan.training.rounds
        ):
            await self._personalise()
        self.node.set_phase(Phase.FINISHED)
        return self.completed

    async def _personalise(self) -> None:
        """The plan's fine-tuning of the final model, kept at this site (``personal``)."""
        assert self.plan is not None and self.graph is not None and self.learner is not None
        site = self.graph.index(self.me)
        await keep_personalised(self.node, self.plan, self.learner, site, self.completed)

    def _catch_up(self) -> bool:
        """Skip the rounds every in-neighbour finished without us (we were down or cut off);
        True if it did (the node then starts from their models, ``_start_from_neighbours``).

        Not in push-sum: with no barrier, rounds are each node's own steps, and a
        node that was down goes on with its own from where it stopped.
        """
        assert self.graph is not None and self.exchange is not None and self.plan is not None
        if self.plan.gossip.mode == "async":
            return False
        hood = self.graph.neighbourhood(self.me, index(self.round))
        ahead = [self.node.ledger.round_of(j) for j in hood.in_weights]  # rounds completed
        if not ahead or min(ahead) < self.round:
            return False
        first, new_round = self.round, min(ahead) + 1
        if self.target is not None:
            new_round = min(new_round, self.target + 1)
        log.warning(
            "neighbours finished rounds %d..%d without us: joining round %d",
            first,
            new_round - 1,
            new_round,
        )
        self.node.record("rounds-skipped", first=first, last=new_round - 1)
        self.node.emit(RoundSkipped(first, new_round - 1))
        self.round = new_round
        self.exchange.resume_at(new_round)
        return True

    async def _one_round(self, r: int) -> None:
        exchange = self.exchange
        learner = self.learner
        assert exchange is not None and learner is not None
        node = self.node
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        exchange.round, exchange.round_bytes = r, 0
        exchange.prune()
        if self.secure:
            await asyncio.to_thread(self._mark_dealt, r)
        exchange.begin_round(r, loop.time(), learner.params[0].numpy())
        node.set_phase(Phase.TRAINING)
        t0 = time.perf_counter()
        await asyncio.to_thread(learner.train, index(r))  # batches seeded by the index
        self._train_seconds = time.perf_counter() - t0
        node.check_failure()  # failed while it trained: nothing of this round goes out
        waiter = exchange.mixed(r)
        node.set_phase(Phase.MIXING)
        mixing = time.perf_counter()
        trained = learner.params[0].numpy()
        # A secure sender may mask its input after our own round closed and the next
        # round's training changed ``params`` in place: it gets its own copy.
        exchange.start_round(r, trained.copy() if self.secure else trained, loop.time())
        try:
            mixed = await waiter
        finally:
            exchange.forget(r)
        self._mix_seconds = time.perf_counter() - mixing
        learner.set(mixed.model)
        transfers = node.transfers
        self._wire = {} if transfers is None else wire_totals(transfers.take())
        core_state = self._core_state()
        accuracy, loss, figures, drift, seconds = await asyncio.to_thread(
            self._close_round, r, mixed, started, core_state
        )
        assert self.privacy is not None
        ledger = node.ledger
        # The masked figures go out before the progress record: every path floods them in
        # that order, so a peer that sees our round done (its linger ends on it) has them.
        federation = self.privacy.publish(r, figures, drift)
        digest = None
        hood = in_neighbours(self.graph, self.me, r)
        self._cut_off = r if hood and not mixed.arrived else None
        if self._serving(r):
            model = learner.params[0].numpy().copy()  # what a joiner may start from
            self._served, digest = (r, model), model_digest(model)
        if self.me not in ledger.revoked():  # revoked during the round: it stops next
            node.write_ledger(
                ledger.report_progress(
                    node.identity.signing_key, r, clock=ledger.next_clock(), digest=digest
                )
            )
        await node.persist()  # the ledger file and the audit lines so far, fsynced
        self.completed, self.round = r, r + 1
        self._final = (r, mixed, seconds)
        self.mixed_with.update(dict.fromkeys(mixed.arrived, r))
        exchange.round = self.round
        exchange.prune()
        event = RoundCompleted(
            r,
            mixed.arrived,
            mixed.stragglers,
            accuracy,
            loss,
            seconds,
            exchange.round_bytes,
            federation,
        )
        self.last = event.as_dict()
        node.record(
            "round",
            round=r,
            arrived=mixed.arrived,
            stragglers=mixed.stragglers,
            accuracy=accuracy,
            seconds=round(seconds, 3),
        )
        acc = "-" if accuracy is None else f"{accuracy:.4f}"
        log.info(
            "round %d/%d done in %.2f s: local accuracy %s, %d neighbours mixed%s",
            r,
            self.target or 0,
            seconds,
            acc,
            len(mixed.arrived),
            f", stragglers {list(mixed.stragglers)}" if mixed.stragglers else "",
        )
        node.emit(event)
        node.write_status()

    # -- views ------------------------------------------------------------------------

    def current_model(self) -> nn.Module:
        """A copy of the model with the node's current parameters."""
        if self.learner is None:
            raise ConfigError("the node has no model yet: it builds one when training starts")
        return self.learner.current_model()

    def _absent(self) -> list[str]:
        """Members more than ``ABSENT_AFTER`` rounds behind the furthest, from the ledger."""
        if self.graph is None:
            return []
        progress = self.node.ledger.progress()
        furthest = max([self.completed, *progress.values()])
        return sorted(m for m in self.graph.roster if progress.get(m, 0) < furthest - ABSENT_AFTER)

    def status(self) -> dict[str, Any]:
        """The rounds' part of ``status.json``: round numbers, ``completed`` a count."""
        graph = self.graph
        current = self.round if self.target is None else min(self.round, self.target)
        return {
            "round": current,
            "completed": self.completed,
            "rounds": self.target,
            "resumed_from": self.resumed_from,
            "secure": self.secure,
            "roster": None if graph is None else list(graph.roster),
            "epoch": None if self.membership is None else self.membership.epoch,
            "absent": self._absent(),
            "plan_hash": None if self.plan_hash is None else self.plan_hash.hex(),
            "last_round": self.last,
        }

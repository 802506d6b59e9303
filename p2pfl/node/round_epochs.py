"""The round driver's epochs: a roster that changes while it trains (``p2pfl.node.membership``).

``RoundEpochs`` is the part of ``RoundDriver`` that follows the ledger's epochs:
before each round it learns the round's epoch (waiting, bounded, for a boundary
it must know) and switches graph and core at a boundary, or stops when this
node is no member of the new epoch (``_enter_epoch``, ``_switch``); a node that
resumes in a later epoch starts in it (``_epoch_graph``). A node new to a run
under way waits for its join's boundary and starts from its neighbours' checked
models (``_await_join``, ``_start_from_neighbours``, ``p2pfl.node.joining``),
and a member answers a joiner's model request (``on_control``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl.node.errors import PlanError
from p2pfl.node.exchange import Exchange, make_core
from p2pfl.node.joining import ask_model, decode_control, model_reply, start_model
from p2pfl.node.membership import Membership, joining_roster
from p2pfl.node.numbering import index
from p2pfl.node.personal import selection_of
from p2pfl.node.phases import Phase
from p2pfl.spec import Graph, Plan
from protocols.errors import DecodeError
from protocols.membership import Epoch
from protocols.rounds import GossipRoundCore, TrackedRoundCore

if TYPE_CHECKING:
    from p2pfl.node.host import RoundHost
    from p2pfl.node.local import Learner

log = logging.getLogger(__name__)


def in_neighbours(graph: Graph, me: str, round: int) -> set[str]:
    """The members whose models ``me`` mixes in round number ``round`` (itself not counted)."""
    return set(graph.neighbourhood(me, index(round)).in_weights) - {me}


class RoundEpochs:
    """The round driver's epochs (module docstring)."""

    node: RoundHost
    me: str
    plan: Plan | None
    graph: Graph | None
    roster: tuple[str, ...]
    membership: Membership | None
    exchange: Exchange | None
    learner: Learner | None
    round: int
    completed: int
    target: int | None
    _cut_off: int | None
    _resume: Any
    _departed: tuple[Graph, tuple[str, ...], frozenset[str]] | None
    _served: tuple[int, np.ndarray] | None
    _answers: dict[str, tuple[int, np.ndarray]]

    def on_control(self, peer: str, body: memoryview) -> None:
        """A joiner asks for our model, or a neighbour answers ours (``p2pfl.node.joining``)."""
        dim = None if self.learner is None else self.learner.dim
        try:
            kind, round_, model = decode_control(body, dim)
        except DecodeError as exc:
            self.node.peer_error(peer, str(exc), kind="control")
            return
        if kind == "model":
            assert round_ is not None
            self._answers[peer] = (round_, model)
            self.node.changed()
            return
        served = self._served
        if served is None or peer not in self._catching_up(self.completed):
            log.debug("no model for %s: not joining nor behind us, or no model yet", peer)
            return
        self.node.send_control(peer, model_reply(*served))

    def _catching_up(self, done: int) -> set[str]:
        """Members that may ask for our model after round ``done``: joiners whose first round
        is near, and members behind us (back from absence, or restarted)."""
        wanting = set() if self.membership is None else self.membership.joining_soon(done + 1)
        if self.graph is not None:
            progress = self.node.ledger.progress()
            wanting |= {m for m in self.graph.roster if m != self.me and progress.get(m, 0) < done}
        return wanting

    def _serving(self, done: int) -> bool:
        """Whether round ``done``'s model is kept and its digest recorded: a joiner is near,
        or a member is two rounds or more behind (it will catch up from us)."""
        if self.membership is not None and self.membership.joining_soon(done + 1):
            return True
        if self.graph is None:
            return False
        progress = self.node.ledger.progress()
        return any(progress.get(m, 0) < done - 1 for m in self.graph.roster if m != self.me)

    async def _await_neighbours(self) -> None:
        """Cut off from every in-neighbour in round ``_cut_off``: train on alone no further.

        Waits (``start_timeout`` at most) until one of them is heard from past that round
        in the ledger; the node then catches up from them instead of mixing a model it
        trained alone into theirs.
        """
        assert self.graph is not None and self._cut_off is not None
        node, cut = self.node, self._cut_off
        peers = in_neighbours(self.graph, self.me, self.round)

        def heard() -> bool:  # asked at every wake: the neighbours' records, not everyone's
            return any(node.ledger.round_of(p) >= cut for p in peers)

        if not heard():
            log.warning("round %d mixed no neighbour: waiting to hear from one", cut)
            node.record("cut-off", round=cut)
            if not await node.wait_until(heard, node.config.limits.start_timeout):
                log.warning("no neighbour heard from: going on alone")
        self._cut_off = None

    @property
    def dials_everyone(self) -> bool:
        """A joiner dials every member until its epoch begins: nobody dials a stranger."""
        return self.graph is None and self._joining()

    def _joining(self) -> bool:
        """This node is new to a run under way: others progressed, it never did.

        Asked at every ledger change (``update_links``), so it reads its own record and
        stops at the first other member's: no copy of every member's progress.
        """
        if self._resume is not None:
            return False
        ledger = self.node.ledger
        return ledger.round_of(self.me) == 0 and ledger.anyone_progressed(besides=self.me)

    def departed(self) -> frozenset[str]:
        """Members of the run's roster that are no members of the current epoch: kept per
        epoch, as the node asks at every ledger change (two sets of 10,000 members each)."""
        if self.graph is None or self.membership is None:
            return frozenset()
        memo = self._departed
        if memo is None or memo[0] is not self.graph or memo[1] is not self.roster:
            gone = frozenset(self.roster) - frozenset(self.graph.roster)
            memo = self._departed = (self.graph, self.roster, gone)
        return memo[2]

    async def _await_join(self) -> tuple[str, ...]:
        """A joiner waits (``start_timeout``) until the members fixed its first round.

        Returns the run's roster; ``self.round`` is then the joiner's first round.
        """
        node = self.node
        timeout = node.config.limits.start_timeout
        node.set_phase(Phase.CONNECTING)
        log.info("joining a run under way: waiting for the members to acknowledge the join")
        if not await node.wait_until(
            lambda: joining_roster(node.ledger, self.me) is not None, timeout
        ):
            raise PlanError(f"no member acknowledged the join of {self.me} in {timeout:.0f} s")
        roster = joining_roster(node.ledger, self.me)
        assert roster is not None
        membership = Membership(node, roster)

        def first() -> int | None:
            return membership.refresh()[0].first_round(self.me)

        if not await node.wait_until(lambda: first() is not None, timeout):
            raise PlanError(f"the join of {self.me} has no boundary after {timeout:.0f} s")
        start = first()
        assert start is not None
        self.round = start
        node.record("joining", round=start, roster=list(roster))
        log.info("joining from round %d", start)
        return roster

    async def _start_from_neighbours(self, graph: Graph, *, required: bool = True) -> None:
        """The mean of the in-neighbours' checked models, to start round ``self.round`` from.

        A joiner must have it (``PlanError`` after ``start_timeout``); a member back
        from absence waits ``epoch_timeout`` at most, then goes on with its own model.
        """
        assert self.learner is not None
        node = self.node
        peers = sorted(in_neighbours(graph, self.me, self.round))
        earliest = self.round - 1

        def ready() -> bool:
            recorded = node.ledger.progress_digests()
            return start_model(self._answers, recorded, peers, earliest) is not None

        limits = node.config.limits
        wait = limits.start_timeout if required else limits.epoch_timeout
        deadline = asyncio.get_running_loop().time() + wait
        while not ready():  # ask once a second those whose answer is missing or stale
            recorded = node.ledger.progress_digests()
            for peer in peers:
                answer, seen = self._answers.get(peer), recorded.get(peer, (0, b""))[0]
                if seen >= earliest and (answer is None or answer[0] != seen):
                    node.send_control(peer, ask_model())
            late = asyncio.get_running_loop().time() > deadline
            if not await node.wait_until(ready, 1.0) and late:
                if required:
                    raise PlanError(f"no checked start model from {', '.join(peers)}")
                log.warning("no checked model from %s: going on with ours", ", ".join(peers))
                self._answers = {}
                return
        found = start_model(self._answers, node.ledger.progress_digests(), peers, earliest)
        assert found is not None
        round_, model = found
        self.learner.set(model)
        self.round = max(self.round, round_ + 1)
        if self.exchange is not None:
            self.exchange.resume_at(self.round)
        self._answers = {}
        node.record("start-model", round=round_, peers=peers)
        log.info("starting round %d from the mean of %s's models", self.round, ", ".join(peers))

    def _epoch_graph(self, plan: Plan, graph: Graph) -> Graph:
        """The graph of the epoch the node resumes in (the run's own before any change)."""
        membership = self.membership
        if membership is None or not membership.changes():
            return graph
        epoch, _ = membership.epoch_at(self.round)
        membership.epoch = epoch.number
        if epoch.number == 0:
            return graph
        if self.me not in epoch.members:
            raise PlanError(f"node {self.me} is no member of this run from round {epoch.start}")
        return plan.graph(epoch.members, epoch=True)

    async def _enter_epoch(self, r: int) -> bool:
        """Before round ``r``: know its epoch (``p2pfl.node.membership``) and switch to it.

        False when this node is no member of it (it left, or was revoked): the run ends.
        """
        membership = self.membership
        if membership is None or not membership.changes():
            return True
        node = self.node
        if self.me in node.ledger.revoked():
            log.warning("round %d: this node was revoked: it stops", r)
            node.record("membership-ended", round=r, state="revoked")
            return False
        if membership.waiting(r):
            log.info(
                "round %d waits for the federation to acknowledge %s",
                r,
                ", ".join(membership.waiting(r)),
            )
            timeout = node.config.limits.epoch_timeout
            if not await node.wait_until(lambda: not membership.waiting(r), timeout):
                pending = membership.waiting(r)
                log.warning(
                    "round %d: %s not acknowledged by every member after %.0f s; "
                    "going on in epoch %d",
                    r,
                    ", ".join(pending),
                    timeout,
                    membership.epoch,
                )
                node.record("epoch-unknown", round=r, pending=pending)
        epoch, line = membership.epoch_at(r)
        if epoch.number == membership.epoch:
            return True
        membership.epoch = epoch.number
        node.record("epoch", number=epoch.number, start=r, members=list(epoch.members))
        if self.me not in epoch.members:
            state = line.state(self.me, r)
            log.warning("round %d: this node is no member any more (%s): it stops", r, state)
            node.record("membership-ended", round=r, state=str(state))
            return False
        self._switch(epoch, r)
        return True

    def exchange_horizon(self) -> int | None:
        """The first round the exchange has no core for: the next known epoch's start past
        its newest core's, or the first round whose epoch is still open (None: neither)."""
        membership = self.membership
        if membership is None or self.exchange is None or not membership.changes():
            return None
        line, _ = membership.refresh()
        newest = self.exchange.newest_era
        upcoming = [e.start for e in line.epochs if e.start > newest]
        bounds = [b for b in (membership.horizon(), *upcoming) if b is not None]
        return min(bounds, default=None)

    def _switch(self, epoch: Epoch, r: int) -> None:
        """Round ``r`` starts ``epoch``: its graph, a core for it, the links it wants."""
        assert self.plan is not None and self.learner is not None and self.exchange is not None
        graph = self.plan.graph(epoch.members, epoch=True)
        core = make_core(
            self.node,
            self.plan,
            graph,
            round=r,
            dim=self.learner.dim,
            selection=selection_of(self.plan, self.learner),
        )
        old = self.exchange.core
        if isinstance(core, GossipRoundCore) and isinstance(old, GossipRoundCore):
            core.gossip.import_state(old.gossip.export_state())
        elif isinstance(core, TrackedRoundCore) and isinstance(old, TrackedRoundCore):
            core.import_state(old.export_state())
        self.exchange.switch(core, r)
        self.exchange.set_horizon(self.exchange_horizon())
        self.graph = graph
        log.info(
            "round %d: epoch %d, %d members, neighbours %s",
            r,
            epoch.number,
            len(epoch.members),
            ", ".join(sorted(graph.links_of(self.me))),
        )
        self.node.update_links()

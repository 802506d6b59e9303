"""How a node's round ends: evaluate, checkpoint, and, after the last, linger and settle.

``RoundEnd`` is the part of ``p2pfl.node.rounds.RoundDriver`` that closes rounds
(the driver is a ``RoundEnd``; the attributes below are the driver's):

- ``_close_round``: one trip to a worker thread per round evaluates the mixed
  model, measures the privacy figures and writes the checkpoint
  (``p2pfl.node.round_files``), durably, before the round's progress is
  reported; the round core's state is taken before, in the loop's thread;
- ``_linger``: after the last round, the node keeps serving until its
  neighbours report that round done; in push-sum it also waits until it has
  absorbed every share its in-neighbours send it, then settles on x / w
  (``_settle``), checkpointed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import numpy as np

from p2pfl.node.exchange import Exchange
from p2pfl.node.host import RoundHost
from p2pfl.node.local import Learner
from p2pfl.node.phases import Phase
from p2pfl.node.privacy import NodePrivacy
from p2pfl.node.relaying import ABSENT_LAG
from p2pfl.node.round_files import CORE_STATE, save_round
from p2pfl.spec import Graph, Plan
from protocols.gossip import PushSumGossip, RoundMixed
from protocols.rounds import GossipRoundCore, TrackedRoundCore

log = logging.getLogger(__name__)


class RoundEnd:
    """The round driver's closing half (module docstring)."""

    node: RoundHost
    me: str
    plan: Plan | None
    plan_hash: bytes | None
    graph: Graph | None
    roster: tuple[str, ...]
    exchange: Exchange | None
    learner: Learner | None
    privacy: NodePrivacy | None
    completed: int
    target: int | None
    _train_seconds: float
    _mix_seconds: float
    _wire: dict[str, int | float]
    _final: tuple[int, RoundMixed, float] | None

    def _close_round(
        self, r: int, mixed: RoundMixed, started: float, core_state: dict[str, np.ndarray]
    ) -> tuple[float | None, float | None, Any, Any, float]:
        """Evaluate, measure and checkpoint round ``r``: one trip to a worker thread.

        Returns the accuracy, loss, the privacy figures and drift, and the round's seconds.
        """
        assert self.learner is not None and self.privacy is not None
        accuracy, loss = self.learner.evaluate()
        figures, drift = self.privacy.measure(r, accuracy, loss)
        seconds = time.perf_counter() - started
        self._checkpoint(r, mixed, accuracy, loss, seconds, core_state)
        return accuracy, loss, figures, drift, seconds

    def _core_state(self) -> dict[str, np.ndarray]:
        """The round core's arrays for the checkpoint, taken in the event loop's thread.

        (Frames change a push-sum core's mass whenever they come: never read it
        from a worker thread.)
        """
        core = None if self.exchange is None else self.exchange.core
        if isinstance(core, TrackedRoundCore):
            return {CORE_STATE + k: v for k, v in core.export_state().items()}
        if not isinstance(core, GossipRoundCore):
            return {}
        return {CORE_STATE + k: v for k, v in core.gossip.export_state().items()}

    def _checkpoint(
        self,
        r: int,
        mixed: RoundMixed,
        accuracy: float | None,
        loss: float | None,
        secs: float,
        core_state: dict[str, np.ndarray],
    ) -> None:
        assert self.learner is not None and self.graph is not None
        directory = self.node.data_dir / "checkpoints"
        meta = {
            "node": self.me,
            "federation": self.node.ledger.federation_id,
            "plan_hash": self.plan_hash,
            "roster": list(self.roster or self.graph.roster),  # the run's: epoch 0
            "index": self.graph.index(self.me),
            "arrived": list(mixed.arrived),
            "stragglers": list(mixed.stragglers),
            "accuracy": accuracy,
            "loss": loss,
            "seconds": secs,
            "train_seconds": self._train_seconds,
            "mix_seconds": self._mix_seconds,
            "abandoned": self.exchange.abandoned if self.exchange else 0,
            "bytes_sent": self.exchange.round_bytes if self.exchange else 0,
            "finished_at": time.time(),
            **self._wire,
        }
        state = {**self.learner.optimizer_state(), **core_state}
        model = self.learner.params[0].numpy()
        save_round(directory, r, model, meta, state, self.node.config.limits.keep_checkpoints)

    async def _linger(self) -> None:
        """After the last round, keep serving until the neighbours have finished it too (a
        revoked one is refused, and not waited for), and the members further off.

        Then until every neighbour holds this node's own records (``Node.delivered``):
        the last round's figures and progress, flooded as the round ended, die with a
        connection reset at that moment, and a node that left then would leave its
        neighbours waiting out their linger for them and their ledgers short of them.

        A relay then keeps serving until the links it carries have closed: the two
        ends of each are other members, maybe still in the last round's exchange,
        whose frames would die with it (``Node.relaying_now``; each end closes its
        link when it leaves).

        In push-sum the node also waits until it has absorbed the share of every
        step its in-neighbours send it and its own frames have left, then takes
        the mass it holds, x / w, as its final model (``_settle``).
        """
        assert self.graph is not None and self.plan is not None
        node = self.node
        node.set_phase(Phase.LINGERING)
        last = self.completed
        peers = self.graph.links_of(self.me) - node.ledger.revoked().keys()  # refused now
        far = self._far_members(peers, last)
        push_sum = self._push_sum()

        def neighbours_done() -> bool:
            return all(node.ledger.round_of(p) >= last for p in peers)

        def done() -> bool:  # asked at every wake: each record read once it is done
            if not neighbours_done():
                return False
            while far and node.ledger.round_of(far[0]) >= last:
                far.popleft()
            if far:
                return False
            return push_sum is None or (self._absorbed_all(push_sum) and node.flushed())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + node.config.limits.linger_timeout
        if not await node.wait_until(done, node.config.limits.linger_timeout):
            if neighbours_done() and far:
                log.info(
                    "stopped waiting for %d members further off to finish round %d", len(far), last
                )
            else:
                log.info("stopped waiting for neighbours to finish round %d", last)
        elif not await node.delivered(
            sorted(peers - node.ledger.revoked().keys()), deadline - loop.time()
        ):
            log.info("stopped waiting for neighbours to confirm this node's last records")
        elif not await node.wait_until(lambda: not node.relaying_now(), deadline - loop.time()):
            log.info("stopped relaying %d links whose ends had not left", node.relaying_now())
        if push_sum is not None and self._final is not None:
            await self._settle(push_sum)

    def _far_members(self, peers: set[str], last: int) -> deque[str]:
        """The members beyond the neighbours whose last progress record this node waits for.

        Their records reach it through the neighbours, which wait for theirs in
        turn, so no daemon leaves before the federation's last records have reached
        it: on a path, an end node that left once its one neighbour was done saved a
        ledger without the far end's last round. Left out: members that left or were
        revoked, and those already more than ``ABSENT_LAG`` rounds behind (gone
        before the end: waiting for them would only wait out the linger).
        """
        assert self.graph is not None
        ledger = self.node.ledger
        members, left = ledger.members(), ledger.left()
        return deque(
            m
            for m in self.graph.roster
            if m != self.me
            and m not in peers
            and m in members
            and m not in left
            and ledger.round_of(m) >= last - ABSENT_LAG
        )

    def _push_sum(self) -> PushSumGossip | None:
        core = None if self.exchange is None else self.exchange.core
        if isinstance(core, GossipRoundCore) and isinstance(core.gossip, PushSumGossip):
            return core.gossip
        return None

    def _absorbed_all(self, core: PushSumGossip) -> bool:
        """Every in-neighbour's share of every step up to the last, absorbed.

        The core counts its steps by index (``p2pfl.node.numbering``): ``t`` is one, 0..R-1.
        """
        assert self.graph is not None and self.target is not None
        for t in range(self.target):
            for peer in self.graph.neighbourhood(self.me, t).in_weights:
                if t not in core.absorbed(peer):
                    return False
        return True

    async def _settle(self, core: PushSumGossip) -> None:
        """The push-sum node's final model: x / w of the mass it holds, checkpointed."""
        assert self.learner is not None and self._final is not None
        r, mixed, seconds = self._final
        self.learner.set(core.model())
        core_state = self._core_state()
        accuracy, loss = await asyncio.to_thread(self.learner.evaluate)
        await asyncio.to_thread(self._checkpoint, r, mixed, accuracy, loss, seconds, core_state)
        self.node.record("settled", round=r, accuracy=accuracy)

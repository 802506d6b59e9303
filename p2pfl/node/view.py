"""What the dashboard shows of a node: one JSON-ready snapshot (``NodeView.snapshot``).

It reads the node through ``Viewed`` only (``p2pfl.node.node.Node`` fits): its
``status()`` (phase, rounds, links), its ledger, its data directory and config.
The parts, and where each comes from:

- ``node`` and ``round``: ``status()`` as it is (round numbers untouched);
- ``members``: the ledger's members, revoked ones too, whether each approved the
  current plan, and its last progress record;
- ``links``: this node's links from ``status()`` (state, since, last error, bytes);
- ``metrics``: the federation's accuracy and loss per round, only as the sum of
  the masked records of the whole roster (``p2pfl.node.privacy.federation_sum``),
  so a round appears once every member published it; ``shared`` adds the figures
  of the sites that opted in (``[privacy] share_metrics``), and no other site's;
- ``costs``: per round, the bytes this node sent and its training time, priced
  as its run crate prices them (``p2pfl.node.crate.round_cost``), from the
  metadata of the checkpoints (read once each);
- ``privacy``: the epsilon spent by the rounds completed, from the node's DP budget;
- ``audit``: the audit log's verification (``p2pfl.node.audit.verify_data``) and tail.

The ledger and status are read in the event loop (they are the loop's); the
files are read and checked in a worker thread. The audit log's chain is checked
whole (it takes time in proportion to the log, about 25 ms per thousand lines), so
again only once it grew, and no more often than keeps that check to ``AUDIT_SHARE``
of the time; the dashboard's heartbeat brings a deferred check in later.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from p2pfl.node.audit import entries_in, verify_data
from p2pfl.node.audit_chain import split_lines
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint
from p2pfl.node.crate import round_cost
from p2pfl.node.errors import CheckpointError
from p2pfl.node.privacy import OWN, federation_sum
from p2pfl.privacy import accountant
from p2pfl.privacy.metrics import summary

if TYPE_CHECKING:
    from p2pfl.node.config import NodeConfig
    from p2pfl.node.privacy import NodePrivacy
    from p2pfl.spec import Plan
    from protocols.ledger import Ledger

AUDIT_TAIL = 20
AUDIT_SHARE = 0.05  # of the wall time, at most, spent checking the audit log's chain
_PROBLEMS_SHOWN = 5


class RoundsFacts(Protocol):
    """What the view reads of the round driver: the plan and its DP budget, once known."""

    @property
    def plan(self) -> Plan | None: ...
    @property
    def privacy(self) -> NodePrivacy | None: ...


class Viewed(Protocol):
    """What the dashboard reads of its node (module docstring)."""

    @property
    def ledger(self) -> Ledger: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def config(self) -> NodeConfig: ...
    @property
    def rounds(self) -> RoundsFacts: ...

    def status(self) -> dict[str, Any]: ...


class NodeView:
    """Snapshots of one node, with what never changes once read kept between them."""

    def __init__(self, node: Viewed) -> None:
        self.node = node
        self._sums: dict[int, dict[str, Any]] = {}  # rounds every member published
        self._shared: dict[int, list[dict[str, Any]]] = {}
        self._costs: dict[int, dict[str, Any]] = {}  # by round, from checkpoint metadata
        self._read: set[Path] = set()
        self._audit: dict[str, Any] = {}
        self._audit_size = -1
        self._audit_checked = -math.inf
        self._audit_cost = 0.0  # seconds the last check took

    async def snapshot(self) -> dict[str, Any]:
        status = self.node.status()
        ledger = self.node.ledger
        roster = status.get("roster") or []
        metrics, shared = self._metrics(ledger, roster)
        files = await asyncio.to_thread(self._files)
        return {
            "node": {k: status.get(k) for k in _NODE_KEYS},
            "round": {k: status.get(k) for k in _ROUND_KEYS},
            "members": members(ledger, status),
            "links": links(status),
            "metrics": metrics,
            "shared": shared,
            **files,
            "privacy": self._privacy(status),
        }

    # -- the ledger's metrics -------------------------------------------------------------

    def _metrics(
        self, ledger: Ledger, roster: list[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if roster:  # one pass over the ledger's records, summed rounds left out
            for r, records in ledger.metrics_by_round(skip=self._sums).items():
                self._round_metrics(records, roster, r)
        sums = [self._sums[r] for r in sorted(self._sums)]
        shared = [row for r in sorted(self._shared) for row in self._shared[r]]
        return sums, shared

    def _round_metrics(
        self, records: dict[str, dict[str, int | float]], roster: list[str], r: int
    ) -> None:
        self._shared[r] = [
            {
                "round": r,
                "node": node,
                "accuracy": _finite(values.get(OWN + "accuracy")),
                "loss": _finite(values.get(OWN + "loss")),
            }
            for node, values in sorted(records.items())
            if OWN + "accuracy" in values
        ]
        total = federation_sum(records, roster)
        if total is not None:
            accuracy, loss = summary(total)
            self._sums[r] = {
                "round": r,
                "accuracy": _finite(accuracy),
                "loss": _finite(loss),
                "samples": total["samples"],
            }

    # -- the files --------------------------------------------------------------------------

    def _files(self) -> dict[str, Any]:
        """Costs and audit, read from disk (a worker thread)."""
        self._read_checkpoints()
        return {
            "costs": [self._costs[r] for r in sorted(self._costs)],
            "audit": self._check_audit(),
        }

    def _read_checkpoints(self) -> None:
        energy = self.node.config.energy
        for r, path in list_checkpoints(self.node.data_dir / "checkpoints"):
            if path in self._read:
                continue
            self._read.add(path)
            try:
                meta = read_checkpoint(path, model=False).meta
            except CheckpointError:
                continue
            self._costs[r] = {
                "round": r,
                "bytes_sent": int(meta.get("bytes_sent") or 0),
                "train_seconds": float(meta.get("train_seconds") or 0.0),
                "seconds": float(meta.get("seconds") or 0.0),
                **round_cost(meta, energy),
            }

    def _check_audit(self) -> dict[str, Any]:
        """The tail as it is now, the chain as last checked (``lines``: how much of the log
        that check covered; module docstring)."""
        path = self.node.data_dir / "audit.jsonl"
        try:
            size = path.stat().st_size
            due = time.monotonic() - self._audit_checked >= self._audit_cost / AUDIT_SHARE
            if size != self._audit_size and due:
                started = time.monotonic()
                self._audit = audit_check(path.read_bytes())
                self._audit_size, self._audit_checked = size, time.monotonic()
                self._audit_cost = self._audit_checked - started
            tail = audit_tail(path)
        except OSError as exc:
            return {"ok": False, "error": f"cannot read the audit log: {exc.strerror}", "tail": []}
        return {**self._audit, "tail": tail}

    # -- differential privacy -------------------------------------------------------------

    def _privacy(self, status: dict[str, Any]) -> dict[str, Any] | None:
        rounds = self.node.rounds
        plan, privacy = rounds.plan, rounds.privacy
        if plan is None or privacy is None or privacy.budget is None:
            return None
        budget, section = privacy.budget, plan.privacy
        planned = plan.training.rounds
        done = min(planned, max(0, int(status.get("completed", 0))))  # rounds completed
        steps = budget.steps * done // planned if planned else 0
        spent = (
            0.0
            if math.isinf(budget.noise_multiplier)
            else accountant.epsilon(
                [(budget.noise_multiplier, budget.sample_rate, steps)],
                section.delta,
                section.accountant,
            )
        )
        return {
            "mechanism": section.mechanism,
            "delta": section.delta,
            "epsilon_spent": _finite(spent),
            "epsilon_run": _finite(budget.epsilon),
            "rounds_done": done,
            "rounds_planned": planned,
        }


_NODE_KEYS = (
    "node_id",
    "name",
    "federation",
    "address",
    "phase",
    "started",
    "updated",
    "last_error",
    "secure",
    "plan_hash",
)
_ROUND_KEYS = ("phase", "round", "completed", "rounds", "resumed_from", "last_round")


def members(ledger: Ledger, status: dict[str, Any]) -> list[dict[str, Any]]:
    """The ledger's members (revoked ones too), each with its approval and progress."""
    plan_hash = ledger.plan_hash()
    approvals = ledger.approvals()
    progress = ledger.progress()
    me = status.get("node_id")
    neighbours = status.get("neighbours") or {}
    return [
        {
            "node_id": node,
            "institution": member.institution,
            "address": member.address,
            "approved": plan_hash is not None and approvals.get(node) == plan_hash,
            "revoked": member.revoked,
            "progress": progress.get(node),
            "me": node == me,
            "neighbour": node in neighbours,
        }
        for node, member in sorted(ledger.members(include_revoked=True).items())
    ]


def links(status: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("state", "since", "last_error", "address", "sent_bytes", "received_bytes")
    return [
        {"peer": peer, **{k: link.get(k) for k in keys}}
        for peer, link in sorted((status.get("neighbours") or {}).items())
    ]


def audit_check(data: bytes) -> dict[str, Any]:
    """A log's verification, with its first problems."""
    verification = verify_data(data)
    return {
        "ok": verification.ok,
        "entries": verification.entries,
        "lines": verification.lines,
        "head": verification.head,
        "problems": [
            {"line": p.line, "kind": p.kind.value, "detail": p.detail}
            for p in verification.problems[:_PROBLEMS_SHOWN]
        ],
        "problem_count": len(verification.problems),
    }


def audit_tail(path: Path, limit: int = 1 << 16) -> list[dict[str, Any]]:
    """The last ``AUDIT_TAIL`` entries of the log, read from its last ``limit`` bytes."""
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - limit))
        data = handle.read()
    lines = split_lines(data)
    if size > limit:
        lines = lines[1:]  # the first one is cut
    return [
        {k: v for k, v in e.items() if k != "prev"}
        for e in entries_in(b"\n".join(lines[-AUDIT_TAIL:]))
    ]


def _finite(value: float | None) -> float | None:
    """A figure JSON can carry: NaN and infinities become None."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)

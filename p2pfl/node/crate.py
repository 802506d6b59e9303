"""A node's run as a crate in ``DATA_DIR/crate/`` (``write_node_crate``).

Written at shutdown, once the ledger is saved and the audit log closed. The
crate is built in a temporary directory next to it and then takes the place
of the previous run's crate (rename), so a crash leaves the old crate, the
new one, or none, never half of one; leftovers of an interrupted write are
removed on the next.

The node calls ``record_node_run(self)`` when it stops; what the crate reads of
it is ``RunFacts`` (the ``Node`` fits), so this module needs nothing above it.
Simulations write their crates with ``p2pfl.provenance``; both build on
``p2pfl.runcrate``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from p2pfl.energy import EnergySection, round_energy
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint
from p2pfl.node.errors import CheckpointError
from p2pfl.node.numbering import FIRST
from p2pfl.node.phases import Phase
from p2pfl.runcrate import (
    COMPLETED,
    LEDGER_HASH_ID,
    NODE_CRATE_DIR,
    PLAN_FILE,
    PLAN_HASH_ID,
    add_action,
    add_entity,
    add_file,
    add_value,
    new_crate,
    now,
)

if TYPE_CHECKING:
    from rocrate.rocrate import ROCrate  # type: ignore[import-untyped]

    from p2pfl.node.audit import AuditLog
    from p2pfl.node.config import NodeConfig
    from protocols.ledger import Ledger

log = logging.getLogger(__name__)


class RoundFacts(Protocol):
    """What the crate reads of the node's round driver."""

    @property
    def completed(self) -> int: ...  # rounds completed, the number of the last (0: none)
    @property
    def target(self) -> int | None: ...
    @property
    def resumed_from(self) -> int | None: ...
    @property
    def plan_hash(self) -> bytes | None: ...  # the plan the rounds trained


class RunFacts(Protocol):
    """What the crate reads of a node whose run is over (``p2pfl.node.node.Node`` fits)."""

    @property
    def node_id(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def config(self) -> NodeConfig: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def audit(self) -> AuditLog | None: ...
    @property
    def rounds(self) -> RoundFacts: ...
    @property
    def started(self) -> float: ...  # a Unix time
    @property
    def phase(self) -> Phase: ...
    @property
    def last_error(self) -> str: ...


def record_node_run(node: RunFacts) -> Path | None:
    """``write_node_crate`` for the node's shutdown: a failure is logged, never raised.

    A crate that cannot be written must not hide how the node ended.
    """
    try:
        target = write_node_crate(node)
    except Exception as exc:  # a full disk, a vanished file: say so, keep shutting down
        log.error("cannot write the run's RO-Crate in %s: %s", node.data_dir, exc)
        return None
    log.info("wrote the run's RO-Crate to %s", target)
    return target


def write_node_crate(node: RunFacts, *, ended: datetime.datetime | None = None) -> Path:
    """Package the node's run into ``DATA_DIR/crate/`` (replacing the previous run's crate).

    Called when the run is over: the ledger saved, the audit log closed. The
    crate holds the plan (``plan.json``), the newest checkpoint, ``metrics.json``
    (rounds this node kept, the ledger's progress and published metrics), the
    audit log, the ledger file's SHA-256 and every member's approval. Returns
    the crate directory.
    """
    ended = ended or now()
    started = datetime.datetime.fromtimestamp(node.started, datetime.UTC)
    target = node.data_dir / NODE_CRATE_DIR
    _remove_stale(node.data_dir)
    staging = Path(tempfile.mkdtemp(dir=node.data_dir, prefix=f".{NODE_CRATE_DIR}-new-"))
    try:
        crate = _node_crate(node, staging, started, ended)
        crate.write(staging)
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _node_crate(
    node: RunFacts, staging: Path, started: datetime.datetime, ended: datetime.datetime
) -> ROCrate:
    """The crate's metadata; the files it lists that did not exist are made in ``staging``."""
    ledger = node.ledger
    me = node.node_id
    crate = new_crate(
        f"p2pfl node run {node.config.node.name or me}",
        f"One run of node {me} in federation {ledger.federation_id}.",
        ended,
    )
    members = _add_members(crate, ledger)
    objects = _node_inputs(crate, node, staging)
    _add_approvals(crate, ledger, members)  # after the plan: they point at plan.json
    add_action(
        crate,
        name=f"p2pfl node run {me}",
        agent=members.get(me) or _member(crate, me, ""),
        objects=objects,
        results=_node_outputs(crate, node, staging),
        times=(started, ended),
        error=_node_error(node),
    )
    return crate


def _node_inputs(crate: ROCrate, node: RunFacts, staging: Path) -> list[Any]:
    """The plan (file and hash) and where the site's data came from."""
    objects = _plan_entities(crate, node.ledger, staging)
    entry = node.config.data
    objects.append(add_value(crate, "#data-entrypoint", "data entrypoint", entry.entrypoint))
    if entry.args or entry.kwargs:
        arguments = {"args": entry.args, "kwargs": entry.kwargs}
        objects.append(add_value(crate, "#data-arguments", "data arguments", arguments))
    return objects


def _node_outputs(crate: ROCrate, node: RunFacts, staging: Path) -> list[Any]:
    """Newest checkpoint, metrics, audit log, and the ledger file's hash."""
    checkpoints = _kept_checkpoints(node.data_dir / "checkpoints")
    results = []
    if checkpoints:
        newest = checkpoints[-1]
        results.append(
            add_file(crate, newest.path, newest.path.name, f"model after round {newest.round}")
        )
    metrics = staging / "metrics.json"
    metrics.write_text(json.dumps(_node_metrics(node, checkpoints), indent=2, sort_keys=True))
    results.append(add_file(crate, metrics, "metrics.json", "rounds, progress and metrics"))
    if node.audit is not None:
        results.append(
            add_file(crate, node.audit.path, "audit.jsonl", "hash-chained audit log (whole)")
        )
    ledger_file = node.config.ledger_file
    results.append(
        add_value(
            crate,
            LEDGER_HASH_ID,
            "ledger sha256",
            _sha256_file(ledger_file),
            f"SHA-256 of the ledger file as saved at the end of the run: {ledger_file}",
        )
    )
    return results


def _node_error(node: RunFacts) -> str | None:
    """None when the run finished; otherwise why it did not."""
    if node.phase is Phase.FINISHED:
        return None
    done, target = node.rounds.completed, node.rounds.target
    of = f" of {target}" if target else ""
    reason = node.last_error or "stopped before the run finished"
    return f"{reason} (phase {node.phase.value}, {done}{of} rounds completed; a restart resumes)"


def _plan_entities(crate: ROCrate, ledger: Any, staging: Path) -> list[Any]:
    """The ledger's plan as ``plan.json``, identified by its hash (what members approve)."""
    plan, plan_hash = ledger.plan(), ledger.plan_hash()
    if plan is None or plan_hash is None:
        return []
    digest = add_value(
        crate,
        PLAN_HASH_ID,
        "plan hash",
        plan_hash.hex(),
        "SHA-256 of the plan's canonical encoding (protocols.records.plan_hash)",
    )
    path = staging / PLAN_FILE
    path.write_text(json.dumps(plan, indent=2, sort_keys=True))
    entity = add_file(crate, path, PLAN_FILE, "the training plan, from the ledger")
    entity["identifier"] = digest
    return [entity, digest]


def _member(crate: ROCrate, node_id: str, institution: str) -> Any:
    props = {"@type": "Organization", "name": institution or node_id, "identifier": node_id}
    return add_entity(crate, f"#member-{node_id}", props)


def _add_members(crate: ROCrate, ledger: Any) -> dict[str, Any]:
    members = ledger.members(include_revoked=True)
    return {nid: _member(crate, nid, m.institution) for nid, m in sorted(members.items())}


def _add_approvals(crate: ROCrate, ledger: Any, members: dict[str, Any]) -> None:
    """Each member's latest signed approval, as an ``EndorseAction`` of a plan hash."""
    current = ledger.plan_hash()
    for nid, approved in sorted(ledger.approvals().items()):
        what = crate.get(PLAN_FILE) if approved == current else None
        if what is None:  # an older plan, not in this crate: its hash stands for it
            what = add_value(crate, f"#plan-hash-{approved.hex()}", "plan hash", approved.hex())
        props = {
            "@type": "EndorseAction",
            "name": f"approval by {nid}",
            "description": f"signed plan hash {approved.hex()}",
            "actionStatus": {"@id": COMPLETED},
        }
        action = add_entity(crate, f"#approval-{nid}", props)
        action["agent"] = members.get(nid) or _member(crate, nid, "")
        action["object"] = what
        crate.root_dataset.append_to("mentions", action)


def _kept_checkpoints(directory: Path) -> list[Any]:
    kept = []
    for _, path in list_checkpoints(directory):
        with contextlib.suppress(CheckpointError):  # checked whole, its model never held
            kept.append(read_checkpoint(path, model=False))
    return kept


_ROUND_KEYS = (
    "accuracy",
    "loss",
    "seconds",
    "train_seconds",
    "mix_seconds",
    "arrived",
    "stragglers",
    "abandoned",
    "bytes_sent",
    "finished_at",
)


def _node_metrics(node: RunFacts, checkpoints: list[Any]) -> dict[str, Any]:
    ledger = node.ledger
    rounds = node.rounds
    completed = rounds.completed
    published = {str(r): ledger.metrics(r) for r in range(FIRST, completed + 1)}
    current = ledger.plan_hash()
    trained = rounds.plan_hash
    return {
        "node": node.node_id,
        "federation": ledger.federation_id,
        "plan_hash": None if current is None else current.hex(),
        "trained_plan_hash": None if trained is None else trained.hex(),
        "completed": completed,
        "target": rounds.target,
        "resumed_from": rounds.resumed_from,
        "rounds": [
            {
                "round": c.round,
                **{k: c.meta.get(k) for k in _ROUND_KEYS},
                "energy": _round_energy(node, c.meta),
            }
            for c in checkpoints
        ],
        "progress": ledger.progress(),
        "published": {r: m for r, m in published.items() if m},
    }


def _round_energy(node: RunFacts, meta: dict[str, Any]) -> dict[str, float]:
    return round_cost(meta, node.config.energy)


def round_cost(meta: dict[str, Any], factors: EnergySection) -> dict[str, float]:
    """This node's bytes sent and training time in a round (a checkpoint's metadata),
    priced with ``factors`` (its ``[energy]``); the dashboard shows the same figures."""
    sent = float(meta.get("bytes_sent") or 0)
    seconds = float(meta.get("train_seconds") or 0.0)
    return round_energy(sent, seconds, factors)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_stale(data_dir: Path) -> None:
    """Staging directories of a write a crash interrupted."""
    for entry in data_dir.glob(f".{NODE_CRATE_DIR}-*"):
        shutil.rmtree(entry, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``: a reader sees the old crate, the new one, or none."""
    old = None
    if target.exists():
        old = target.with_name(f".{NODE_CRATE_DIR}-old-{uuid.uuid4().hex}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

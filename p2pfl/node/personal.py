"""A site's personalisation: what it gossips of its model, and its fine-tuned model.

``selection_of``: under ``[personalise] method = "partial"``, the shared part of
the node's model (``RunSpec.selection``) that its round core mixes.

With ``[personalise] method = "finetune"`` a node that completed every round of
the plan fine-tunes its final gossip model on its own training rows, stopped
early on a validation split of them (``p2pfl.finetune``: drawn from the plan's
seed and the node's index, the one its batches are seeded by), and writes the
parameters it kept to ``personalised.npy`` in its data directory (a flat float32
vector in ``flat_parameters`` order, written atomically). Nothing of it is sent:
the shared model, its checkpoints and the ledger are as they were. Partial
sharing needs nothing here: its personal layers never left the node, so the
node's model after the last round is already its personalised one.
"""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import numpy as np

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import ConfigError
from p2pfl.finetune import Finetuned, finetune
from p2pfl.models import named_sizes
from p2pfl.node.errors import PlanError, storage_error
from p2pfl.node.host import RoundHost
from p2pfl.node.local import Learner
from p2pfl.spec import Plan
from p2pfl.training import schedule_from
from protocols.partial import Selection

PERSONALISED = "personalised.npy"

log = logging.getLogger(__name__)


def personalise(plan: Plan, learner: Learner, site: int, directory: Path) -> Finetuned:
    """Fine-tune ``learner``'s model per the plan and write it; blocking (run it in a thread)."""
    data = learner.data
    done = finetune(
        learner.model,
        learner.params.detach().clone(),
        data.x_train,
        data.y_train,
        schedule_from(plan.training),
        plan.personalise,
        seed=plan.seed,
        site=site,
    )
    buffer = io.BytesIO()
    np.save(buffer, done.params[0].numpy().astype(np.float32), allow_pickle=False)
    atomic_write_bytes(directory / PERSONALISED, buffer.getvalue(), mode=0o600)
    log.info(
        "personalised model written (%d fine-tuning steps kept, validation loss %.4f on %d rows)",
        done.steps,
        done.val_loss,
        done.val_size,
    )
    return done


async def keep_personalised(
    node: RoundHost, plan: Plan, learner: Learner, site: int, completed: int
) -> None:
    """``personalise`` in a worker thread, recorded in the audit log; a failed write stops."""
    try:
        done = await asyncio.to_thread(personalise, plan, learner, site, node.data_dir)
    except OSError as exc:
        raise storage_error("the personalised model", node.data_dir, exc, completed) from None
    node.record("personalised", steps=done.steps, val_loss=done.val_loss, val_rows=done.val_size)


def selection_of(plan: Plan, learner: Learner) -> Selection | None:
    """What this node gossips of its model under partial sharing, or None: all of it."""
    try:
        return plan.selection(named_sizes(learner.model))
    except ConfigError as exc:
        raise PlanError(f"the plan's {exc}") from None

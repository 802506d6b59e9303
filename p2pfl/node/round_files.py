"""The files a round driver writes about its rounds: checkpoints and the dealt mark.

- A round's checkpoint (``p2pfl.node.checkpoint``): the model, the optimizer's
  state and the round core's (``CORE_STATE`` names), and the round's metadata;
  written durably (fsynced) before the round's progress is reported, then the
  oldest pruned. A disk that refuses raises ``StorageError``: the node stops.
- The dealt mark, ``secure-dealt``: in a secure round, written durably before
  the self-mask shares go out, so a restart never deals twice in one round
  (``dealt_round``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl.atomic import atomic_write_bytes
from p2pfl.node.checkpoint import prune_checkpoints, write_checkpoint
from p2pfl.node.errors import storage_error
from p2pfl.node.numbering import number

DEALT_FILE = "secure-dealt"
NUMBERED = "numbered"
"""The dealt file's third word: its round is a number (``mark_dealt``)."""
CORE_STATE = "gossip."
"""Prefix of the round core's arrays in a checkpoint's ``state`` (the rest: the optimizer's)."""


def mark_dealt(data_dir: Path, r: int, plan_hash: bytes) -> None:
    """``N HASH numbered``: round number N of the plan HASH (a file of two words,
    written before rounds were numbered from 1, holds the round's index)."""
    text = f"{r} {plan_hash.hex()} {NUMBERED}\n"
    atomic_write_bytes(data_dir / DEALT_FILE, text.encode())


def dealt_round(data_dir: Path, plan_hash: bytes) -> int | None:
    """The number of the round of plan ``plan_hash`` this node last dealt shares in."""
    try:
        text, written_for, *numbered = (data_dir / DEALT_FILE).read_text().split()
        dealt = int(text) if numbered == [NUMBERED] else number(int(text))
    except (OSError, ValueError):
        return None
    return dealt if written_for == plan_hash.hex() else None


def split_state(
    state: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A checkpoint's state as (the optimizer's, the round core's with the prefix off)."""
    optimizer = {k: v for k, v in state.items() if not k.startswith(CORE_STATE)}
    core = {k[len(CORE_STATE) :]: v for k, v in state.items() if k.startswith(CORE_STATE)}
    return optimizer, core


def save_round(
    directory: Path,
    r: int,
    model: np.ndarray,
    meta: dict[str, Any],
    state: Mapping[str, np.ndarray],
    keep: int,
) -> None:
    """Checkpoint round ``r`` and prune to the ``keep`` newest; ``StorageError`` if refused."""
    try:  # a node that cannot keep its rounds must not train on: it stops here
        write_checkpoint(directory, r, model, meta, state=state)
    except OSError as exc:
        raise storage_error(f"the checkpoint of round {r}", directory, exc, r - 1) from None
    try:
        prune_checkpoints(directory, keep)
    except OSError as exc:
        raise storage_error("(remove) old checkpoints", directory, exc, r) from None

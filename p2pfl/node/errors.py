"""The errors a node raises, in one tree (all ``P2PFLError``: the CLI prints them plainly).

- ``PlanError`` (from ``p2pfl.spec``): the ledger's training plan is missing, not approved,
  or not runnable here.
- ``DataError`` (from ``p2pfl.errors``): the data entrypoint failed or returned bad data.
- ``ConfigError`` (from ``p2pfl.errors``): the node's settings do not fit its ledger
  record, its TLS pair or its data (``p2pfl.node.preflight``).
- ``DataDirInUse``: another node process holds the data directory's lock.
- ``CheckpointError``: a checkpoint file is damaged or belongs to another federation.
- ``StorageError``: the node cannot write its state (a round's checkpoint, the ledger
  file, a line of its audit log): a full or read-only disk. The node stops after the
  round it could not keep (at once for the audit log: ``p2pfl.node.latch``).
- ``NodeStopped``: the node was asked something after it stopped.
"""

from __future__ import annotations

from p2pfl.errors import ConfigError, DataError, P2PFLError
from p2pfl.spec.errors import PlanError


class CheckpointError(P2PFLError):
    """A checkpoint file is missing, truncated, altered or not a checkpoint."""


class DataDirInUse(P2PFLError):
    """Another node process holds this data directory (its pid is in the message)."""


class StorageError(P2PFLError):
    """The data directory refused a write of the node's state (the message names both)."""


def storage_error(what: str, where: object, exc: OSError, kept: int | None) -> StorageError:
    """The one line a node stops with when ``what`` cannot be written in ``where``.

    ``kept``: the last round whose checkpoint is on disk, when known (0: none).
    """
    reason = exc.strerror or str(exc)
    code = f" [Errno {exc.errno}]" if exc.errno is not None else ""
    last = "" if kept is None else f" (its last checkpoint: round {kept})" if kept else ""
    return StorageError(
        f"{where}: cannot write {what}: {reason}{code}; the node stopped{last}: free space "
        "or make the directory writable, then start it again to resume"
    )


class NodeStopped(P2PFLError):
    """The node is stopped (or stopping); nothing more can be asked of it."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataDirInUse",
    "DataError",
    "NodeStopped",
    "P2PFLError",
    "PlanError",
    "StorageError",
]

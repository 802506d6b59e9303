"""The errors a node raises, in one tree (all ``P2PFLError``: the CLI prints them plainly).

- ``PlanError`` (from ``p2pfl.spec``): the ledger's training plan is missing, not approved,
  or not runnable here.
- ``DataError`` (from ``p2pfl.errors``): the data entrypoint failed or returned bad data.
- ``ConfigError`` (from ``p2pfl.errors``): the node's settings do not fit its ledger
  record, its TLS pair or its data (``p2pfl.node.preflight``).
- ``DataDirInUse``: another node process holds the data directory's lock.
- ``CheckpointError``: a checkpoint file is damaged or belongs to another federation.
- ``NodeStopped``: the node was asked something after it stopped.
"""

from __future__ import annotations

from p2pfl.errors import ConfigError, DataError, P2PFLError
from p2pfl.spec.errors import PlanError


class CheckpointError(P2PFLError):
    """A checkpoint file is missing, truncated, altered or not a checkpoint."""


class DataDirInUse(P2PFLError):
    """Another node process holds this data directory (its pid is in the message)."""


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
]

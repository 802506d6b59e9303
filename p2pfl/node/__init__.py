"""The node daemon: one federation member, its links, its rounds, its files.

``Node`` (``p2pfl.node.node``) is what ``p2pfl node run`` and ``p2pfl.Peer``
drive; ``NodeConfig`` / ``load_config`` read its TOML file. See docs/node.md.
"""

from __future__ import annotations

from p2pfl.node.config import NodeConfig, config_from_table, load_config
from p2pfl.node.errors import CheckpointError, DataDirInUse, NodeStopped, PlanError
from p2pfl.node.events import (
    DropoutsDeclared,
    Event,
    Finished,
    LinkDown,
    LinkUp,
    Refused,
    RoundCompleted,
    RoundSkipped,
    TrainingStarted,
)

__all__ = [
    "CheckpointError",
    "DataDirInUse",
    "DropoutsDeclared",
    "Event",
    "Finished",
    "LinkDown",
    "LinkUp",
    "NodeConfig",
    "NodeStopped",
    "PlanError",
    "Refused",
    "RoundCompleted",
    "RoundSkipped",
    "TrainingStarted",
    "config_from_table",
    "load_config",
]

"""Round cores: one node's round in any mode, bytes in, frames and events out.

``RoundCore`` (in ``core``) is the interface; ``GossipRoundCore`` runs sync,
CHOCO and push-sum gossip, ``SecureRoundCore`` secure aggregation over sync,
``TrackedRoundCore`` gradient tracking and quasi-global momentum over either,
``PartialRoundCore`` sync or secure over the shared part of a model only.
Every call returns a ``RoundOutput``.
"""

from protocols.rounds.core import (
    DeclarationExpired,
    DeclarationHeld,
    Frame,
    RoundCore,
    RoundEvent,
    RoundOutput,
)
from protocols.rounds.gossip import GossipRoundCore
from protocols.rounds.partial import PartialRoundCore
from protocols.rounds.secure import HoodOf, SecureRoundCore, SelfSeed
from protocols.rounds.tracked import RoundRule, TrackedRoundCore

__all__ = [
    "DeclarationExpired",
    "DeclarationHeld",
    "Frame",
    "GossipRoundCore",
    "HoodOf",
    "PartialRoundCore",
    "RoundCore",
    "RoundEvent",
    "RoundOutput",
    "RoundRule",
    "SecureRoundCore",
    "SelfSeed",
    "TrackedRoundCore",
]

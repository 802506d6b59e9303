"""One run spec for rehearsal and deployment: what a scenario simulates is what a plan deploys.

- ``RunSpec`` (``run.py``): the shared sections, one set of defaults, ``check(n)``.
- ``Graph`` (``graph.py``): the spec's topology over a roster of names.
- ``Plan`` (``plan.py``): a run spec plus the data every site hands it.
- ``derive.py``: the federation's mask binding, the privacy budget, randomness, keys.
- ``dp.py``: a node's DP trainer and delta noise.
"""

from p2pfl.spec.derive import (
    KeyRing,
    Randomness,
    Rehearsal,
    System,
    federation_bytes,
    privacy_budget,
    rehearsal_federation,
)
from p2pfl.spec.errors import PlanError
from p2pfl.spec.graph import Graph
from p2pfl.spec.plan import Plan, PlanData, plan_from_table, plan_of
from p2pfl.spec.run import SPEC_FIELDS, RunSpec
from p2pfl.spec.sections import (
    MODES,
    GossipSection,
    ModelSection,
    PersonaliseSection,
    SecureSection,
    TopologySection,
    TrainingSection,
)

__all__ = [
    "MODES",
    "SPEC_FIELDS",
    "GossipSection",
    "Graph",
    "KeyRing",
    "ModelSection",
    "PersonaliseSection",
    "Plan",
    "PlanData",
    "PlanError",
    "Randomness",
    "Rehearsal",
    "RunSpec",
    "SecureSection",
    "System",
    "TopologySection",
    "TrainingSection",
    "federation_bytes",
    "plan_from_table",
    "plan_of",
    "privacy_budget",
    "rehearsal_federation",
]

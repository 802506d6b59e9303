"""Pure maths on communication graphs: families, mixing matrices, spectral analysis, schedules.

    from topology import build, FAMILIES
    topo = build("ring", 16)              # Metropolis weights by default
    w = topo.mixing(step)                 # x_next = w @ x
    topology.summary(topo)                # connected, degrees, diameter, gap, ...

This package imports only networkx, numpy, scipy and the standard library; it
never imports ``p2pfl`` or ``protocols``. The names below load on first use
(PEP 562), so ``import topology.errors`` or the catalogue of families does not
pay for importing scipy and networkx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from topology.catalog import FAMILIES, WEIGHT_RULES, FamilyInfo, Parameter
from topology.errors import TopologyError

if TYPE_CHECKING:
    from topology import analysis
    from topology.analysis import exact_averaging_steps, schedule_gap, spectral_gap, summary
    from topology.core import APERIODIC, Topology
    from topology.families import build
    from topology.files import GraphFile, read_graph_file

_LAZY = {
    "analysis": "topology.analysis",
    "exact_averaging_steps": "topology.analysis",
    "schedule_gap": "topology.analysis",
    "spectral_gap": "topology.analysis",
    "summary": "topology.analysis",
    "APERIODIC": "topology.core",
    "Topology": "topology.core",
    "build": "topology.families",
    "GraphFile": "topology.files",
    "read_graph_file": "topology.files",
}

__all__ = [
    "APERIODIC",
    "FAMILIES",
    "WEIGHT_RULES",
    "FamilyInfo",
    "GraphFile",
    "Parameter",
    "Topology",
    "TopologyError",
    "analysis",
    "build",
    "exact_averaging_steps",
    "read_graph_file",
    "schedule_gap",
    "spectral_gap",
    "summary",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'topology' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if name == "analysis" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Example data entrypoints for ``[data] entrypoint`` (see ``p2pfl.node.data`` for the contract).

``heart_site(name)`` gives one of the four UCI Heart Disease hospitals its
own patients, as the ``natural`` partition of ``p2pfl.datasets`` splits them:
set ``entrypoint = "p2pfl.node.examples:heart_site"`` and ``args = ["Hungary"]``.
A real site would read its own files instead; note that this example
standardises features with statistics of all four hospitals' training rows
(how ``load_federated`` prepares the vendored data), which a real site would
compute locally or agree on in the plan.

``scenario_node(scenario, index)`` gives node ``index`` of a simulation
scenario its data exactly as the simulation engines see it; ``p2pfl simulate
--engine processes`` uses it so that daemons and engines train on the same rows.
"""

from __future__ import annotations

from p2pfl.datasets import NodeData, load_federated
from p2pfl.errors import DataError

HEART_SITES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")


def heart_site(name: str, *, test_fraction: float = 0.25, seed: int = 0) -> NodeData:
    """One hospital's train/test split of the UCI Heart Disease data (37 features, 2 classes)."""
    wanted = name.strip().lower()
    data = load_federated(
        "heart", len(HEART_SITES), "natural", test_fraction=test_fraction, seed=seed
    )
    for node in data.nodes:
        if node.name.lower() == wanted or node.name.lower().startswith(wanted + " "):
            return node
    raise DataError(f"no heart-disease site {name!r}; sites: {', '.join(HEART_SITES)}")


def scenario_node(scenario: str, index: int) -> NodeData:
    """Node ``index`` of the scenario file ``scenario``, as the simulation engines load it."""
    from p2pfl.engines.common import prepare
    from p2pfl.scenario import load_scenario

    setup = prepare(load_scenario(scenario))
    if not 0 <= index < setup.n:
        raise DataError(f"scenario {scenario} has nodes 0..{setup.n - 1}, not {index}")
    return setup.data.nodes[index]

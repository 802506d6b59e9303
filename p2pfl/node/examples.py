"""Example data entrypoints for ``[data] entrypoint`` (see ``p2pfl.node.data`` for the contract).

``heart_site(name)`` gives one of the four UCI Heart Disease hospitals its
own patients, as the ``natural`` partition of ``p2pfl.datasets`` splits them:
set ``entrypoint = "p2pfl.node.examples:heart_site"`` and ``args = ["Hungary"]``.
A real site would read its own files instead; note that this example
standardises features with statistics of all four hospitals' training rows
(how ``load_federated`` prepares the vendored data), which a real site would
compute locally or agree on in the plan.

``heart_schema()`` is the ``[data.schema]`` those sites' data fit (the
example plan ``simulations/plans/heart_disease.toml`` carries it): what the
entrypoint returns, so standardised numbers, not raw units. A site that sent
raw millimetres of mercury, or left NaN where the others impute, would be
refused before training.

``scenario_node(scenario, index)`` gives node ``index`` of a simulation
scenario its data exactly as the simulation engines see it; ``p2pfl simulate
--engine processes`` uses it so that daemons and engines train on the same rows.
"""

from __future__ import annotations

from typing import Any

from p2pfl.datasets import NodeData, load_federated
from p2pfl.datasets.heart import CATEGORICAL, MISSING, MISSING_INDICATORS
from p2pfl.errors import DataError

HEART_SITES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")

# Standardised numeric columns: the raw unit, and bounds on the z-score a few standard
# deviations past what the four hospitals hold (their extremes: age -2.6..2.4, trestbps
# -2.8..3.6, chol -2.7..6.0, thalch -2.9..2.4, oldpeak -3.1..4.8, ca -0.7..2.5).
HEART_NUMERIC: dict[str, tuple[str, float, float]] = {
    "age": ("years", -5.0, 5.0),
    "trestbps": ("mm Hg", -5.0, 6.0),
    "chol": ("mg/dL", -5.0, 8.0),
    "thalch": ("beats/min", -5.0, 5.0),
    "oldpeak": ("mm ST depression", -5.0, 7.0),
    "ca": ("major vessels", -1.0, 3.0),
}


def heart_schema() -> dict[str, Any]:
    """The ``[data.schema]`` table of ``heart_site``'s 37 columns (see the module docstring)."""
    features: list[dict[str, Any]] = [
        {"name": name, "type": "float", "unit": f"z-score of {unit}", "min": low, "max": high}
        for name, (unit, low, high) in HEART_NUMERIC.items()
    ]
    features += [
        {"name": f"{c}_missing", "type": "int", "min": 0.0, "max": 1.0} for c in MISSING_INDICATORS
    ]
    features += [
        {"name": f"{c}={level}", "type": "category", "values": [0.0, 1.0]}
        for c, levels in CATEGORICAL.items()
        for level in (*levels, MISSING)
    ]
    return {"label": "disease", "classes": ["no disease", "disease"], "features": features}


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
    from p2pfl.scenario import load_data, load_scenario

    nodes = load_data(load_scenario(scenario)).nodes
    if not 0 <= index < len(nodes):
        raise DataError(f"scenario {scenario} has nodes 0..{len(nodes) - 1}, not {index}")
    return nodes[index]

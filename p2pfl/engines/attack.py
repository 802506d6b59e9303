"""Simulated Byzantine members: what an attacker sends instead of its trained model.

``[attack]`` (``p2pfl.scenario.AttackSection``) names nodes whose outgoing model
is replaced every round, after local training and before mixing, in the
protocol and the vectorized engines alike: ``apply_attack`` rewrites their
rows in place. The delta it attacks is what a sync message carries: the model
against the zero reference both ends hold (``protocols.gossip``), so
``sign-flip`` sends -``scale`` * x (with ``scale = 1``, the plain bit flip),
``scale`` sends ``scale`` * x, ``nan`` NaN everywhere.
The processes engine runs real daemons and simulates no attacker
(``refuse_attack``).

``attack_summary`` is what the report adds: the honest nodes' mean accuracy on
the global test set at the end, the figure an attack is judged by (attackers'
own models are left out of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from p2pfl.engines.common import Setup
from p2pfl.errors import ConfigError
from p2pfl.training import evaluate


def attack_rows(setup: Setup, order: Sequence[int]) -> list[int]:
    """Positions in ``order`` (a stack of nodes) of the attackers among them."""
    attackers = set(setup.scenario.attack.nodes)
    return [pos for pos, node in enumerate(order) if node in attackers]


def apply_attack(setup: Setup, params: Tensor, rows: Sequence[int]) -> None:
    """Replace the trained ``params[rows]`` by what the attackers send (module docstring)."""
    if not rows:
        return
    a = setup.scenario.attack
    index = torch.as_tensor(list(rows), dtype=torch.int64, device=params.device)
    if a.kind == "sign-flip":
        params[index] = -a.scale * params[index]
    elif a.kind == "scale":
        params[index] = a.scale * params[index]
    else:
        params[index] = float("nan")


def check_attack(setup: Setup) -> None:
    """Attackers must be nodes of the run, and leave at least one honest node."""
    nodes = setup.scenario.attack.nodes
    if any(i >= setup.n for i in nodes):
        raise ConfigError(f"attack.nodes {nodes} names no node of this run (0..{setup.n - 1})")
    if len(nodes) >= setup.n:
        raise ConfigError("attack.nodes leaves no honest node to judge the attack by")


def refuse_attack(setup: Setup, engine: str) -> None:
    if setup.scenario.attack.nodes:
        raise ConfigError(
            f"[attack] is simulated by the protocol and vectorized engines, not by {engine}"
        )


def attack_summary(setup: Setup, final: Tensor) -> dict[str, Any]:
    """``{"attack": {...}}`` with the honest nodes' final accuracy; empty without attackers.

    ``final`` holds every node's parameters in node order.
    """
    a = setup.scenario.attack
    if not a.nodes:
        return {}
    honest = [i for i in range(setup.n) if i not in set(a.nodes)]
    data = setup.data
    acc, _ = evaluate(setup.model, final[honest], data.x_global_test, data.y_global_test)
    return {
        "attack": {
            "nodes": list(a.nodes),
            "kind": a.kind,
            **({"scale": a.scale} if a.kind == "scale" else {}),
            "honest_acc_mean": float(acc.mean()),
        }
    }

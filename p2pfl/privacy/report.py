"""The privacy part of a simulation's terminal report: what DP cost, and what each node spent."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pfl.report import pct, run_names

NO_DP = "privacy.epsilon=inf"


def _eps(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def no_dp_partner(label: str, labels: list[str]) -> str | None:
    """The run of the same sweep point with ``privacy.epsilon = inf`` (no DP), if there is one."""
    partner = re.sub(r"privacy\.epsilon=[^,]+", NO_DP, label)
    return partner if partner != label and partner in labels else None


def print_privacy(report: dict[str, Any], console: Console) -> None:
    runs = report["runs"]
    by_label = {run["label"]: run for run in runs}
    table = Table(
        title=f"{report['scenario']}: accuracy against privacy spent",
        caption="epsilon spent: the largest over the nodes, from the accountant; "
        "cost: accuracy points lost against the same run without DP",
    )
    key, names = run_names([run["label"] for run in runs])
    for column in (key, "mechanism", "target eps", "eps spent", "delta", "accuracy", "cost"):
        left = column in (key, "mechanism")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == key)
    for run, name in zip(runs, names, strict=True):
        p = run.get("privacy") or {}
        acc = run["final"]["acc_mean"]
        partner = no_dp_partner(run["label"], list(by_label))
        cost = "-"
        if partner is not None and acc is not None:
            base = by_label[partner]["final"]["acc_mean"]
            cost = "-" if base is None else f"{100 * (base - acc):+.1f}"
        table.add_row(
            name,
            p.get("mechanism", "none"),
            _eps(p.get("target_epsilon")),
            _eps(p.get("epsilon_max")),
            _eps(p.get("delta")),
            pct(acc),
            cost,
        )
    console.print(table)
    for run in runs:
        _node_table(run, console)


def _node_table(run: dict[str, Any], console: Console) -> None:
    p = run.get("privacy") or {}
    nodes = p.get("nodes")
    if not nodes or len(nodes) > 16:
        return
    table = Table(title=f"{run['label']}: privacy spent per node ({p['mechanism']})")
    for column in ("node", "epsilon", "delta", "noise multiplier", "sample rate", "steps"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for n in nodes:
        table.add_row(
            n["node"],
            _eps(n["epsilon"]),
            _eps(p["delta"]),
            _eps(n["noise_multiplier"]),
            f"{n['sample_rate']:.3g}",
            str(n["steps"]),
        )
    console.print(table)

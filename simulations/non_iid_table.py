"""The learning-quality table of the non-IID sweep, from the sweep's own output.

    python3 simulations/non_iid_table.py runs/non_iid [--readme README.md]

Reads ``metrics.json`` of a ``p2pfl simulate simulations/non_iid.toml --out DIR``
run and writes, in the same folder, ``non_iid.csv`` (one row per Dirichlet alpha,
graph and mode) and ``non_iid.md`` (the Markdown table). With ``--readme`` the
table also replaces what stands between the README's two markers, so the README
shows what the sweep measured and nothing else. Every figure comes from the
report: final mean and minimum accuracy over the nodes (each node's model on the
global test set), bytes each node sent per round (gradient tracking's frames
carry two vectors), pooled training of the same model for the same total
steps (the nodes' steps together, in batches of the same size), and mini-batch
SGD on the pooled data (one node's number of steps, each a batch of all the
nodes' batches together: the same samples in the same steps in a row), from the
same run. Under the table, the issue's three targets, each met or not, with the
figure that decides it, and the same best modes against mini-batch SGD.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

BEGIN = "<!-- non_iid table: begin (simulations/non_iid_table.py writes it) -->"
END = "<!-- non_iid table: end -->"
MODES = {"sync": "D-PSGD", "tracking": "gradient tracking", "qgm": "QG-DSGDm"}
COLUMNS = (
    "alpha",
    "graph",
    "mode",
    "acc_mean",
    "acc_min",
    "bytes_per_node_round",
    "pooled",
    "gap_to_pooled",
    "minibatch",
    "gap_to_minibatch",
    "gap_to_dpsgd",
)


def swept(label: str) -> dict[str, str]:
    """``key=value`` pairs of a sweep label (``data.alpha=0.1, topology.kind=ring, ...``)."""
    pairs = (part.split("=", 1) for part in label.split(", ") if "=" in part)
    return {key: value for key, value in pairs}


def scenario_table(out: Path) -> dict[str, Any]:
    """The run's ``scenario.toml`` as a table (empty when the folder has none)."""
    path = out / "scenario.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


TARGETS = (("exponential", 0.03), ("regular", 0.05))
"""At Dirichlet 0.1: the best mode on each graph within this many points of pooled."""
DPSGD_SLACK = 0.01
"""No mode worse than D-PSGD on the same graph and alpha by more than this."""


def best_mode(table: list[dict[str, Any]], graph: str, baseline: str) -> dict[str, Any] | None:
    """The row of the best mode on ``graph`` at Dirichlet 0.1 among those with ``baseline``."""
    cell = [r for r in table if r["alpha"] == 0.1 and r["graph"] == graph and r[baseline]]
    return max(cell, key=lambda r: r["acc_mean"], default=None)


def targets(table: list[dict[str, Any]]) -> list[str]:
    """One line per target: met or not, and the figure that decides it."""
    lines = []
    for graph, slack in TARGETS:
        best = best_mode(table, graph, "pooled")
        if best is None:
            lines.append(f"- {graph}, Dirichlet 0.1: not in this run")
            continue
        verdict = "met" if best["gap_to_pooled"] >= -slack else "NOT met"
        lines.append(
            f"- {graph}, Dirichlet 0.1, best mode within {100 * slack:.0f} points of pooled: "
            f"{verdict} ({MODES.get(best['mode'], best['mode'])}, "
            f"{signed(best['gap_to_pooled'])})"
        )
    worst = min(
        (r for r in table if r["gap_to_dpsgd"] is not None),
        key=lambda r: r["gap_to_dpsgd"],
        default=None,
    )
    if worst is not None:
        verdict = "met" if worst["gap_to_dpsgd"] >= -DPSGD_SLACK else "NOT met"
        lines.append(
            f"- no mode worse than D-PSGD by more than {100 * DPSGD_SLACK:.0f} point: {verdict} "
            f"(worst {MODES.get(worst['mode'], worst['mode'])} on {worst['graph']} at "
            f"{worst['alpha']:g}, {signed(worst['gap_to_dpsgd'])})"
        )
    return lines


def against_minibatch(table: list[dict[str, Any]]) -> list[str]:
    """At Dirichlet 0.1, each target graph's best mode against mini-batch SGD of the same run."""
    lines = []
    for graph, _ in TARGETS:
        if (best := best_mode(table, graph, "minibatch")) is not None:
            lines.append(
                f"- {graph}, Dirichlet 0.1, best mode against mini-batch SGD: "
                f"{MODES.get(best['mode'], best['mode'])}, {signed(best['gap_to_minibatch'])} "
                f"(mini-batch SGD {pct(best['minibatch'])}, pooled {pct(best['pooled'])})"
            )
    return lines


def rows(report: dict[str, Any], alpha: float) -> list[dict[str, Any]]:
    """One row per run, with the gaps to pooled and to D-PSGD of the same alpha and graph."""
    out = []
    for run in report["runs"]:
        keys = swept(run["label"])
        rounds = run["rounds"]
        out.append(
            {
                "alpha": float(keys.get("data.alpha", alpha)),
                "graph": run["topology"],
                "mode": run["mode"],
                "acc_mean": run["final"]["acc_mean"],
                "acc_min": run["final"]["acc_min"],
                "bytes_per_node_round": sum(r["bytes_per_node"] for r in rounds) / len(rounds),
                "pooled": run["baselines"]["pooled"],
                "minibatch": run["baselines"].get("minibatch"),
            }
        )
    dpsgd = {(r["alpha"], r["graph"]): r["acc_mean"] for r in out if r["mode"] == "sync"}
    for r in out:
        r["gap_to_pooled"] = None if r["pooled"] is None else r["acc_mean"] - r["pooled"]
        r["gap_to_minibatch"] = None if r["minibatch"] is None else r["acc_mean"] - r["minibatch"]
        base = dpsgd.get((r["alpha"], r["graph"]))
        r["gap_to_dpsgd"] = None if base is None else r["acc_mean"] - base
    order = {m: i for i, m in enumerate(MODES)}
    out.sort(key=lambda r: (r["alpha"], r["graph"], order.get(r["mode"], len(order))))
    return out


def write_csv(table: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def signed(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}"


def markdown(report: dict[str, Any], table: list[dict[str, Any]], schedule: str = "") -> str:
    first = report["runs"][0]
    rate = f", learning rate {schedule}" if schedule else ""
    head = (
        f"Scenario `{report['scenario']}`, {first['nodes']} nodes, "
        f"{first['rounds'][-1]['round']} rounds{rate}, engine {report['engine']}, "
        f"seed {report['seed']}; accuracy (%) of each node's final model on the global test "
        "set; pooled: one model on all the data, same model, same total steps (every "
        "node's steps together, same batch size); mini-batch: one model on all the data, "
        "as many steps as one node takes, each a batch of every node's batch together "
        "(the same samples, the same steps in a row); both in the same run.\n\n"
    )
    lines = [
        "| Dirichlet alpha | graph | mode | mean | min | KB per node per round "
        "| pooled | vs pooled | mini-batch | vs mini-batch | vs D-PSGD |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['alpha']:g} | {r['graph']} | {MODES.get(r['mode'], r['mode'])} "
            f"| {pct(r['acc_mean'])} | {pct(r['acc_min'])} "
            f"| {r['bytes_per_node_round'] / 1e3:.0f} | {pct(r['pooled'])} "
            f"| {signed(r['gap_to_pooled'])} | {pct(r['minibatch'])} "
            f"| {signed(r['gap_to_minibatch'])} | {signed(r['gap_to_dpsgd'])} |"
        )
    text = head + "\n".join(lines) + "\n\nTargets:\n\n" + "\n".join(targets(table)) + "\n"
    reference = against_minibatch(table)
    if reference:
        text += "\nFor reference, not a target:\n\n" + "\n".join(reference) + "\n"
    return text


def replace_between_markers(text: str, table: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"the README has no markers {BEGIN!r} ... {END!r}")
    return text[: start + len(BEGIN)] + "\n" + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the sweep's --out folder (has metrics.json)")
    parser.add_argument("--readme", type=Path, default=None, help="README to write the table in")
    args = parser.parse_args(argv)
    report = json.loads((args.out / "metrics.json").read_text())
    scenario = scenario_table(args.out)  # a written scenario spells every key
    alpha = float(scenario.get("data", {}).get("alpha", float("nan")))  # when not swept
    table = rows(report, alpha)
    (args.out / "non_iid.csv").write_text(write_csv(table))
    schedule = scenario.get("training", {}).get("lr_schedule", "constant") if scenario else ""
    text = markdown(report, table, schedule)
    (args.out / "non_iid.md").write_text(text)
    if args.readme is not None:
        args.readme.write_text(replace_between_markers(args.readme.read_text(), text))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

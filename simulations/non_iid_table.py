"""The learning-quality table of the non-IID sweep, from the sweep's own output.

    python3 simulations/non_iid_table.py runs/non_iid [--readme README.md]

Reads ``metrics.json`` of a ``p2pfl simulate simulations/non_iid.toml --out DIR``
run and writes, in the same folder, ``non_iid.csv`` (one row per Dirichlet alpha,
graph and mode) and ``non_iid.md`` (the Markdown table). With ``--readme`` the
table also replaces what stands between the README's two markers, so the README
shows what the sweep measured and nothing else. Every figure comes from the
report: final mean and minimum accuracy over the nodes (each node's model on the
global test set), bytes each node sent per round (gradient tracking's frames
carry two vectors), and pooled training of the same model for the same steps,
from the same run.
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
    "gap_to_dpsgd",
)


def swept(label: str) -> dict[str, str]:
    """``key=value`` pairs of a sweep label (``data.alpha=0.1, topology.kind=ring, ...``)."""
    pairs = (part.split("=", 1) for part in label.split(", ") if "=" in part)
    return {key: value for key, value in pairs}


def scenario_alpha(out: Path) -> float:
    """``data.alpha`` of the run's ``scenario.toml`` (the alpha of runs that do not sweep it)."""
    path = out / "scenario.toml"
    if not path.exists():
        return float("nan")
    return float(tomllib.loads(path.read_text()).get("data", {}).get("alpha", float("nan")))


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
            }
        )
    dpsgd = {(r["alpha"], r["graph"]): r["acc_mean"] for r in out if r["mode"] == "sync"}
    for r in out:
        r["gap_to_pooled"] = None if r["pooled"] is None else r["acc_mean"] - r["pooled"]
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


def markdown(report: dict[str, Any], table: list[dict[str, Any]]) -> str:
    first = report["runs"][0]
    head = (
        f"Scenario `{report['scenario']}`, {first['nodes']} nodes, "
        f"{first['rounds'][-1]['round']} rounds, engine {report['engine']}, seed {report['seed']}; "
        "accuracy (%) of each node's final model on the global test set; "
        "pooled: one model on all the data, same model and steps, same run.\n\n"
    )
    lines = [
        "| Dirichlet alpha | graph | mode | mean | min | KB per node per round "
        "| pooled | vs pooled | vs D-PSGD |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['alpha']:g} | {r['graph']} | {MODES.get(r['mode'], r['mode'])} "
            f"| {pct(r['acc_mean'])} | {pct(r['acc_min'])} "
            f"| {r['bytes_per_node_round'] / 1e3:.0f} | {pct(r['pooled'])} "
            f"| {signed(r['gap_to_pooled'])} | {signed(r['gap_to_dpsgd'])} |"
        )
    return head + "\n".join(lines) + "\n"


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
    table = rows(report, scenario_alpha(args.out))
    (args.out / "non_iid.csv").write_text(write_csv(table))
    text = markdown(report, table)
    (args.out / "non_iid.md").write_text(text)
    if args.readme is not None:
        args.readme.write_text(replace_between_markers(args.readme.read_text(), text))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

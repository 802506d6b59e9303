"""What a simulation leaves behind: metrics.json, scenario.toml, plots, and terminal tables.

The terminal tables: accuracy per run, per site and drift events, and, when a run
used differential privacy, what it cost and what each node spent. ``print_table``
shows every value and header whole: on a terminal the table fits its width (text
wraps, never a cut ``1.77e…``), or, when even that does not fit, each row is
printed as ``header: value`` lines; elsewhere (a pipe, a file) the table has its
natural width. matplotlib loads only when a plot is drawn.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from p2pfl.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from p2pfl.scenario import Scenario

PLOTS = ("accuracy.png", "consensus.png")


def write_outputs(
    report: dict[str, Any], scenario: Scenario, out_dir: Path, *, plots: bool = True
) -> None:
    """metrics.json and scenario.toml, and the plots unless ``plots`` is false."""
    import tomli_w

    from p2pfl.scenario import to_table

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(out_dir / "scenario.toml", tomli_w.dumps(to_table(scenario)).encode())
    if plots:
        write_plots(report, out_dir)


def write_plots(report: dict[str, Any], out_dir: Path) -> None:
    """accuracy.png and consensus.png: one line per run, over the rounds."""
    accuracy, consensus = (out_dir / name for name in PLOTS)
    plot_rounds(report, "acc_mean", "accuracy (mean over nodes, global test set)", accuracy)
    plot_rounds(report, "consensus", "consensus distance (RMS to the average)", consensus)


def plot_rounds(report: dict[str, Any], key: str, ylabel: str, path: Path) -> None:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)  # no pyplot: no backend, no global figure list
    ax = fig.subplots()
    for run in report["runs"]:
        points = [(r["round"], r[key]) for r in run["rounds"] if r[key] is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=run["label"])
    if key == "acc_mean":
        for run in report["runs"][:1]:
            pooled = run["baselines"]["pooled"]
            if pooled is not None:
                ax.axhline(pooled, color="black", ls="--", lw=1, label="pooled")
    if key == "consensus":
        ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(report["scenario"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def print_table(console: Console, table: Table) -> None:
    """``table`` with every value and header whole (see the module's docstring)."""
    if not console.is_terminal:
        wide = console.options.update_width(1 << 16)
        width, console.width = (
            console.width,
            max(console.width, console.measure(table, options=wide).maximum),
        )
        try:
            console.print(table)  # print(width=) cannot widen past the console's width
        finally:
            console.width = width
        return
    texts = [[str(column.header), *map(str, column.cells)] for column in table.columns]
    natural = [max(len(text) for text in column) for column in texts]
    words = [max((len(w) for text in column for w in text.split()), default=1) for column in texts]
    widths = _fit(natural, words, console.width - _decoration(table))
    if widths is None:  # a denser layout: one space between columns
        table.box, table.show_edge, table.padding = box.SIMPLE_HEAD, False, (0, 0, 0, 0)
        widths = _fit(natural, words, console.width - _decoration(table))
    if widths is None:
        _print_records(console, table)
        return
    for column, width in zip(table.columns, widths, strict=True):
        column.width = width  # text wraps between words; a word or number stays whole
        column.no_wrap = False
        column.overflow = "fold"
    console.print(table)


def _decoration(table: Table) -> int:
    """The columns of ``table``'s lines and padding, around its cells."""
    n = len(table.columns)
    _, right, _, left = table.padding
    lines = 0 if table.box is None else n + 1 if table.show_edge else n - 1
    return (left + right) * n + lines


def _fit(natural: list[int], least: list[int], room: int) -> list[int] | None:
    """Column widths within ``room``: the natural ones, the widest narrowed first; else None."""
    widths = list(natural)
    excess = sum(widths) - room
    while excess > 0:
        slack = [(w - low, i) for i, (w, low) in enumerate(zip(widths, least, strict=True))]
        spare, widest = max(slack)
        if spare <= 0:
            return None
        widths[widest] -= 1
        excess -= 1
    return widths


def _print_records(console: Console, table: Table) -> None:
    """Each row as ``header: value`` lines, for a terminal too narrow for the table."""
    headers = [str(column.header) for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    pad = max(len(h) for h in headers)
    if table.title:
        console.print(table.title)
    for row in zip(*cells, strict=True):
        console.print()
        for header, value in zip(headers, row, strict=True):
            if value:
                line = f"  {header:<{pad}}  {value}"
                console.print(line, highlight=False, markup=False)
    if table.caption:
        console.print(table.caption)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def print_tables(report: dict[str, Any], console: Console) -> None:
    runs = report["runs"]
    table = Table(
        title=f"{report['scenario']}: accuracy (%), {runs[0].get('metrics', 'global test set')}",
        caption="pooled: all data on one machine; mini-batch: all data, one node's steps, "
        "every node's batch in each; local-only: each node trains alone; "
        "energy: bytes sent and training time priced with the \\[energy] factors",
    )
    key, names = run_names([run["label"] for run in runs])
    for column in (key, "engine", "mean", "min", "max", "consensus", "MB sent/node", "energy J"):
        left = column in (key, "engine")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    table.add_column("wall s", justify="right")
    for run, name in zip(runs, names, strict=True):
        f = run["final"]
        table.add_row(
            name,
            run["engine"],
            pct(f["acc_mean"]),
            pct(f["acc_min"]),
            pct(f["acc_max"]),
            f"{f['consensus']:.2e}",
            f"{run['bytes_per_node'] / 1e6:.2f}",
            f"{run['energy']['total_j']:.3g}" if run.get("energy") else "-",
            f"{run['wall']['total']:.1f}",
        )
    for suffix, base in baseline_groups(runs):
        if base["pooled"] is not None:
            table.add_row("pooled" + suffix, "-", pct(base["pooled"]), "", "", "", "", "", "")
        if base.get("minibatch") is not None:
            minibatch = pct(base["minibatch"])
            table.add_row("mini-batch" + suffix, "-", minibatch, "", "", "", "", "", "")
        if base["local"] is not None:
            local = base["local"]
            table.add_row(
                "local-only" + suffix,
                "-",
                pct(sum(local) / len(local)),
                pct(min(local)),
                pct(max(local)),
                "",
                "",
                "",
                "",
            )
    print_table(console, table)
    if any((run.get("privacy") or {}).get("mechanism", "none") != "none" for run in runs):
        print_privacy(report, console)
    for run in runs:
        _site_table(run, console)
        _drift_table(run, console)
        _attack_line(run, console)
        _sharing_line(run, console)
    if report.get("world"):
        print_world(report, console)


def print_world(report: dict[str, Any], console: Console) -> None:
    """A sharded run: the ranks, the partition's cut edges and the bytes between ranks."""
    world = report["world"]
    console.print(
        f"sharded over {world['size']} ranks ({world['backend']}): {', '.join(world['devices'])}",
        soft_wrap=True,
    )
    for run in report["runs"]:
        shard = run["extra"].get("sharded")
        if shard is None:
            continue
        console.print(
            f"  {run['label']}: {shard['partition']} partition, blocks of "
            f"{min(shard['block_sizes'])}-{max(shard['block_sizes'])} nodes, "
            f"{shard['cut_edges']} cut edges, "
            f"{shard['rank_bytes_per_round'] / 1e6:.3f} MB between ranks per round",
            soft_wrap=True,
        )


def baseline_groups(runs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The distinct baselines of a report's runs, each with a suffix that names its runs.

    Runs on the same data share their baselines; a sweep over the data (``data.alpha``)
    has one set per value. One set: an empty suffix. Several: `` (alpha=0.1)``, from the
    sweep keys that hold one value within each set and differ between them (else the
    runs' numbers, from 1).
    """
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for i, run in enumerate(runs):
        key = json.dumps(run["baselines"], sort_keys=True, default=str)
        groups.setdefault(key, (run["baselines"], []))[1].append(i)
    if len(groups) == 1:
        return [("", base) for base, _ in groups.values()]
    parts = [{k: v for k, _, v in label_fields(run["label"])} for run in runs]
    keys = [
        k
        for k in parts[0]
        if all(len({parts[i].get(k) for i in members}) == 1 for _, members in groups.values())
        and len({parts[members[0]].get(k) for _, members in groups.values()}) == len(groups)
    ]
    named = []
    for base, members in groups.values():
        first = parts[members[0]]
        if keys:
            name = ", ".join(f"{k.rpartition('.')[2]}={first[k]}" for k in keys)
        else:
            name = "runs " + ", ".join(str(i + 1) for i in members)
        named.append((f" ({name})", base))
    return named


def label_fields(label: str) -> list[tuple[str, str, str]]:
    """A run label's ``key=value`` parts, each as ``str.partition("=")`` gives it."""
    return [part.partition("=") for part in label.split(", ")]


def run_names(labels: list[str]) -> tuple[str, list[str]]:
    """A column title and short row names: a sweep shows its keys once, the values below.

    ``topology.kind=ring, privacy.epsilon=8.0`` becomes ``ring, 8.0`` under the title
    ``kind, epsilon``; labels that are not all ``key=value`` lists of the same keys stay.
    """
    split = [label_fields(label) for label in labels]
    keys = [tuple(k for k, _, _ in parts) for parts in split]
    if len(set(keys)) != 1 or not all(eq for parts in split for _, eq, _ in parts):
        return "run", labels
    title = ", ".join(k.rpartition(".")[2] for k in keys[0])
    return title, [", ".join(v for _, _, v in parts) for parts in split]


def _site_table(run: dict[str, Any], console: Console) -> None:
    if not run["sites"] or len(run["sites"]) > 16:
        return
    method = (run.get("personalise") or {}).get("method")
    how = f", personalised by {method}" if method else ""
    table = Table(title=f"{run['label']}: accuracy on each site's own test split (%){how}")
    for column in ("site", "train", "test", "gossip", "pooled", "local-only", "personalised"):
        table.add_column(column, justify="left" if column == "site" else "right")
    for s in run["sites"]:
        table.add_row(
            s["site"],
            str(s["train_samples"]),
            str(s["test_samples"]),
            pct(s["gossip"]),
            pct(s["pooled"]),
            pct(s["local"]),
            pct(s["personalised"]),
        )
    print_table(console, table)
    losers = [
        s["site"] for s in run["sites"] if s["local"] is not None and s["local"] > s["gossip"]
    ]
    if losers:
        console.print(
            f"[yellow]Local-only beats gossip on its own test split at: {', '.join(losers)}. "
            "A site whose label balance differs sharply from the federation's gains from "
            "staying alone or personalising.[/yellow]"
        )
    _personalised_line(run["sites"], console)


def _personalised_line(sites: list[dict[str, Any]], console: Console) -> None:
    """Where the personalised models beat local-only, and, in test counts, where they do not."""
    both = [s for s in sites if s["personalised"] is not None and s["local"] is not None]
    if not both:
        return
    beaten = [s["site"] for s in both if s["personalised"] > s["local"]]
    if len(beaten) == len(both):
        console.print(f"Personalised beats local-only at every site: {', '.join(beaten)}.")
        return

    def count(s: dict[str, Any], key: str) -> str:
        return f"{round(s[key] * s['test_samples'])}/{s['test_samples']}"

    others = [
        f"{s['site']} ({count(s, 'personalised')} correct against {count(s, 'local')})"
        for s in both
        if s["personalised"] <= s["local"]
    ]
    console.print(
        f"[yellow]Personalised does not beat local-only at: {', '.join(others)}.[/yellow]"
    )


def _attack_line(run: dict[str, Any], console: Console) -> None:
    """A simulated attack: who attacked, how, and the honest nodes' accuracy it left."""
    attack = (run.get("extra") or {}).get("attack")
    if not attack:
        return
    scale = f" x{attack['scale']:g}" if "scale" in attack else ""
    console.print(
        f"{run['label']}: nodes {attack['nodes']} attack ({attack['kind']}{scale}); "
        f"honest nodes' mean accuracy {pct(attack['honest_acc_mean'])}",
        soft_wrap=True,
    )


def _sharing_line(run: dict[str, Any], console: Console) -> None:
    """What part of the model travels, when not all of it (trainable or personal layers)."""
    full, shared = run.get("parameters"), run.get("shared_parameters")
    if not full or shared is None or shared == full:
        return
    console.print(
        f"{run['label']}: sends and mixes {shared:,} of the model's {full:,} parameters "
        f"({100 * shared / full:.1f}%): {run['bytes_per_node'] / 1e6:.3f} MB sent per node "
        f"in all, about {100 * shared / full:.1f}% of what the full model would send",
        soft_wrap=True,
    )


def _drift_table(run: dict[str, Any], console: Console) -> None:
    drift = run.get("drift")
    if not drift:
        return
    if not drift["events"]:
        console.print(f"{run['label']}: no drift detected")
        return
    table = Table(title=f"{run['label']}: drift events (site named only if it opted in)")
    for column in ("round", "site", "detector", "statistic", "value", "p-value", "threshold"):
        table.add_column(column, justify="right" if column in ("round", "value") else "left")
    for e in drift["events"]:
        table.add_row(
            str(e["round"] + 1),
            e["site"] or "(a site)",
            e["detector"],
            e["statistic"],
            f"{float(e['value']):.3g}",
            f"{float(e['p_value']):.2e}",
            f"{float(e['threshold']):.2e}",
        )
    print_table(console, table)


# -- privacy ----------------------------------------------------------------------------

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
    print_table(console, table)
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
    print_table(console, table)

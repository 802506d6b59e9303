"""``p2pfl topology``: list the graph families, show one, compare them at the same size.

The maths lives in the pure ``topology`` package; this module parses flags,
prints tables (rich) or JSON, and draws plots. Only the family catalogue is
imported at start-up; numpy/scipy/networkx load inside the handlers and
matplotlib only when a plot is asked for (drawn on an Agg canvas, without
touching pyplot's global state).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from topology.catalog import FAMILIES, WEIGHT_RULES
from topology.errors import TopologyError

_CIRCULAR = {"ring", "complete", "exponential", "exponential-directed", "one-peer-exponential"}
_SPRING_LIMIT = 1000
_FLAG = {"path": "file"}  # family parameter -> CLI flag, where they differ


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "topology", help="compare communication graphs, their mixing weights and spectral gaps"
    )
    sub = parser.add_subparsers(dest="topology_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="graph families and their parameters")
    listing.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="build one topology and print its figures")
    show.add_argument("kind", choices=list(FAMILIES), metavar="KIND", help="a family (see list)")
    show.add_argument("--nodes", "-n", type=int, help="number of nodes (a --file sets its own)")
    _family_flags(show)
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.add_argument("--plot", metavar="FILE.png", help="draw the graph, nodes coloured by degree")
    show.set_defaults(handler=_show)

    compare = sub.add_parser("compare", help="every family at the same size, fastest mixing first")
    compare.add_argument("--nodes", "-n", type=int, required=True, help="number of nodes")
    compare.add_argument(
        "--kinds", nargs="+", metavar="KIND", help="families to compare (default: all but file)"
    )
    _family_flags(compare, only_shared=True)
    compare.add_argument("--json", action="store_true", help="print one JSON object")
    compare.set_defaults(handler=_compare)


def _family_flags(parser: argparse.ArgumentParser, *, only_shared: bool = False) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of random families (default 0)")
    parser.add_argument(
        "--weights", choices=WEIGHT_RULES, default="metropolis", help="mixing weight rule"
    )
    parser.add_argument("--degree", "-d", type=int, help="degree, for families that take one")
    parser.add_argument("--file", metavar="PATH", help="graph file (edge list, GraphML, TOML)")
    if only_shared:
        return
    parser.add_argument("--p", type=float, help="probability (erdos-renyi, watts-strogatz)")
    parser.add_argument("--k", type=int, help="peers per step (base-k)")
    parser.add_argument("--m", type=int, help="edges per new node (barabasi-albert)")


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _list(args: argparse.Namespace) -> int:
    if args.json:
        catalogue = [
            {
                "kind": info.name,
                "description": info.description,
                "parameters": [
                    {"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help}
                    for p in info.parameters
                ],
                "nodes": info.nodes_rule,
                "weights": info.weights,
                "directed": info.directed,
                "time_varying": info.time_varying,
                "random": info.random,
            }
            for info in FAMILIES.values()
        ]
        print(json.dumps(catalogue, indent=2))
        return 0
    from rich import box
    from rich.table import Table

    table = Table(
        title="Topology families",
        caption="every family takes --nodes N (at least 2) and --weights "
        f"{'|'.join(WEIGHT_RULES)}; random ones take --seed S",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("family", style="bold", no_wrap=True)
    table.add_column("what it is, its parameters")
    for info in FAMILIES.values():
        tags = [
            tag
            for tag, on in (
                ("random", info.random),
                ("directed", info.directed),
                ("schedule", info.time_varying),
            )
            if on
        ]
        lines = [info.description + (f" [dim]({', '.join(tags)})[/dim]" if tags else "")]
        lines += [
            f"  --{_FLAG.get(p.name, p.name)}: {p.help}"
            + ("" if p.default is None else f" (default {p.default})")
            for p in info.parameters
        ]
        special = [
            f"nodes: {info.nodes_rule}" if info.nodes_rule != "at least 2" else "",
            f"weights: {info.weights}" if info.directed or info.time_varying else "",
        ]
        if any(special):
            lines.append("  [dim]" + "; ".join(x for x in special if x) + "[/dim]")
        table.add_row(info.name, "\n".join(lines))
    _console().print(table)
    return 0


def _build(kind: str, args: argparse.Namespace, n: int, *, shared: bool = False) -> Any:
    """Build ``kind`` from the flags; ``shared`` (compare) drops flags a family does not take."""
    from topology import build

    flags = {name: getattr(args, name, None) for name in ("p", "k", "m")}
    return build(
        kind,
        n,
        degree=args.degree,
        seed=args.seed,
        weights=args.weights,
        path=args.file if kind == "file" else None,
        strict=not shared,
        **flags,
    )


def _show(args: argparse.Namespace) -> int:
    from topology import read_graph_file, summary

    n = args.nodes
    if n is None:
        if args.kind != "file" or not args.file:
            raise TopologyError("nodes", "--nodes is required (only a --file graph sets its own)")
        n = read_graph_file(args.file).n
    if args.file and args.kind != "file":
        raise TopologyError("path", f"--file is for the file family, not {args.kind}")
    topo = _build(args.kind, args, n)
    figures = summary(topo)
    if args.plot:
        figures["plot"] = str(_plot(topo, figures, Path(args.plot), args.seed))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    _print_summary(figures)
    return 0


def _fmt_gap(gap: float) -> str:
    return f"{gap:.6f}" if gap >= 1e-3 else f"{gap:.3e}"


def _steps_note(row: dict[str, Any]) -> str:
    if row["exact_averaging_steps"] is not None:
        return f"{row['exact_averaging_steps']} (exact)"
    steps = row["steps_to_1000x"]
    return "never" if steps is None else f"~{steps}"


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{s['kind']} on {s['nodes']} nodes", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    params = ", ".join(f"{k}={v}" for k, v in s["parameters"].items()) or "-"
    if s["time_varying"]:
        period = "never repeats" if s["period"] is None else f"period {s['period']}"
        shape = f"schedule ({period}; figures over {s['analysed_steps']} steps)"
    else:
        shape = "static"
    rows = [
        ("parameters", params),
        ("shape", shape + (", directed" if s["directed"] else ", undirected")),
        ("weights", s["weights"]),
        ("edges" + (" per step" if s["time_varying"] else ""), str(s["edges"])),
        ("degree", f"{s['degree_min']}..{s['degree_max']}"),
        ("connected", "yes" if s["connected"] else "NO"),
        ("diameter", "-" if s["diameter"] is None else str(s["diameter"])),
        ("spectral gap", _fmt_gap(s["spectral_gap"])),
        ("doubly stochastic", "yes" if s["doubly_stochastic"] else "no"),
        (
            "exact averaging",
            "none"
            if s["exact_averaging_steps"] is None
            else f"after {s['exact_averaging_steps']} steps",
        ),
        ("steps to shrink disagreement 1000x", _steps_note(s)),
    ]
    if "plot" in s:
        rows.append(("plot", s["plot"]))
    for name, value in rows:
        table.add_row(name, value)
    _console().print(table)


def _compare(args: argparse.Namespace) -> int:
    from topology import summary

    kinds = _kinds(args.kinds)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for kind in kinds:
        try:
            if kind == "file" and not args.file:
                raise TopologyError("path", "the file family needs --file")
            rows.append(summary(_build(kind, args, args.nodes, shared=True)))
        except TopologyError as exc:
            skipped.append({"kind": kind, "reason": str(exc)})
    rows.sort(key=_rank)
    if args.json:
        out = {
            "nodes": args.nodes,
            "seed": args.seed,
            "weights": args.weights,
            "rows": rows,
            "skipped": skipped,
        }
        print(json.dumps(out, indent=2))
        return 0
    _print_compare(args, rows, skipped)
    return 0


def _kinds(given: list[str] | None) -> list[str]:
    if not given:
        return [k for k in FAMILIES if k != "file"]
    kinds = [k for item in given for k in item.split(",") if k]
    unknown = [k for k in kinds if k not in FAMILIES]
    if unknown:
        raise TopologyError("kinds", f"unknown family {unknown[0]!r}; see 'p2pfl topology list'")
    return list(dict.fromkeys(kinds))


def _rank(row: dict[str, Any]) -> tuple[float, float, str]:
    steps = row["steps_to_1000x"]
    # Rounded so that equal gaps (a 4x4 torus is the 16-node hypercube) tie exactly.
    return (-round(row["spectral_gap"], 10), math.inf if steps is None else steps, row["kind"])


def _print_compare(
    args: argparse.Namespace, rows: list[dict[str, Any]], skipped: list[dict[str, str]]
) -> None:
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"{args.nodes} nodes, {args.weights} weights, seed {args.seed}: fastest mixing first",
        caption="steps: gossip steps to shrink disagreement 1000x, ln(1000)/-ln(1-gap), "
        "or exactly where a schedule averages exactly",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("family", no_wrap=True, style="bold")
    for name in ("edges", "degree", "diam.", "gap", "steps"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        degree = (
            str(row["degree_max"])
            if row["degree_min"] == row["degree_max"]
            else f"{row['degree_min']}..{row['degree_max']}"
        )
        notes = _notes(row)
        table.add_row(
            row["kind"] + (f"\n[dim]{notes}[/dim]" if notes else ""),
            str(row["edges"]),
            degree,
            "-" if row["diameter"] is None else str(row["diameter"]),
            _fmt_gap(row["spectral_gap"]),
            _steps_note(row),
        )
    console = _console()
    console.print(table)
    for skip in skipped:
        console.print(f"[dim]skipped {skip['kind']}: {skip['reason']}[/dim]")


def _notes(row: dict[str, Any]) -> str:
    notes = []
    if row["time_varying"]:
        notes.append("new each step" if row["period"] is None else f"period {row['period']}")
    if row["directed"]:
        notes.append("directed")
    return ", ".join(notes)


def _plot(topo: Any, figures: dict[str, Any], path: Path, seed: int) -> Path:
    """Draw the (union) graph with nodes coloured by degree; written atomically."""
    if path.suffix.lower() != ".png":
        raise TopologyError("plot", f"must name a .png file, not {str(path)!r}")
    if not path.parent.is_dir():
        raise TopologyError("plot", f"directory {str(path.parent)!r} does not exist")
    import networkx as nx
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from topology.analysis import analysed_steps
    from topology.distances import union_adjacency

    adj = union_adjacency([topo.mixing(t) for t in range(analysed_steps(topo))])
    graph = nx.Graph(nx.from_scipy_sparse_array(adj))
    pos = _layout(topo.kind, graph, seed)
    xy = np.array([pos[i] for i in range(topo.n)])
    degree = np.array([graph.degree(i) for i in range(topo.n)])

    fig = Figure(figsize=(7, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    segments = [(pos[u], pos[v]) for u, v in graph.edges()]
    width = 0.8 if len(segments) < 2000 else 0.3
    ax.add_collection(LineCollection(segments, colors="0.55", linewidths=width, zorder=1))
    size = max(8.0, min(120.0, 6000.0 / topo.n))
    low, high = int(degree.min()), int(degree.max())
    dots = ax.scatter(
        xy[:, 0],
        xy[:, 1],
        c=degree,
        cmap="viridis",
        s=size,
        zorder=2,
        edgecolors="black",
        linewidths=0.3,
    )
    if low == high:
        dots.set_clim(low - 0.5, high + 0.5)
    label = "degree" + (" (union over steps)" if topo.time_varying else "")
    bar = fig.colorbar(dots, ax=ax, label=label)
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    ax.set_title(f"{topo.kind}, {topo.n} nodes: spectral gap {_fmt_gap(figures['spectral_gap'])}")
    ax.set_aspect("equal")
    ax.set_axis_off()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _layout(kind: str, graph: Any, seed: int) -> dict[int, Any]:
    import networkx as nx
    import numpy as np

    n = graph.number_of_nodes()
    if kind == "torus":
        m = math.isqrt(n)
        return {i: np.array([i % m, -(i // m)], dtype=float) for i in range(n)}
    if kind in _CIRCULAR or kind == "path" or n > _SPRING_LIMIT:
        if kind == "path":
            return {i: np.array([float(i), 0.0]) for i in range(n)}
        return dict(nx.circular_layout(graph))
    return dict(nx.spring_layout(graph, seed=seed))

"""The layers of DESIGN.md: imports only point downwards, and protocols/ stays sans-I/O.

Inside ``p2pfl/`` every module belongs to one tier of ``TIERS`` (top first). An
import may point down, or sideways within its tier, never up; and no group of
modules may import each other in a circle. Every import counts: at module level,
inside a function (an import deferred to dodge a circle is still a circle) and
under ``if TYPE_CHECKING:`` (a module that only needs a few members of a class
should ask for a narrow interface, not import the class from above).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_PROTOCOLS = {"asyncio", "websockets", "socket", "time", "random"}

# Top to bottom. A name stands for that module and everything under it, except the
# root package ``p2pfl`` itself, which stands for ``p2pfl/__init__.py`` only (the
# embedded peer's front door: ``p2pfl.Peer``).
TIERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cli", ("p2pfl.cli", "p2pfl.__main__")),
    ("simulate", ("p2pfl.simulate", "p2pfl.provenance", "p2pfl.report", "p2pfl.baselines")),
    ("engines", ("p2pfl.engines",)),
    ("peer", ("p2pfl", "p2pfl.peer")),
    ("node", ("p2pfl.node",)),
    (
        "spec",
        (
            "p2pfl.spec",  # the run spec (a module or a package)
            "p2pfl.scenario",
            "p2pfl.schema",
            "p2pfl.drift",
            "p2pfl.energy",
            "p2pfl.events",
            "p2pfl.privacy",
            "p2pfl.training",
            "p2pfl.finetune",
            "p2pfl.models",
            "p2pfl.transport",
            "p2pfl.datasets",
            "p2pfl.partition",
        ),
    ),
    (
        "base",
        (
            "p2pfl.errors",
            "p2pfl.atomic",
            "p2pfl.tables",
            "p2pfl.entrypoints",
            "p2pfl.identity",
            "p2pfl.ledger_file",
            "p2pfl.runcrate",
            "p2pfl.threads",
        ),
    ),
    ("pure", ("protocols", "topology")),
)

# Imports for a type only that would close a circle. The round layer reaches the node
# through its narrow interface (``p2pfl.node.host``); nothing may join this list.
KNOWN_TYPING_IMPORTS: frozenset[tuple[str, str]] = frozenset()
# Upward imports of the daemon that go when what they import moves below the node:
# the round cores into protocols/, the secure graph of distributed noise and a
# scenario's data into the run spec's layer. Nothing else may join these lists.
KNOWN_UPWARD_IMPORTS = frozenset({})
KNOWN_IMPORTS = KNOWN_TYPING_IMPORTS | KNOWN_UPWARD_IMPORTS


# -- the module graph -------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (found under ``root``), by dotted name."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Dotted names that a source file imports anywhere in it (relative imports resolved).

    ``from a.b import c`` yields ``a.b.c``, which ``owner`` maps back to ``a.b`` when
    ``c`` is not a module. The packages above an imported module (whose ``__init__``
    Python runs first) are not counted: every module would otherwise import ``p2pfl``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            stars = any(alias.name == "*" for alias in node.names)
            names.update([base] if stars else [f"{base}.{alias.name}" for alias in node.names])
    return names


def owner(name: str, modules: Iterable[str]) -> str | None:
    """The module that ``name`` (a module, or a name inside one) belongs to."""
    known = set(modules)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str) -> nx.DiGraph:
    """Modules of ``package`` as nodes, ``a -> b`` when ``a`` imports ``b`` (not itself)."""
    modules = modules_of(root, package)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for imported in imported_names(path, name):
            if imported.split(".")[0] != package:
                continue
            target = owner(imported, modules)
            if target is not None and target != name:
                graph.add_edge(name, target)
    return graph


def tier_of(module: str) -> str | None:
    """The tier ``module`` belongs to (the longest matching name wins), or None."""
    matches = [
        (len(prefix), tier)
        for tier, names in TIERS
        for prefix in names
        if module == prefix or (prefix != "p2pfl" and module.startswith(prefix + "."))
    ]
    return max(matches)[1] if matches else None


RANK = {tier: len(TIERS) - i for i, (tier, _) in enumerate(TIERS)}


def upward_imports(graph: nx.DiGraph, root: Path) -> list[str]:
    """One line per import that points to a higher tier, naming file, module and tiers."""
    found = []
    for importer, imported in sorted(graph.edges):
        if (importer, imported) in KNOWN_IMPORTS:
            continue
        low, high = tier_of(importer), tier_of(imported)
        if low is None or high is None or RANK[high] <= RANK[low]:
            continue
        path = graph.nodes[importer].get("path")
        where = path.relative_to(root) if path is not None else importer
        found.append(f"{where} ({low}) imports {imported} ({high})")
    return found


def import_cycles(graph: nx.DiGraph) -> list[tuple[list[str], list[str]]]:
    """The circles of imports: per group of modules that all reach each other, one circle
    (from and back to the group's first module by name) and the whole group, which one
    circle may not show."""
    graph = graph.copy()
    graph.remove_edges_from(KNOWN_IMPORTS)
    cycles = []
    for group in nx.strongly_connected_components(graph):
        if len(group) > 1:
            inside = nx.DiGraph(sorted(graph.subgraph(group).edges))  # the same circle each run
            circle = [a for a, _ in nx.find_cycle(inside, source=min(group))]
            cycles.append(([*circle, circle[0]], sorted(group)))
    return sorted(cycles)


def runtime_graph(root: Path = ROOT) -> nx.DiGraph:
    graph = import_graph(root, "p2pfl")
    for name, path in modules_of(root, "p2pfl").items():
        graph.nodes[name]["path"] = path
    return graph


# -- p2pfl/ -----------------------------------------------------------------------------


def test_every_runtime_module_has_a_tier() -> None:
    untiered = sorted(m for m in modules_of(ROOT, "p2pfl") if tier_of(m) is None)
    assert untiered == [], f"add these modules to a tier of TIERS: {untiered}"


def test_runtime_imports_only_point_down() -> None:
    found = upward_imports(runtime_graph(), ROOT)
    assert found == [], "imports that point up a layer:\n" + "\n".join(found)


def test_runtime_has_no_import_circles() -> None:
    cycles = import_cycles(runtime_graph())
    lines = [" -> ".join(circle) + f"  (all of: {', '.join(group)})" for circle, group in cycles]
    assert cycles == [], "import circles:\n" + "\n".join(lines)


def test_known_imports_are_still_needed() -> None:
    """An exception that no longer happens is taken off the list, so it cannot come back."""
    graph = runtime_graph()
    assert sorted(e for e in KNOWN_IMPORTS if not graph.has_edge(*e)) == []


def test_the_tiers_are_in_the_order_of_the_design() -> None:
    order = [tier for tier, _ in TIERS]
    assert order == ["cli", "simulate", "engines", "peer", "node", "spec", "base", "pure"]
    assert tier_of("p2pfl.provenance.check") == "simulate"
    assert tier_of("p2pfl.spec") == tier_of("p2pfl.spec.run") == "spec"
    assert tier_of("p2pfl") == "peer" and tier_of("p2pfl.node.node") == "node"
    assert tier_of("p2pfl.privacy.report") == "spec" and tier_of("p2pfl.report") == "simulate"


def plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_catches_a_planted_upward_import(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "p2pfl/__init__.py": "",
            "p2pfl/errors.py": "",
            "p2pfl/node/__init__.py": "",
            "p2pfl/node/crate.py": "def write():\n    from p2pfl.provenance import check\n",
            "p2pfl/provenance/__init__.py": "from p2pfl.errors import P2PFLError\n",
            "p2pfl/provenance/check.py": "from ..node import crate\n",
        },
    )
    graph = import_graph(root, "p2pfl")
    for name, path in modules_of(root, "p2pfl").items():
        graph.nodes[name]["path"] = path
    found = upward_imports(graph, root)
    where = Path("p2pfl/node/crate.py")
    assert found == [f"{where} (node) imports p2pfl.provenance.check (simulate)"]
    assert graph.has_edge("p2pfl.provenance.check", "p2pfl.node.crate")  # relative, downwards


def test_the_checker_catches_a_planted_cycle(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "p2pfl/__init__.py": "",
            "p2pfl/report.py": "import p2pfl.privacy.report\n",
            "p2pfl/privacy/__init__.py": "",
            "p2pfl/privacy/report.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from p2pfl.report import pct\n"
            ),
            "p2pfl/atomic.py": "from p2pfl import errors\n",
            "p2pfl/errors.py": "",
        },
    )
    cycles = import_cycles(import_graph(root, "p2pfl"))
    circle = ["p2pfl.privacy.report", "p2pfl.report", "p2pfl.privacy.report"]
    assert cycles == [(circle, ["p2pfl.privacy.report", "p2pfl.report"])]


def is_hasattr(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "hasattr"
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "hasattr"
        and isinstance(node.value, ast.Name)
        and node.value.id == "builtins"
    )


def hasattr_uses(path: Path) -> list[int]:
    """The lines of a source file that use ``hasattr`` (called, passed on, or ``builtins.``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return sorted({node.lineno for node in ast.walk(tree) if is_hasattr(node)})


def test_the_runtime_never_probes_attributes_with_hasattr() -> None:
    """What an object has is said by its type (a field set in ``__init__``, a Protocol)."""
    found = {str(p.relative_to(ROOT)): hasattr_uses(p) for p in sources("p2pfl")}
    found = {path: lines for path, lines in found.items() if lines}
    assert found == {}, f"hasattr in p2pfl/ (file: lines): {found}"


def test_the_hasattr_checker_sees_every_use(tmp_path: Path) -> None:
    planted = tmp_path / "probe.py"
    planted.write_text(
        "import builtins\n"
        "if hasattr(x, 'a'):\n"
        "    pass\n"
        "y = builtins.hasattr(x, 'b')\n"
        "z = filter(hasattr, [])\n"
        "ok = getattr(x, 'hasattr')  # a string is no use\n"
    )
    assert hasattr_uses(planted) == [2, 4, 5]


# -- protocols/ and topology/ -----------------------------------------------------------


def imported_roots(path: Path) -> set[str]:
    """Top-level module names that a source file imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no sources"
    return files


@pytest.mark.parametrize("package", ["topology", "protocols"])
def test_pure_layers_never_import_the_runtime(package: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in sources(package) if "p2pfl" in imported_roots(p)]
    assert offenders == [], f"{package}/ must not import p2pfl: {offenders}"


def test_topology_never_imports_protocols() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in sources("topology") if "protocols" in imported_roots(p)
    ]
    assert offenders == []


def test_protocols_stay_sans_io() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN_IN_PROTOCOLS)
        for p in sources("protocols")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_checker_sees_forbidden_imports(tmp_path: Path) -> None:
    """The checker itself must catch both import forms, or the tests above prove nothing."""
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom p2pfl.node import Node\nfrom time import monotonic\n")
    assert {"asyncio", "p2pfl", "time"} <= imported_roots(bad)

"""The layers of DESIGN.md: imports only point downwards, and protocols/ stays sans-I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_PROTOCOLS = {"asyncio", "websockets", "socket", "time", "random"}


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

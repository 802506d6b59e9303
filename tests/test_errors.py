"""One ``errors.py`` per package shows its whole tree: no exception class is defined elsewhere."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("p2pfl", "protocols", "topology")
BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


def classes(paths: list[Path]) -> list[tuple[Path, str, list[str]]]:
    """Every class defined in ``paths``: its file, its name and its bases' last names."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base).rpartition(".")[2] for base in node.bases]
                found.append((path, node.name, bases))
    return found


def misplaced_exceptions(paths: list[Path], root: Path) -> list[str]:
    """``file: Class`` for each exception class defined outside a file named ``errors.py``.

    An exception is a class with a built-in exception, a name ending in ``Error`` or
    ``Exception`` (a library's), or another exception found here among its bases.
    """
    defined = classes(paths)
    known = set(BUILTIN_EXCEPTIONS)
    growing = True
    while growing:
        before = len(known)
        for _, name, bases in defined:
            if any(b in known or b.endswith(("Error", "Exception")) for b in bases):
                known.add(name)
        growing = len(known) > before
    return sorted(
        f"{path.relative_to(root)}: {name}"
        for path, name, _ in defined
        if name in known and path.name != "errors.py"
    )


def test_every_exception_lives_in_an_errors_module() -> None:
    paths = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert misplaced_exceptions(paths, ROOT) == []


def test_the_check_finds_a_planted_exception(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    errors = tmp_path / "pkg" / "errors.py"
    errors.write_text("class PkgError(Exception):\n    pass\n")
    base = tmp_path / "pkg" / "base.py"
    base.write_text(
        "from pkg.errors import PkgError\n"
        "class Closed(PkgError):\n    pass\n"
        "class Limited(Closed):\n    pass\n"
        "class Refused(lib.ProtocolError):\n    pass\n"
        "class Link:\n    pass\n"
        "class Broken(KeyError):\n    pass\n"
    )
    where = Path("pkg/base.py")
    assert misplaced_exceptions([errors, base], tmp_path) == [
        f"{where}: {name}" for name in ("Broken", "Closed", "Limited", "Refused")
    ]

"""The docs name only what exists: files in the tree, importable names, flags the CLI accepts.

README.md and docs/*.md are read as text. Every path under one of the tree's
top-level folders must exist, and so must every top-level note they name
(``README.md``, ``BUGS_NODE.txt``); every dotted name of ours written as inline code
(``p2pfl.spec.cores.build_core``, ``p2pfl.node.examples:heart_site``) must
import; every ``--flag`` of a ``p2pfl ...`` command line (a fenced block's line,
or inline code that starts with ``p2pfl``) must be an option of that
subcommand's parser, and every ``--set KEY=VALUE`` of ``p2pfl simulate`` must
name a scenario key; every relative Markdown link must reach a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import re
import shlex
import typing
from pathlib import Path

import pytest

from p2pfl.cli import build_parser
from p2pfl.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FOLDERS = ("p2pfl", "protocols", "topology", "simulations", "tests", "docs")

_PATH = re.compile(rf"(?<![\w./-])(?:{'|'.join(FOLDERS)})/[\w./-]*")
_NOTE = re.compile(r"(?<![\w./-])[A-Z][A-Z0-9_]*\.(?:md|txt)\b")
_INLINE = re.compile(r"`([^`\n]+)`")
_DOTTED = re.compile(r"(?<![\w./-])(?:p2pfl|protocols|topology)(?:\.\w+)+(?::\w+)?")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def cited_paths(text: str) -> list[str]:
    """The tree paths a document names, trailing sentence punctuation dropped."""
    paths = {m.group().rstrip(".") for m in _PATH.finditer(text)}
    return sorted(paths | {m.group() for m in _NOTE.finditer(text)})


def missing_paths(text: str, root: Path) -> list[str]:
    return [p for p in cited_paths(text) if not (root / p).exists()]


def dotted_names(text: str) -> list[str]:
    """Our dotted names written as inline code, call arguments dropped."""
    names = set()
    for span in _INLINE.finditer(text):
        names.update(m.group() for m in _DOTTED.finditer(span.group(1)))
    return sorted(names)


def resolves(name: str) -> bool:
    """Whether ``module.attr...`` or ``module:attr`` names a module or an attribute of one."""
    module_part, _, attr = name.partition(":")
    parts = module_part.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: object = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # not a module: the rest are attributes
            raise
        rest = parts[cut:] + ([attr] if attr else [])
        for piece in rest:
            if not hasattr(obj, piece):
                return False
            obj = getattr(obj, piece)
        return True
    return False


def command_lines(text: str) -> list[str]:
    """Every ``p2pfl ...`` command: fenced lines (continuations joined) and inline code."""
    commands = []
    for block in _FENCE.finditer(text):
        joined = re.sub(r"\\\n\s*", " ", block.group(1))
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("p2pfl "):
                commands.append(line)
    fenceless = _FENCE.sub("", text)
    for span in _INLINE.finditer(fenceless):
        if span.group(1).startswith("p2pfl "):
            commands.append(span.group(1))
    return commands


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_flags(command: str, parser: argparse.ArgumentParser) -> list[str]:
    """The ``--flags`` of ``command`` that the subcommand it names does not accept."""
    words = shlex.split(command.partition(" #")[0], posix=True)[1:]
    path = ["p2pfl"]
    for word in words:
        sub = _subparsers(parser).get(word)
        if sub is None:
            break
        parser = sub
        path.append(word)
    known = {opt for action in parser._actions for opt in action.option_strings}
    flags = {m.group() for word in words for m in _FLAG.finditer(word)}
    return sorted(f"{' '.join(path)} {flag}" for flag in flags - known)


def unknown_set_keys(command: str) -> list[str]:
    """The keys of ``--set KEY=VALUE`` in a ``p2pfl simulate`` command that no scenario has."""
    words = shlex.split(command.partition(" #")[0], posix=True)
    if words[:2] != ["p2pfl", "simulate"]:
        return []
    keys = [b.partition("=")[0] for a, b in itertools.pairwise(words) if a == "--set"]
    return [key for key in keys if not _scenario_key(key)]


def _scenario_key(key: str) -> bool:
    section, _, name = key.partition(".")
    hints = typing.get_type_hints(Scenario)
    if section not in hints:
        return False
    hint = hints[section]
    if dataclasses.is_dataclass(hint):
        return name in {f.name for f in dataclasses.fields(hint)}
    return not name


def broken_links(text: str, where: Path) -> list[str]:
    targets = [m.group(1).partition("#")[0] for m in _LINK.finditer(text)]
    relative = [t for t in targets if t and "://" not in t]
    return [t for t in relative if not (where.parent / t).exists()]


# -- the checks on this tree's docs ----------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_path_exists(doc: Path) -> None:
    assert missing_paths(doc.read_text(), ROOT) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_dotted_name_imports(doc: Path) -> None:
    assert [n for n in dotted_names(doc.read_text()) if not resolves(n)] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_flag_is_accepted(doc: Path) -> None:
    parser = build_parser()
    unknown = [u for c in command_lines(doc.read_text()) for u in unknown_flags(c, parser)]
    assert unknown == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_set_key_is_a_scenario_key(doc: Path) -> None:
    assert [k for c in command_lines(doc.read_text()) for k in unknown_set_keys(c)] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc.read_text(), doc) == []


def test_the_docs_cite_the_rehearse_then_deploy_commands() -> None:
    commands = [c for doc in DOCS for c in command_lines(doc.read_text())]
    assert any(c.startswith("p2pfl simulate") and "--write-plan" in c for c in commands)
    assert any(c.startswith("p2pfl federation create") and "--plan" in c for c in commands)


# -- the checks can fail ---------------------------------------------------------------------


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "p2pfl").mkdir()
    (tmp_path / "p2pfl" / "here.py").write_text("")
    (tmp_path / "README.md").write_text("")
    text = (
        "See `p2pfl/here.py` and `p2pfl/engines/gone.py`. Also simulations/none.toml, "
        "README.md, BUGS_NODE.txt, `PLAN.toml`."
    )
    assert missing_paths(text, tmp_path) == [
        "BUGS_NODE.txt",
        "p2pfl/engines/gone.py",
        "simulations/none.toml",
    ]


def test_a_name_that_does_not_import_is_reported() -> None:
    text = "`p2pfl.spec.cores.build_core`, `p2pfl.node.examples:heart_site`, `p2pfl.node.plan.Plan`"
    names = dotted_names(text)
    assert [n for n in names if not resolves(n)] == ["p2pfl.node.plan.Plan"]
    assert not resolves("p2pfl.spec.NoSuchThing")


def test_an_unknown_flag_is_reported() -> None:
    text = (
        "```bash\np2pfl simulate simulations/tiny.toml --write-plan p.toml \\\n"
        "    --set a=1 --no-such-flag   # a comment --ignored\n```\n"
        "and `p2pfl federation create --plan P --rounds 3`."
    )
    parser = build_parser()
    unknown = [u for c in command_lines(text) for u in unknown_flags(c, parser)]
    assert unknown == ["p2pfl simulate --no-such-flag", "p2pfl federation create --rounds"]


def test_a_removed_scenario_key_is_reported() -> None:
    command = (
        "p2pfl simulate simulations/tiny.toml --set training.rounds=3 --set 'sweep={}' "
        "--set 'secure.dropouts=[[2, 1]]' --set 'dropouts.schedule=[[2, 1]]' "
        "--set clock.round_timeout=5"
    )
    assert unknown_set_keys(command) == ["secure.dropouts", "clock.round_timeout"]


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "here.md").write_text("")
    doc = tmp_path / "doc.md"
    text = "[a](here.md#top) [b](gone.md) [c](https://example.org/x.md)"
    assert broken_links(text, doc) == ["gone.md"]

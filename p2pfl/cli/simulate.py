"""``p2pfl simulate``: many nodes on one machine, to compare topologies and settings."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfl.errors import ConfigError

if TYPE_CHECKING:
    from p2pfl.engines.world import World
    from p2pfl.scenario import Scenario

SCENARIO_DIR = Path("simulations")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a federation on one machine from a scenario file",
        description=(
            "Run a scenario (TOML): gossip training on a topology, with baselines and a sweep. "
            "SCENARIO is a file path, or a name such as 'hospitals' for simulations/hospitals.toml."
        ),
    )
    p.add_argument("scenario", help="scenario file, or NAME for simulations/NAME.toml")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/NAME)")
    p.add_argument("--engine", choices=["protocol", "vectorized", "processes"], default=None)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set training.rounds=5 (repeatable)",
    )
    p.add_argument(
        "--write-plan",
        type=Path,
        default=None,
        metavar="PLAN.toml",
        help="also write the training plan that deploys this run (`p2pfl federation create "
        "--plan`); its hash is what the members approve",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else the cores not busy "
        "with other processes: this process's CPU affinity less the load average; at least 1)",
    )
    p.set_defaults(handler=_run)


def scenario_path(name: str) -> Path:
    """The file ``name`` names: a path, or a bare NAME for ``simulations/NAME.toml``.

    When there is none, the error suggests files that exist: close matches among the
    scenarios of the folder looked in, or else the scenarios that are there.
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"{name} is a folder, not a scenario file")
    bare = len(path.parts) == 1 and path.suffix == ""
    if bare:
        named = SCENARIO_DIR / f"{name}.toml"
        if named.is_file():
            return named
    folder = SCENARIO_DIR if bare else path.parent
    tried = f"{name!r}" + (f" (nor {SCENARIO_DIR / (name + '.toml')})" if bare else "")
    raise ConfigError(f"no scenario file {tried}{_suggestions(folder, path.stem)}")


def _suggestions(folder: Path, stem: str) -> str:
    shipped = sorted(p for p in folder.glob("*.toml") if p.is_file()) if folder.is_dir() else []
    by_stem = {p.stem: p for p in shipped}
    close = difflib.get_close_matches(stem, list(by_stem), n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(str(by_stem[c]) for c in close) + "?"
    if shipped:
        return "; scenarios that exist: " + ", ".join(str(p) for p in shipped)
    if folder != SCENARIO_DIR:
        return f"; {folder}/ holds no scenario{_suggestions(SCENARIO_DIR, stem)}"
    return f"; {folder}/ holds no scenario"


def _overrides(items: list[str]) -> list[tuple[str, str, Any]]:
    """Each ``--set KEY=VALUE`` as ``(item, key, value)``, in the order given."""
    from p2pfl.scenario import parse_value

    result = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        result.append((item, key.strip(), parse_value(value.strip())))
    return result


def load(path: Path, items: list[str]) -> tuple[Scenario, dict[str, Any]]:
    """The scenario of ``path`` with the ``--set`` overrides, and those overrides.

    An error names where the bad key came from: the file when the file alone is wrong,
    else the first ``--set`` that makes it wrong.
    """
    from p2pfl.scenario import load_table, scenario_from_table

    parsed = _overrides(items)
    overrides = {key: value for _, key, value in parsed}
    table = load_table(path)
    try:
        return scenario_from_table(table, str(path), overrides, source_file=path), overrides
    except ConfigError:
        if not parsed:
            raise
        scenario_from_table(table, str(path))  # the file alone is wrong: its error says so
    applied: dict[str, Any] = {}
    for item, key, value in parsed:
        applied[key] = value
        try:
            scenario_from_table(table, f"--set {item}", applied)
        except ConfigError as exc:
            message = str(exc)
            if not message.startswith("--set "):
                message = f"--set {item}: {message}"
            raise ConfigError(message) from None
    raise AssertionError("the overrides failed together but not one by one")  # unreachable


def _run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    from p2pfl.threads import default_threads

    threads = args.threads or default_threads()
    import torch

    torch.set_num_threads(threads)
    path = scenario_path(args.scenario)
    scenario, overrides = load(path, args.overrides)
    world = _join(scenario)
    ended_well = False
    try:
        status = _simulate(args, path, scenario, overrides, world)
        ended_well = True
        return status
    finally:
        if world is not None:
            from p2pfl.engines.world import leave

            leave(together=ended_well)


def _join(scenario: Scenario) -> World | None:
    """This process's rank when torchrun or srun started several; None for a plain run."""
    import os

    from p2pfl.engines.world import join, placement

    where = placement(os.environ)
    if where is None or where.size == 1:
        return None
    return join(where, scenario.device)


def _simulate(
    args: argparse.Namespace,
    path: Path,
    scenario: Scenario,
    overrides: dict[str, Any],
    world: World | None,
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from p2pfl.report import print_tables, write_plots
    from p2pfl.runcrate import clear_crate, now
    from p2pfl.simulate import simulate

    leader = world is None or world.leader
    out = args.out or Path("runs") / scenario.name
    console = Console(stderr=args.json, quiet=not leader)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False, disable=not leader) as bar:

        def factory(label: str, rounds: int):  # type: ignore[no-untyped-def]
            task = bar.add_task(f"{label} ({args.engine or scenario.engine})", total=rounds)
            return lambda done: bar.update(task, completed=done)

        if leader:
            clear_crate(out)  # the crate is written after the report (rocrate loads then)
        started = now()
        report = simulate(
            scenario,
            out,
            engine=args.engine,
            progress=factory,
            write_plan=args.write_plan,
            plots=False,
            world=world,
        )
    if not leader:
        return 0
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_tables(report, console)
    sys.stdout.flush()  # the report shows now; the plots and the crate follow
    write_plots(report, out)
    from p2pfl import provenance

    provenance.write_simulation_crate(
        out,
        scenario=dataclasses.replace(scenario, engine=args.engine or scenario.engine),
        scenario_file=path,
        report=report,
        started=started,
        ended=provenance.now(),
        overrides=overrides,
    )
    if not args.json:
        console.print(
            f"Wrote {out}/metrics.json, scenario.toml, accuracy.png, consensus.png, model-*.pt, "
            "ro-crate-metadata.json"
        )
    if args.write_plan is not None:
        digest = report["runs"][0]["plan"]["hash"]
        console.print(f"Wrote the plan {args.write_plan} (plan hash {digest})", soft_wrap=True)
    return 0

"""``p2pfl simulate``: many nodes on one machine, to compare topologies and settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from p2pfl.errors import ConfigError


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
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.set_defaults(handler=_run)


def scenario_path(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    named = Path("simulations") / f"{name}.toml"
    if named.is_file():
        return named
    raise ConfigError(f"no scenario file {name!r} (nor {named})")


def _overrides(items: list[str]) -> dict[str, object]:
    from p2pfl.scenario import parse_value

    result: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        result[key.strip()] = parse_value(value.strip())
    return result


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from p2pfl import provenance
    from p2pfl.report import print_tables
    from p2pfl.scenario import load_scenario
    from p2pfl.simulate import simulate

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    path = scenario_path(args.scenario)
    overrides = _overrides(args.overrides)
    scenario = load_scenario(path, overrides)
    out = args.out or Path("runs") / scenario.name
    console = Console(stderr=args.json)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:

        def factory(label: str, rounds: int):  # type: ignore[no-untyped-def]
            task = bar.add_task(f"{label} ({args.engine or scenario.engine})", total=rounds)
            return lambda done: bar.update(task, completed=done)

        provenance.clear_simulation_crate(out)
        started = provenance.now()
        report = simulate(
            scenario, out, engine=args.engine, progress=factory, write_plan=args.write_plan
        )
    provenance.write_simulation_crate(
        out,
        scenario=dataclasses.replace(scenario, engine=args.engine or scenario.engine),
        scenario_file=path,
        report=report,
        started=started,
        ended=provenance.now(),
        overrides=overrides,
    )
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_tables(report, console)
        console.print(
            f"Wrote {out}/metrics.json, scenario.toml, accuracy.png, consensus.png, model-*.pt, "
            "ro-crate-metadata.json"
        )
    if args.write_plan is not None:
        digest = report["runs"][0]["plan"]["hash"]
        console.print(f"Wrote the plan {args.write_plan} (plan hash {digest})", soft_wrap=True)
    return 0

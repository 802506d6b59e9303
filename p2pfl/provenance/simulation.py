"""``p2pfl simulate``'s output directory as a crate (``write_simulation_crate``).

The directory is the crate: the files the run wrote stay where they are, the
scenario file (and any graph file) is copied into ``inputs/``, and the
metadata file is written last and atomically, so an interrupted write leaves
the outputs and no crate rather than a crate listing missing files.
"""

from __future__ import annotations

import datetime
import getpass
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rocrate.model import Person  # type: ignore[import-untyped]
from rocrate.rocrate import ROCrate  # type: ignore[import-untyped]

from p2pfl.atomic import atomic_write_bytes
from p2pfl.runcrate import (
    METADATA_FILE,
    add_action,
    add_file,
    add_value,
    metadata_bytes,
    new_crate,
)

if TYPE_CHECKING:
    from p2pfl.scenario import Scenario


def write_simulation_crate(
    out_dir: str | os.PathLike[str],
    *,
    scenario: Scenario,
    scenario_file: str | os.PathLike[str],
    report: Mapping[str, Any],
    started: datetime.datetime,
    ended: datetime.datetime,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Make ``out_dir`` (what ``simulate`` wrote) a crate; returns its metadata file.

    ``scenario`` is the scenario as run (overrides and engine applied),
    ``scenario_file`` the file it was read from (copied into ``inputs/``),
    ``report`` what ``simulate`` returned (its runs name the model files).
    ``ProvenanceError`` if a file the run should have written is missing.
    """
    from p2pfl.scenario import expand_sweep
    from p2pfl.simulate import slug

    out = Path(out_dir)
    source = Path(scenario_file)
    crate = new_crate(
        f"p2pfl simulation {scenario.name}",
        f"A simulated federation: scenario {scenario.name}, engine {scenario.engine}, "
        f"{len(report['runs'])} run(s).",
        ended,
    )
    objects = [
        add_file(
            crate,
            source,
            _input_name(crate, source),
            f"the scenario file as given: {source.resolve()}",
            alternate=str(source),
        ),
        add_value(crate, "#engine", "engine", scenario.engine),
        add_value(crate, "#seed", "seed", scenario.seed),
    ]
    world = report.get("world")
    if world:
        objects.append(add_value(crate, "#world-size", "world size", world["size"]))
        objects.append(add_value(crate, "#devices", "devices", ", ".join(world["devices"])))
    for key, value in (overrides or {}).items():
        objects.append(add_value(crate, f"#set-{key}", f"--set {key}", value))
    objects += _topologies(crate, expand_sweep(scenario))
    objects += _user_code(crate, report)
    results = [
        add_file(crate, out / "scenario.toml", "scenario.toml", "the scenario as run"),
        add_file(crate, out / "metrics.json", "metrics.json", "metrics per run and round"),
        add_file(crate, out / "accuracy.png", "accuracy.png", "mean accuracy per round"),
        add_file(crate, out / "consensus.png", "consensus.png", "consensus distance per round"),
    ]
    for run in report["runs"]:
        name = f"model-{slug(run['label'])}.pt"
        results.append(
            add_file(crate, out / name, name, f"averaged model (torch state_dict), {run['label']}")
        )
    add_action(
        crate,
        name=f"p2pfl simulate {source.name}",
        agent=_operator(crate),
        objects=objects,
        results=results,
        times=(started, ended),
        error=None,
    )
    for entity in crate.data_entities:  # the inputs' copies; the outputs are in place
        entity.write(out)
    target = out / METADATA_FILE
    atomic_write_bytes(target, metadata_bytes(crate))
    return target


def _input_name(crate: ROCrate, path: Path) -> str:
    """``inputs/NAME``, numbered when two inputs share a name."""
    name, n = f"inputs/{path.name}", 1
    while crate.get(name) is not None:
        n += 1
        name = f"inputs/{n}-{path.name}"
    return name


def _topologies(crate: ROCrate, runs: Iterable[tuple[str, Scenario]]) -> list[Any]:
    """Each run's topology (kind and parameters) and the graph files they read."""
    from p2pfl.simulate import slug

    entities = []
    graphs: set[Path] = set()
    for label, sc in runs:
        table = {k: v for k, v in asdict(sc.topology).items() if v is not None}
        entities.append(
            add_value(
                crate,
                f"#topology-{slug(label)}",
                f"topology ({label})",
                table,
                "kind and parameters",
            )
        )
        if sc.topology.path is not None:
            graphs.add(Path(sc.topology.path))
    for graph in sorted(graphs):
        entities.append(
            add_file(
                crate,
                graph,
                _input_name(crate, graph),
                f"graph file: {graph.resolve()}",
                alternate=str(graph),
            )
        )
    return entities


def _user_code(crate: ROCrate, report: Mapping[str, Any]) -> list[Any]:
    """The user's own dataset loader and model factory: each module's file, copied into
    ``inputs/``, and its ``module:function`` with the file's SHA-256 as a ``PropertyValue``."""
    entities = []
    files: dict[str, Any] = {}
    seen: set[tuple[str, str]] = set()
    for run in report["runs"]:
        for role, code in sorted(run.get("user_code", {}).items()):
            if (role, code["reference"]) in seen:
                continue
            seen.add((role, code["reference"]))
            ident = f"#user-{role}-{len(seen)}"
            entities.append(
                add_value(
                    crate,
                    ident,
                    f"user {role}",
                    code,
                    "module:function of the user's own code, its file and the file's SHA-256",
                )
            )
            path = code["file"]
            if path and path not in files and Path(path).is_file():
                files[path] = add_file(
                    crate,
                    Path(path),
                    _input_name(crate, Path(path)),
                    f"source of the user {role} {code['reference']} (sha256 {code['sha256']})",
                    alternate=path,
                )
                entities.append(files[path])
    return entities


def _operator(crate: ROCrate) -> Person:
    """Who started the simulation: the local account, as far as the system says."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return crate.add(Person(crate, "#operator", properties={"name": user}))

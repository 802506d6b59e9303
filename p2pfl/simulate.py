"""Run a scenario: every sweep value through its engine, with baselines, into one report.

``simulate(scenario, out_dir)`` is what ``p2pfl simulate`` calls; it returns
the report as a plain dict (what ``metrics.json`` holds) and writes the files:
``metrics.json``, ``scenario.toml``, ``accuracy.png``, ``consensus.png`` and
one ``model-<run>.pt`` state_dict per sweep value (the nodes' averaged model).
Data are loaded once per distinct data section; baselines are trained once
per distinct (data, model, training, seed), as a sweep over the topology does
not change them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pfl import baselines as bl
from p2pfl.engines import prepare, run_engine
from p2pfl.engines.common import RunResult, Setup
from p2pfl.engines.world import World
from p2pfl.entrypoints import is_reference
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, expand_sweep, user_code
from p2pfl.spec import PlanError

ProgressFactory = Callable[[str, int], Callable[[int], None]]
"""Given a run's label and its number of rounds, a callback for rounds completed."""


def simulate(
    scenario: Scenario,
    out_dir: str | Path | None = None,
    *,
    engine: str | None = None,
    progress: ProgressFactory | None = None,
    write_plan: str | Path | None = None,
    plots: bool = True,
    world: World | None = None,
) -> dict[str, Any]:
    """Run every sweep value; ``write_plan``: also write the plan that deploys the run there.

    ``plots=False`` leaves the plots to the caller (``p2pfl.report.write_plots``), which the
    command does once the report is printed. ``world``: this process is one rank of a
    sharded run (``p2pfl.engines.world``); every rank calls ``simulate`` with the same
    scenario, rank 0 returns the report and writes the files, the others return an
    empty dict and write nothing.
    """
    if engine is not None:
        scenario = dataclasses.replace(scenario, engine=engine)
    if world is not None:
        _check_world(scenario, world)
    writes = world is None or world.leader
    world_report = _world_report(world) if world is not None else None
    data_cache: dict[str, Any] = {}
    baseline_cache: dict[str, bl.Baselines] = {}
    runs = []
    sweep = expand_sweep(scenario)
    if write_plan is not None and len(sweep) > 1:
        raise ConfigError(
            f"--write-plan: the sweep makes {len(sweep)} runs, each its own plan; "
            "drop the sweep and fix its keys, e.g. --set 'sweep={}' --set topology.kind=ring, "
            "to write the plan of one"
        )
    for label, sc in sweep:
        key = repr(sc.data) + str(sc.seed)
        setup = prepare(sc, data_cache.get(key))
        data_cache[key] = setup.data
        if write_plan is not None and writes:
            write_plan_file(setup, Path(write_plan))
        callback = progress(label, sc.training.rounds) if progress and writes else None
        if world is None:
            result = run_engine(sc.engine, setup, label, callback)
        else:
            from p2pfl.engines import sharded  # torch.distributed: only for a sharded run

            shard_result = sharded.run(setup, label, world, callback)
            if shard_result is None:
                continue
            result = shard_result
        base_key = key + repr(sc.model) + repr(sc.training) + repr(sc.baselines)
        if base_key not in baseline_cache:
            baseline_cache[base_key] = bl.run_baselines(setup)
        runs.append(_run_report(setup, result, baseline_cache[base_key]))
        if out_dir is not None:
            _save_model(setup, result, Path(out_dir))
    if not writes:
        return {}
    report = {
        "scenario": scenario.name,
        "engine": scenario.engine,
        "seed": scenario.seed,
        "runs": runs,
        **({"world": world_report} if world is not None else {}),
    }
    if out_dir is not None:
        from p2pfl.report import write_outputs

        write_outputs(report, scenario, Path(out_dir), plots=plots)
    return report


def _check_world(scenario: Scenario, world: World) -> None:
    """A sharded run: the vectorized engine, and the same scenario on every rank."""
    from p2pfl.engines.world import check_same, scenario_digest
    from p2pfl.scenario import to_table

    if scenario.engine != "vectorized":
        raise ConfigError(
            f"only the vectorized engine runs sharded over ranks, not {scenario.engine!r}: "
            "use --engine vectorized, or start one process"
        )
    check_same(world, scenario_digest(to_table(scenario)))


def write_plan_file(setup: Setup, path: Path) -> bytes:
    """Write the plan that deploys ``setup`` as TOML (atomically); its hash."""
    import tomli_w

    from p2pfl.atomic import atomic_write_bytes

    plan = setup.plan()
    digest = plan.hash()
    header = (
        f"# The training plan rehearsed by scenario {setup.scenario.name!r} "
        f"(p2pfl simulate --write-plan).\n"
        f"# Plan hash {digest.hex()}: what `p2pfl federation approve` signs.\n"
        "# Every key is explicit; the hash covers the table, not these comments.\n"
    )
    if is_reference(plan.model.name):
        header += (
            f"# [model] name {plan.model.name!r} is your own factory: every site must be able\n"
            "# to import its module (on PYTHONPATH or installed) with the same source.\n"
        )
    header += "\n"
    atomic_write_bytes(path, (header + tomli_w.dumps(plan.table())).encode())
    return digest


def _world_report(world: World) -> dict[str, Any]:
    from p2pfl.engines.world import devices

    return {"size": world.size, "backend": world.backend, "devices": devices(world)}


def _run_report(setup: Setup, result: RunResult, base: bl.Baselines) -> dict[str, Any]:
    final = result.rounds[-1]
    privacy = setup.scenario.privacy
    return {
        "label": result.label,
        "engine": result.engine,
        "topology": setup.topo.kind,
        "mode": setup.scenario.gossip.mode,
        "nodes": setup.n,
        "parameters": setup.dim,
        "shared_parameters": setup.shared_dim,
        "rounds": [dataclasses.asdict(r) for r in result.rounds],
        "final": {
            "acc_mean": final.acc_mean,
            "acc_min": final.acc_min,
            "acc_max": final.acc_max,
            "consensus": final.consensus,
        },
        "bytes_per_node": sum(r.bytes_per_node for r in result.rounds),
        "stragglers": result.stragglers,
        "wall": {
            "total": result.wall_total,
            "train": result.wall_train,
            "mix": result.wall_mix,
            "eval": result.wall_eval,
        },
        "baselines": {
            "pooled": base.pooled_global,
            "minibatch": base.minibatch_global,
            "local": None if privacy.private_metrics else base.local_global,
        },
        "metrics": (
            "secure sum of the sites' own test splits"
            if privacy.private_metrics
            else "each node's model on the global test set"
        ),
        "plan": _plan_report(setup),
        "user_code": user_code(setup.scenario),
        "sites": _site_rows(setup, result, base),
        "personalise": _personalise_report(setup),
        "secure": _secure_report(setup, result),
        "privacy": _privacy_report(setup, result),
        "drift": result.extra.get("drift"),
        "energy": _energy(setup, result),
        "extra": {k: v for k, v in result.extra.items() if k != "drift"},
    }


def _plan_report(setup: Setup) -> dict[str, Any]:
    """The hash of the plan that deploys this run, or why the daemons cannot run it."""
    try:
        return {"hash": setup.plan().hash().hex()}
    except PlanError as exc:
        return {"refused": str(exc)}


def _energy(setup: Setup, result: RunResult) -> dict[str, Any]:
    """Bytes on the wire and training time, priced with the scenario's ``[energy]`` factors.

    Training seconds are what this machine spent training every node (the processes
    engine reports its nodes' mean, so it is scaled by the node count).
    """
    from p2pfl.energy import run_energy

    seconds = result.wall_train * (setup.n if result.engine == "processes" else 1)
    rounds = [dataclasses.asdict(r) for r in result.rounds]
    return run_energy(rounds, setup.n, seconds, setup.scenario.energy)


def _site_rows(setup: Setup, result: RunResult, base: bl.Baselines) -> list[dict[str, Any]]:
    """Per-site figures; with private metrics, only for the sites in ``privacy.opt_in``."""
    privacy = setup.scenario.privacy
    shown = [
        i
        for i, name in enumerate(result.site_names)
        if not privacy.private_metrics or name in privacy.opt_in
    ]
    if not shown:
        return []
    personal = bl.personalise(setup, result.final_params)
    if setup.scenario.personalise.method == "partial":  # the run itself is personalised
        sites = bl.reference_gossip(setup)
    else:
        sites = bl.site_accuracy(setup, result.final_params)
    return [
        {
            "site": result.site_names[i],
            "train_samples": int(setup.data.nodes[i].x_train.shape[0]),
            "test_samples": int(setup.data.nodes[i].x_test.shape[0]),
            "gossip": sites[i],
            "pooled": None if base.pooled_sites is None else base.pooled_sites[i],
            "local": None if base.local_sites is None else base.local_sites[i],
            "personalised": None if personal is None else personal.sites[i],
            **_finetune_row(personal, i),
        }
        for i in shown
    ]


def _finetune_row(personal: bl.Personalised | None, i: int) -> dict[str, int]:
    """A fine-tuned site's steps kept and validation rows (nothing for other methods)."""
    if personal is None or personal.steps is None or personal.val_sizes is None:
        return {}
    return {"personalised_steps": personal.steps[i], "validation_samples": personal.val_sizes[i]}


def _personalise_report(setup: Setup) -> dict[str, Any] | None:
    """The ``[personalise]`` section the personalised column follows (None: none)."""
    section = setup.scenario.personalise
    return None if section.method == "none" else dataclasses.asdict(section)


def _privacy_report(setup: Setup, result: RunResult) -> dict[str, Any] | None:
    """The mechanism, its target, and the (epsilon, delta) each node spent."""
    p = setup.scenario.privacy
    if p.mechanism == "none" and not p.private_metrics:
        return None
    out: dict[str, Any] = {
        "mechanism": p.mechanism if p.active else "none",
        "target_epsilon": p.epsilon if p.active else None,
        "clip": p.clip,
        "private_metrics": p.private_metrics,
    }
    if setup.budget is not None:
        out.update(setup.budget.as_report(result.site_names))
        if "delta_norm_median" in result.extra:
            out["delta_norm_median"] = result.extra["delta_norm_median"]
    return out


def _secure_report(setup: Setup, result: RunResult) -> dict[str, Any] | None:
    """Per node, how many neighbours may drop out of a secure round; rounds abandoned."""
    if not setup.scenario.secure.enabled:
        return None
    return {
        "dropout_tolerance": setup.scenario.secure_tolerance(setup.topo, setup.names()),
        "abandoned": result.extra.get("abandoned", 0),
        "stragglers": result.stragglers,
    }


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def _save_model(setup: Setup, result: RunResult, out_dir: Path) -> None:
    import torch

    from p2pfl.atomic import atomic_write_bytes
    from p2pfl.models import load_flat_parameters

    load_flat_parameters(setup.model, result.averaged.to(next(setup.model.parameters()).device))
    import io

    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in setup.model.state_dict().items()}, buffer)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / f"model-{slug(result.label)}.pt", buffer.getvalue())


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)

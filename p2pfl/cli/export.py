"""``p2pfl export``: take the federation's results out, and nothing that describes one site.

p2pfl export --from DIR --to OUT [--include model --include metrics]

Safe outputs: what leaves a run is the aggregated model and aggregated
metrics, never an artefact of one site. The rule, by where ``--from`` points:

- A simulation directory (``p2pfl simulate --out``): the ``model-<run>.pt``
  files are the average of every node's model, so they are copied.
  ``metrics.json`` is rewritten keeping only fields named in an allow-list of
  federation-wide aggregates (``_AGGREGATE``): per round the mean accuracy and
  loss over nodes, consensus distance, bytes per node, wall time; the pooled
  baseline; counts of stragglers and abandoned rounds; the privacy mechanism and the
  largest epsilon spent (not each node's); the run's energy totals. Everything else is
  dropped, and listed in ``export.json``: ``sites`` (per-site rows),
  ``baselines.local`` (one accuracy per site), ``acc_min``/``acc_max`` (each is
  one site's value), ``secure.dropout_tolerance`` (per node), ``extra``
  (engine internals, such as the work directory of every node). A field that
  is not on the list is dropped, so a new per-site field cannot slip out.
- A node directory (``p2pfl node init``; it has ``checkpoints/``): its model
  after the last round of the plan is the gossip average of the federation
  (what mixing gives, not what the node trained alone), so it is written as a
  ``state_dict`` (``model-final.pt``); an unfinished run is refused, since an
  early round's model is a small neighbourhood's average. Its metrics are all
  per-site (accuracy on its own test split, its neighbours, its timings), so
  none are exported.

Asking for anything else (``--include`` of per-site metrics, a node's local
model, its data, checkpoints, audit log, status, ledger or crate), or pointing
``--from`` at such a file, is refused with exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import P2PFLError

EXPORTABLE = ("model", "metrics")
PER_SITE: dict[str, str] = {
    "sites": "per-site metrics (one row per site)",
    "site-metrics": "per-site metrics (one row per site)",
    "local-model": "a node's own model",
    "local-models": "the nodes' own models",
    "data": "a site's data",
    "checkpoints": "a node's checkpoints (its model and metrics per round)",
    "audit": "a node's audit log",
    "status": "a node's status file",
    "ledger": "the ledger (members' addresses and per-node records)",
    "crate": "a node's run crate (its own metrics and logs)",
}

# Aggregate fields of metrics.json: a key maps to True (keep as is) or to the allow-list
# of its value (a dict, or each item of a list).
_ROUND = {
    k: True for k in ("round", "acc_mean", "loss_mean", "consensus", "bytes_per_node", "wall")
}
_RUN: dict[str, Any] = {
    **{k: True for k in ("label", "engine", "topology", "mode", "nodes", "parameters")},
    "rounds": _ROUND,
    "final": {"acc_mean": True, "consensus": True},
    "bytes_per_node": True,
    "stragglers": True,
    "wall": True,
    "baselines": {"pooled": True, "minibatch": True},
    "secure": {"abandoned": True, "stragglers": True},
    "metrics": True,
    "privacy": {
        k: True
        for k in (
            "mechanism",
            "target_epsilon",
            "delta",
            "accountant",
            "clip",
            "epsilon_max",
            "private_metrics",
            "share_of_full_noise",
        )
    },
    "energy": {
        k: True
        for k in ("network_j", "compute_j", "total_j", "total_kwh", "bytes", "compute_seconds")
    },
}
_AGGREGATE: dict[str, Any] = {"scenario": True, "engine": True, "seed": True, "runs": _RUN}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export", help="copy out the aggregated model and metrics (never per-site artefacts)"
    )
    parser.add_argument("--from", dest="source", required=True, metavar="DIR",
                        help="a simulation output directory or a node directory")  # fmt: skip
    parser.add_argument("--to", dest="out", required=True, metavar="OUT", help="directory to write")
    parser.add_argument(
        "--include",
        action="append",
        metavar="WHAT",
        help=f"what to export: {', '.join(EXPORTABLE)} (repeatable; default both)",
    )
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    wanted = check_include(args.include or list(EXPORTABLE))
    source, out = Path(args.source), Path(args.out)
    _check_source(source)
    files = _export_simulation(source, wanted) if _is_simulation(source) else None
    if files is None:
        files = _export_node(source, wanted)
    _write_all(out, files)
    for name in sorted(files):
        print(f"wrote {out / name}")
    return 0


def check_include(items: list[str]) -> set[str]:
    """The artefacts asked for; ``P2PFLError`` naming any per-site or unknown one."""
    wanted = set()
    for item in (part.strip() for entry in items for part in entry.split(",")):
        if item in PER_SITE:
            raise P2PFLError(
                f"refusing to export {item!r}: {PER_SITE[item]} is a per-site artefact; "
                f"only the aggregated {' and '.join(EXPORTABLE)} leave a run (safe outputs)"
            )
        if item not in EXPORTABLE:
            raise P2PFLError(f"cannot export {item!r}: exportable are {', '.join(EXPORTABLE)}")
        wanted.add(item)
    return wanted


def _check_source(source: Path) -> None:
    if not source.exists():
        raise P2PFLError(f"{source}: no such run or node directory")
    if source.is_file() or source.name in ("checkpoints", "crate"):
        raise P2PFLError(
            f"refusing to export {source}: point --from at a simulation output or node "
            "directory; single files, checkpoints and crates are per-site artefacts"
        )


def _is_simulation(source: Path) -> bool:
    return (source / "metrics.json").is_file() and not (source / "checkpoints").is_dir()


# -- simulations ---------------------------------------------------------------------------


def _export_simulation(source: Path, wanted: set[str]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    stripped: list[str] = []
    if "metrics" in wanted:
        try:
            report = json.loads((source / "metrics.json").read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise P2PFLError(f"{source / 'metrics.json'}: not a metrics file: {exc}") from None
        kept = aggregate_metrics(report, stripped)
        files["metrics.json"] = (json.dumps(kept, indent=2) + "\n").encode()
    if "model" in wanted:
        models = sorted(source.glob("model-*.pt"))
        if not models:
            raise P2PFLError(f"{source}: no averaged model (model-*.pt) to export")
        files.update({path.name: path.read_bytes() for path in models})
    files["export.json"] = _manifest("simulation", source, sorted(files), stripped)
    return files


def aggregate_metrics(report: Any, stripped: list[str] | None = None) -> Any:
    """``report`` with the allow-listed aggregate fields only; dropped paths go to ``stripped``."""
    if not isinstance(report, dict) or not isinstance(report.get("runs"), list):
        raise P2PFLError("metrics.json is not what `p2pfl simulate` writes (no 'runs')")
    return _keep(report, _AGGREGATE, "", set() if stripped is None else stripped)


def _keep(value: Any, allowed: Any, path: str, stripped: Any) -> Any:
    if allowed is True:
        return value
    if isinstance(value, list):
        return [_keep(item, allowed, f"{path}[]", stripped) for item in value]
    if not isinstance(value, dict):
        return value
    kept = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key in allowed:
            kept[key] = _keep(item, allowed[key], where, stripped)
        elif where not in stripped:
            stripped.append(where)
    return kept


# -- node directories ----------------------------------------------------------------------


def _export_node(source: Path, wanted: set[str]) -> dict[str, bytes]:
    if not (source / "checkpoints").is_dir():
        raise P2PFLError(
            f"{source}: neither a simulation output (metrics.json, model-*.pt) "
            "nor a node directory (checkpoints/)"
        )
    if "model" not in wanted:
        raise P2PFLError(
            f"{source}: a node's metrics are all per-site (its own test split, neighbours, "
            "timings); from a node directory only the final aggregated model is exported"
        )
    model, info = _final_model(source)
    files = {"model-final.pt": model}
    skipped = ["metrics (per-site)"] if "metrics" in wanted else []
    files["export.json"] = _manifest("node", source, sorted(files), skipped, info)
    return files


def _final_model(source: Path) -> tuple[bytes, dict[str, Any]]:
    """The newest checkpoint's model as a ``state_dict``, if it is of the plan's last round."""
    import io

    import torch

    from p2pfl.ledger_file import load_ledger
    from p2pfl.models import build_model, load_flat_parameters
    from p2pfl.node.checkpoint import latest_checkpoint
    from p2pfl.spec import plan_from_table

    ledger = load_ledger(_ledger_file(source))
    plan, plan_hash = plan_from_table(ledger.plan()), ledger.plan_hash()
    ckpt = latest_checkpoint(source / "checkpoints")
    if ckpt is None:
        raise P2PFLError(f"{source}: no checkpoint: the node has not completed a round")
    if ckpt.meta.get("plan_hash") != plan_hash:
        raise P2PFLError(f"{ckpt.path}: the checkpoint is of another plan than the ledger's")
    if ckpt.round != plan.training.rounds:  # rounds are numbered 1..R
        raise P2PFLError(
            f"{source}: the newest checkpoint is of round {ckpt.round} of "
            f"{plan.training.rounds}; an unfinished run's model is not the federation's result"
        )
    hidden = tuple(plan.model.hidden) if plan.model.hidden is not None else None
    shape = tuple(plan.data.input_shape)
    model = build_model(
        plan.model.name, shape, plan.data.num_classes, hidden=hidden, kwargs=plan.model.kwargs
    )
    load_flat_parameters(model, torch.from_numpy(ckpt.model.copy()))
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    info = {"federation": ledger.federation_id, "plan_hash": plan_hash.hex() if plan_hash else None,
            "rounds": plan.training.rounds, "round": ckpt.round}  # fmt: skip
    return buffer.getvalue(), info


def _ledger_file(source: Path) -> Path:
    """The ledger a node directory's ``node.toml`` names (``DIR/ledger`` without one)."""
    config_file = source / "node.toml"
    if config_file.is_file():
        from p2pfl.node.config import load_config

        return load_config(config_file).ledger_file
    return source / "ledger"


# -- writing -------------------------------------------------------------------------------


def _manifest(
    kind: str, source: Path, files: list[str], stripped: list[str], info: Any = None
) -> bytes:
    document = {
        "source": {"kind": kind, "path": str(source.resolve()), **(info or {})},
        "files": [name for name in files if name != "export.json"],
        "stripped": stripped,
        "rule": "aggregated model and aggregated metrics only (p2pfl.cli.export)",
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def _write_all(out: Path, files: dict[str, bytes]) -> None:
    """Every file or none: refuse to overwrite, clean up what was written on failure."""
    clashes = [name for name in files if (out / name).exists()]
    if clashes:
        raise P2PFLError(f"{out}: {', '.join(sorted(clashes))} already there; nothing written")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for name, data in files.items():
            atomic_write_bytes(out / name, data, overwrite=False)
            written.append(out / name)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise P2PFLError(f"{out}: cannot write the export: {exc}") from None


__all__ = ["EXPORTABLE", "PER_SITE", "aggregate_metrics", "check_include", "register"]

"""``check_crate``: load a crate with the ``rocrate`` library and say what is wrong with it."""

from __future__ import annotations

import datetime
import json
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from rocrate.rocrate import ROCrate  # type: ignore[import-untyped]

from p2pfl.runcrate import (
    COMPLETED,
    FAILED,
    LEDGER_HASH_ID,
    PLAN_FILE,
    PLAN_HASH_ID,
    PROFILE,
)


def check_crate(path: str | os.PathLike[str]) -> list[str]:
    """Load a crate with the ``rocrate`` library and list its problems (empty when fine).

    ``path`` is the crate directory or its metadata file. Checked: the Process
    Run Crate profile, a ``CreateAction`` mentioned by the root with its start
    and end times, status, agent, an instrument with its software versions,
    objects and results that exist (files in the crate, of their recorded
    size); for a node crate, the ledger hash, the plan hash of ``plan.json``
    and the approvals.
    """
    where = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            crate = ROCrate(where)
        except Exception as exc:  # the library raises several unrelated types
            return [f"{where}: cannot be loaded as an RO-Crate: {exc}"]
    problems = [f"loading warned: {w.message}" for w in caught]
    base = Path(crate.source)
    base = base if base.is_dir() else base.parent
    problems += _check_profile(crate)
    problems += _check_files(crate, base)
    actions = crate.get_by_type("CreateAction")
    if not actions:
        problems.append("no CreateAction: the crate does not say which run made it")
    for action in actions:
        problems += _check_action(crate, action)
    if crate.get(LEDGER_HASH_ID) is not None:
        problems += _check_node(crate, base)
    return problems


def _ids(entity: Any, key: str) -> list[str]:
    value = entity.properties().get(key, [])
    values = value if isinstance(value, list) else [value]
    return [v["@id"] if isinstance(v, dict) and "@id" in v else str(v) for v in values]


def _types(entity: Any) -> set[str]:
    kind = entity.properties().get("@type", [])
    return set(kind if isinstance(kind, list) else [kind])


def _check_profile(crate: ROCrate) -> list[str]:
    if PROFILE not in _ids(crate.root_dataset, "conformsTo"):
        return [f"the root dataset does not conform to {PROFILE}"]
    if crate.get(PROFILE) is None:
        return [f"no contextual entity for the profile {PROFILE}"]
    return []


def _check_files(crate: ROCrate, base: Path) -> list[str]:
    problems = []
    for entity in crate.data_entities:
        if "File" not in _types(entity):
            continue
        path = base / unquote(entity.id)
        if not path.is_file():
            problems.append(f"{entity.id}: listed in the crate but not there")
            continue
        size = entity.properties().get("contentSize")
        if size is not None and str(path.stat().st_size) != str(size):
            problems.append(f"{entity.id}: {path.stat().st_size} bytes, the crate says {size}")
    return problems


def _check_action(crate: ROCrate, action: Any) -> list[str]:
    name = action.id
    problems = []
    if name not in _ids(crate.root_dataset, "mentions"):
        problems.append(f"{name}: not in the root dataset's mentions")
    problems += _check_times(action)
    status = _ids(action, "actionStatus")
    if status not in ([COMPLETED], [FAILED]):
        problems.append(f"{name}: actionStatus is {status}, not completed or failed")
    if not any(crate.get(i) is not None for i in _ids(action, "agent")):
        problems.append(f"{name}: no agent")
    for key in ("object", "result"):
        refs = _ids(action, key)
        if not refs:
            problems.append(f"{name}: no {key}")
        problems += [f"{name}: {key} {i} is not in the crate" for i in refs if crate.get(i) is None]
    instruments = [crate.get(i) for i in _ids(action, "instrument")]
    if len(instruments) != 1 or instruments[0] is None:
        return [*problems, f"{name}: needs exactly one instrument in the crate"]
    return problems + _check_software(crate, instruments[0])


def _check_times(action: Any) -> list[str]:
    times = []
    for key in ("startTime", "endTime"):
        try:
            moment = datetime.datetime.fromisoformat(action.properties()[key])
        except (KeyError, TypeError, ValueError):
            return [f"{action.id}: no ISO 8601 {key}"]
        if moment.tzinfo is None:
            return [f"{action.id}: {key} has no time zone"]
        times.append(moment)
    return [] if times[0] <= times[1] else [f"{action.id}: ends before it starts"]


def _check_software(crate: ROCrate, app: Any) -> list[str]:
    problems = []
    if "SoftwareApplication" not in _types(app):
        problems.append(f"instrument {app.id} is not a SoftwareApplication")
    if not app.properties().get("softwareVersion"):
        problems.append(f"instrument {app.id} has no softwareVersion")
    names = set()
    for ident in _ids(app, "softwareRequirements"):
        dep = crate.get(ident)
        if dep is None or not dep.properties().get("softwareVersion"):
            problems.append(f"software {ident}: missing, or without softwareVersion")
        else:
            names.add(dep.properties().get("name"))
    missing = {"Python", "torch", "numpy", "pycrdt"} - names
    if missing:
        problems.append(f"instrument {app.id}: no version recorded for {sorted(missing)}")
    return problems


def _check_node(crate: ROCrate, base: Path) -> list[str]:
    from protocols.records import plan_hash

    problems = []
    ledger_hash = str(crate.get(LEDGER_HASH_ID).properties().get("value", ""))
    if len(ledger_hash) != 64 or any(c not in "0123456789abcdef" for c in ledger_hash):
        problems.append(f"{LEDGER_HASH_ID}: {ledger_hash!r} is not a SHA-256 hex digest")
    digest = crate.get(PLAN_HASH_ID)
    plan_path = base / PLAN_FILE
    if digest is None or not plan_path.is_file():
        return [*problems, "a node crate needs plan.json and its plan hash"]
    try:
        computed = plan_hash(json.loads(plan_path.read_text())).hex()
    except (ValueError, TypeError) as exc:
        return [*problems, f"{PLAN_FILE}: cannot be read back: {exc}"]
    if computed != digest.properties().get("value"):
        problems.append(f"{PLAN_FILE}: its hash {computed[:16]}... is not the recorded plan hash")
    approvals = crate.get_by_type("EndorseAction")
    if not approvals:
        problems.append("a node crate records no approval of the plan")
    for approval in approvals:
        refs = _ids(approval, "agent") + _ids(approval, "object")
        if len(refs) != 2 or any(crate.get(i) is None for i in refs):
            problems.append(f"{approval.id}: an approval needs an agent and an object in the crate")
    return problems

"""The parts every p2pfl crate shares: profile, software versions, files, settings, the action.

A crate here is an RO-Crate 1.1 that conforms to the Process Run Crate
profile 0.5: its root dataset ``conformsTo`` the profile, and one
``CreateAction`` (in the root's ``mentions``) has p2pfl as ``instrument``
(with its dependencies and their versions as ``softwareRequirements``),
inputs as ``object``, outputs as ``result``, an ``agent``, start and end
times and an ``actionStatus``. Contexts are named in the metadata, never
fetched; files are only ever local.

Below the node and the simulators, since both write crates: ``p2pfl.node.crate``
packages a node's run, ``p2pfl.provenance`` a simulation's and checks either.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfl.errors import ProvenanceError

if TYPE_CHECKING:
    from rocrate.model import SoftwareApplication  # type: ignore[import-untyped]
    from rocrate.rocrate import ROCrate  # type: ignore[import-untyped]

PROFILE = "https://w3id.org/ro/wfrun/process/0.5"
WFRUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"
CRATE_VERSION = "1.1"
NODE_CRATE_DIR = "crate"
METADATA_FILE = "ro-crate-metadata.json"
"""A crate's metadata file (``rocrate``'s ``BASENAME``), named here so that a run can clear
it without loading ``rocrate`` (70 ms) before its report."""
COMPLETED = "http://schema.org/CompletedActionStatus"
FAILED = "http://schema.org/FailedActionStatus"
P2PFL_ID = "#p2pfl"
LEDGER_HASH_ID = "#ledger-sha256"
PLAN_HASH_ID = "#plan-hash"
PLAN_FILE = "plan.json"
DEPENDENCIES = (
    "torch",
    "numpy",
    "scipy",
    "pycrdt",
    "websockets",
    "pynacl",
    "msgpack",
    "networkx",
    "cryptography",
    "rocrate",
)
_FORMATS = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".toml": "application/toml",
    ".png": "image/png",
    ".csv": "text/csv",
}


def now() -> datetime.datetime:
    """The current time, timezone-aware (what ``startTime`` and ``endTime`` take)."""
    return datetime.datetime.now(datetime.UTC)


def clear_crate(out_dir: str | os.PathLike[str]) -> None:
    """Remove a previous run's metadata from ``out_dir`` before a new run writes there.

    It would describe files the new run is about to replace; if that run
    fails, the directory is left with no crate rather than a wrong one.
    """
    Path(out_dir, METADATA_FILE).unlink(missing_ok=True)


def iso(moment: datetime.datetime) -> str:
    """ISO 8601 with its offset; a naive time would be read in an unknown zone, so it is refused."""
    if moment.tzinfo is None:
        raise ValueError("provenance times must be timezone-aware")
    return moment.isoformat(timespec="milliseconds")


def software_versions() -> dict[str, str]:
    """Versions of Python, p2pfl and its key dependencies installed here (missing ones left out)."""
    versions = {"python": platform.python_version()}
    for name in ("p2pfl", *DEPENDENCIES):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def new_crate(name: str, description: str, ended: datetime.datetime) -> ROCrate:
    """An empty crate that declares the Process Run Crate profile (and its JSON-LD terms)."""
    from rocrate.model import ContextEntity
    from rocrate.rocrate import ROCrate

    crate = ROCrate(version=CRATE_VERSION)
    crate.metadata.extra_contexts.append(WFRUN_CONTEXT)
    crate.name = name
    crate.description = description
    crate.datePublished = iso(ended)
    profile = crate.add(
        ContextEntity(
            crate,
            PROFILE,
            properties={"@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"},
        )
    )
    crate.root_dataset["conformsTo"] = profile
    return crate


def add_software(crate: ROCrate) -> SoftwareApplication:
    """p2pfl as the instrument, its dependencies (with versions) as its requirements."""
    from rocrate.model import SoftwareApplication

    versions = software_versions()
    requirements = []
    for name, version in versions.items():
        if name == "p2pfl":
            continue
        url = "https://www.python.org/" if name == "python" else f"https://pypi.org/project/{name}/"
        label = "Python" if name == "python" else name
        app = SoftwareApplication(
            crate, url, properties={"name": label, "url": url, "softwareVersion": version}
        )
        requirements.append(crate.add(app))
    p2pfl = SoftwareApplication(
        crate,
        P2PFL_ID,
        properties={
            "name": "p2pfl",
            "description": "peer-to-peer decentralized learning (gossip, secure aggregation)",
            "softwareVersion": versions.get("p2pfl", "unknown"),
        },
    )
    p2pfl["softwareRequirements"] = requirements
    return crate.add(p2pfl)


def add_file(
    crate: ROCrate, source: Path, dest: str, description: str, alternate: str | None = None
) -> Any:
    """List ``source`` as ``dest`` in the crate, with its size (so a changed file shows).

    ``alternate`` keeps the name the run knew the file by, when the crate renames it.
    ``ProvenanceError`` if ``source`` is missing: a crate must not list what is not there.
    """
    if not source.is_file():
        raise ProvenanceError(f"{source}: the run should have written it, but it is not there")
    props: dict[str, Any] = {
        "name": Path(dest).name,
        "description": description,
        "contentSize": str(source.stat().st_size),
    }
    if source.suffix in _FORMATS:
        props["encodingFormat"] = _FORMATS[source.suffix]
    if alternate is not None:
        props["alternateName"] = alternate
    return crate.add_file(source, dest, properties=props)


def add_entity(crate: ROCrate, ident: str, properties: dict[str, Any]) -> Any:
    """A contextual entity (``rocrate``'s ``ContextEntity``) added to ``crate``."""
    from rocrate.model import ContextEntity

    return crate.add(ContextEntity(crate, ident, properties=properties))


def add_value(crate: ROCrate, ident: str, name: str, value: Any, description: str = "") -> Any:
    """A setting or a number that is not a file, as a ``PropertyValue``."""
    if not isinstance(value, str | int | float | bool):
        value = json.dumps(value, sort_keys=True, default=str)
    props: dict[str, Any] = {"@type": "PropertyValue", "name": name, "value": value}
    if description:
        props["description"] = description
    return add_entity(crate, ident, props)


def add_action(
    crate: ROCrate,
    *,
    name: str,
    agent: Any,
    objects: list[Any],
    results: list[Any],
    times: tuple[datetime.datetime, datetime.datetime],
    error: str | None,
) -> Any:
    """The run itself: a ``CreateAction``, completed unless ``error`` says why it failed."""
    instrument = add_software(crate)
    props: dict[str, Any] = {
        "@type": "CreateAction",
        "name": name,
        "startTime": iso(times[0]),
        "endTime": iso(times[1]),
        "actionStatus": {"@id": FAILED if error else COMPLETED},
    }
    if error:
        props["error"] = error
    action = crate.add_action(
        instrument, f"#run-{uuid.uuid4()}", object=objects, result=results, properties=props
    )
    action["agent"] = agent
    crate.root_dataset.append_to("mentions", action)
    return action


def metadata_bytes(crate: ROCrate) -> bytes:
    """``ro-crate-metadata.json`` as the library writes it, for the caller to place atomically."""
    return b"".join(chunk for _, chunk in crate.metadata.stream())

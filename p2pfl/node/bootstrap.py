"""A whole federation on one machine: keys, TLS pairs, ledger, configs (trials, tests, engines).

``local_federation(root, sites, plan)`` does what the members of a real
federation do by hand with ``p2pfl keys init``, ``tls init``, ``federation
create / invite / join / approve``: every site gets a directory with its key
(mode 0600), optionally a self-signed TLS pair, a node config, and a copy of
one ledger in which the first site founded the federation, published the
plan and admitted the others at their addresses, and every member approved
the plan. Real federations never share a machine like this: here one process
holds every key, which is only acceptable for a trial.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from p2pfl.identity import Identity, create_identity, save_identity
from p2pfl.ledger_file import save_ledger
from p2pfl.transport.tls import make_self_signed
from protocols.ledger import Ledger


@dataclass(frozen=True)
class Site:
    """One site to set up: a name (directory), where it listens, its data entrypoint."""

    name: str
    listen: str
    entrypoint: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    address: str = ""  # what others dial (default: ``listen``)
    limits: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # more config tables
    reachable: bool = True  # False: no listener, recorded without an address (it dials out)


@dataclass(frozen=True)
class SiteFiles:
    name: str
    directory: Path
    config: Path
    node_id: str
    address: str


def local_federation(
    root: str | os.PathLike[str],
    sites: Sequence[Site],
    plan: Mapping[str, Any],
    *,
    tls: bool = True,
    name: str = "trial",
    identities: Sequence[Identity] | None = None,
) -> list[SiteFiles]:
    """Set up ``sites`` under ``root`` (module docstring); returns their files, in site order."""
    root = Path(root)
    ids = list(identities) if identities is not None else [create_identity() for _ in sites]
    if len(ids) != len(sites):
        raise ValueError("one identity per site")
    founder = ids[0]
    addresses = [(site.address or site.listen) if site.reachable else "" for site in sites]
    ledger = Ledger.found(
        founder.signing_key,
        name=name,
        nonce=os.urandom(16),
        address=addresses[0],
        institution=sites[0].name,
    )
    ledger.set_plan(founder.signing_key, dict(plan), clock=ledger.next_clock())
    for identity, site, address in zip(ids[1:], sites[1:], addresses[1:], strict=True):
        ledger.admit(
            founder.signing_key,
            bytes(identity.verify_key),
            clock=ledger.next_clock(),
            address=address,
            institution=site.name,
        )
    plan_hash = ledger.plan_hash()
    assert plan_hash is not None
    for identity in ids:
        ledger.approve(identity.signing_key, plan_hash, clock=ledger.next_clock())
    return [
        site_files(root, site, identity, ledger, address=address, tls=tls)
        for identity, site, address in zip(ids, sites, addresses, strict=True)
    ]


def site_files(
    root: Path,
    site: Site,
    identity: Identity,
    ledger: Ledger,
    *,
    address: str | None = None,
    tls: bool = True,
) -> SiteFiles:
    """One site's directory under ``root``: its key, a copy of ``ledger``, its node config.

    ``local_federation`` makes every site so; a trial makes a newcomer so, with the
    ledger it was invited into.
    """
    directory = root / site.name
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # `node run` wants it private
    save_identity(identity, directory / "node.key")
    save_ledger(ledger, directory / "ledger", overwrite=False)
    table: dict[str, Any] = {
        "node": {
            "key": "node.key",
            "ledger": "ledger",
            "data_dir": ".",
            "listen": site.listen,
            "name": site.name,
            **({} if site.reachable else {"reachable": False}),
        },
        "data": {
            "entrypoint": site.entrypoint,
            "args": list(site.args),
            "kwargs": dict(site.kwargs),
        },
    }
    if tls:
        make_self_signed(directory)
        table["tls"] = {"cert": "tls-cert.pem", "key": "tls-key.pem"}
    if site.limits:
        table["limits"] = dict(site.limits)
    table.update({name: dict(section) for name, section in site.sections.items()})
    config = directory / "node.toml"
    config.write_text(tomli_w.dumps(table))
    if address is None:  # what its member record says: nothing for an unreachable site
        address = (site.address or site.listen) if site.reachable else ""
    return SiteFiles(site.name, directory, config, identity.node_id, address)

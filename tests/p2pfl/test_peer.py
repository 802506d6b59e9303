"""``p2pfl.Peer``: a three-hospital federation in one process over the in-memory transport.

No sockets and no sleeps: every wait is on the peers' own progress, bounded by
``asyncio.timeout``. Training is deterministic (batches seeded by seed, node,
round), so results can be compared exactly: on the complete graph of three
nodes one D-PSGD round averages exactly, and a run stopped and resumed from
its checkpoints ends where an uninterrupted run ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import torch

import p2pfl
from p2pfl.identity import Identity, create_identity
from p2pfl.models import flat_parameters
from p2pfl.node import Finished, PlanError, Refused, RoundCompleted, TrainingStarted
from p2pfl.node.audit import read_entries, verify
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.transport import AuthenticationFailed, Authenticator, MemoryNetwork

SITES = ("Cleveland", "Hungary", "Switzerland")
TIMEOUT = 120


def plan(rounds: int = 3, *, secure: bool = False) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 60.0},
        "secure": {
            "enabled": secure,
            "share_timeout": 60.0,
            "masked_timeout": 60.0,
            # Three sites: two neighbours each, threshold 2, so no dropout is tolerated.
            "allow_no_dropout": secure,
        },
    }


def federation(
    root: Path, rounds: int = 3, *, secure: bool = False, identities: list[Identity] | None = None
) -> list[SiteFiles]:
    sites = [
        Site(s.lower(), f"memory://{s.lower()}", "p2pfl.node.examples:heart_site", [s])
        for s in SITES
    ]
    return local_federation(
        root, sites, plan(rounds, secure=secure), tls=False, identities=identities
    )


async def run_all(
    files: list[SiteFiles], rounds: int | None = None
) -> tuple[list[torch.Tensor], list[list[Any]]]:
    """Run every site's peer to ``rounds``; their final parameters and their events."""
    network = MemoryNetwork()
    params: list[torch.Tensor] = [torch.empty(0)] * len(files)
    events: list[list[Any]] = [[] for _ in files]

    async def one(i: int) -> None:
        async with p2pfl.Peer(load_config(files[i].config), network=network) as peer:

            async def watch() -> None:
                async for event in peer.events():
                    events[i].append(event)

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(watch())
                await peer.run(rounds)
            params[i] = flat_parameters(peer.model())

    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(one(i) for i in range(len(files))))
    return params, events


def test_three_peers_train_in_one_process_and_report_each_round(tmp_path: Path) -> None:
    files = federation(tmp_path, rounds=3)
    params, events = asyncio.run(run_all(files))

    ids = [f.node_id for f in files]
    for i, site_events in enumerate(events):
        started = [e for e in site_events if isinstance(e, TrainingStarted)]
        rounds = [e for e in site_events if isinstance(e, RoundCompleted)]
        assert len(started) == 1 and started[0].roster == tuple(sorted(ids))
        assert set(started[0].neighbours) == set(ids) - {ids[i]}
        assert [e.round for e in rounds] == [1, 2, 3]
        assert all(set(e.arrived) == set(ids) - {ids[i]} and not e.stragglers for e in rounds)
        assert all(e.accuracy is not None and 0.0 <= e.accuracy <= 1.0 for e in rounds)
        assert isinstance(site_events[-1], Finished) and site_events[-1].rounds == 3
    # Complete graph of three, Metropolis weights 1/3: every round averages exactly.
    for other in params[1:]:
        torch.testing.assert_close(other, params[0], rtol=0, atol=1e-6)
    for f in files:
        audit = f.directory / "audit.jsonl"
        assert verify(audit).ok
        kinds = [e["event"] for e in read_entries(audit)]
        assert kinds[0] == "start" and kinds.count("round") == 3 and kinds[-1] == "stop"
        assert sorted(p.name for p in (f.directory / "checkpoints").iterdir())[-1] == (
            "round-000003.ckpt"
        )


def test_a_stopped_federation_resumes_where_an_uninterrupted_one_ends(tmp_path: Path) -> None:
    identities = [create_identity() for _ in SITES]
    straight = federation(tmp_path / "straight", rounds=4, identities=identities)
    resumed = federation(tmp_path / "resumed", rounds=4, identities=identities)

    expected, _ = asyncio.run(run_all(straight))
    first, _ = asyncio.run(run_all(resumed, rounds=2))
    final, events = asyncio.run(run_all(resumed))

    assert not torch.equal(first[0], final[0])
    for got, want in zip(final, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for site_events in events:
        started = next(e for e in site_events if isinstance(e, TrainingStarted))
        assert started.resumed and started.round == 3
        assert [e.round for e in site_events if isinstance(e, RoundCompleted)] == [3, 4]
    entries = read_entries(resumed[0].directory / "audit.jsonl")
    assert [e["round"] for e in entries if e["event"] == "resumed"] == [2]


def test_secure_peers_end_where_plain_ones_do_up_to_fixed_point(tmp_path: Path) -> None:
    identities = [create_identity() for _ in SITES]
    plain, _ = asyncio.run(run_all(federation(tmp_path / "plain", 3, identities=identities)))
    secure, events = asyncio.run(
        run_all(federation(tmp_path / "secure", 3, secure=True, identities=identities))
    )
    for got, want in zip(secure, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    assert all(not e.stragglers for site in events for e in site if isinstance(e, RoundCompleted))


def test_a_stranger_is_refused_and_audited(tmp_path: Path) -> None:
    files = federation(tmp_path, rounds=1)

    async def scenario() -> tuple[AuthenticationFailed, list[Any]]:
        network = MemoryNetwork()
        stranger_key = nacl.signing.SigningKey.generate()
        member = files[0]
        async with p2pfl.Peer(load_config(member.config), network=network) as peer:
            events = peer.events()
            ledger = peer.node.ledger
            auth = Authenticator(stranger_key, ledger.verify_key)
            async with network.transport(auth) as transport:
                with pytest.raises(AuthenticationFailed) as info:
                    await transport.connect(member.address, expected_peer=member.node_id)
                codes = []
                for _ in range(8):  # it insists: the member stops listening to it
                    with pytest.raises(AuthenticationFailed) as again:
                        await transport.connect(member.address, expected_peer=member.node_id)
                    codes.append(again.value.code)
            async with asyncio.timeout(10):
                refused = [await anext(events) for _ in range(9)]
            assert codes[-1] == "rate-limited" and "not-member" in codes
            return info.value, refused

    error, events = asyncio.run(scenario())
    assert error.code == "not-member" and error.by_peer
    assert all(isinstance(e, Refused) for e in events)
    assert events[0].code == "not-member" and events[-1].code == "rate-limited"
    refusals = [
        e for e in read_entries(files[0].directory / "audit.jsonl") if e["event"] == "auth-refused"
    ]
    assert len(refusals) == 9 and all(e["inbound"] is True for e in refusals)
    assert {e["code"] for e in refusals} == {"not-member", "rate-limited"}


def test_a_peer_refuses_to_train_on_a_plan_it_did_not_approve(tmp_path: Path) -> None:
    files = federation(tmp_path, rounds=1)
    # Publish a new plan: the old approvals do not cover it.
    from p2pfl.identity import load_identity
    from p2pfl.ledger_file import load_ledger, save_ledger

    founder = load_identity(files[0].config.parent / "node.key")
    for f in files:
        ledger = load_ledger(f.directory / "ledger")
        ledger.set_plan(founder.signing_key, plan(rounds=2), clock=ledger.next_clock())
        save_ledger(ledger, f.directory / "ledger")

    async def attempt() -> None:
        async with p2pfl.Peer(load_config(files[1].config), network=MemoryNetwork()) as peer:
            await peer.run()

    with pytest.raises(PlanError, match="has not approved"):
        asyncio.run(attempt())

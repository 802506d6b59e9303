"""A member that is authenticated but hostile cannot stop the honest members' rounds.

Four heart-disease sites in one process over the in-memory transport; the
fourth, mallory, is a member of the ledger running a real ``Node`` (real
handshake, real ledger sync), through whose links the test also sends frames
made with the real encoders (``protocols.wire``) and bad contents: undecodable
bytes, a dtype the plan never uses, the wrong length, NaN and infinity, a
round far ahead, another member's id as sender, replays, the wrong channel and
a flood. The honest nodes drop each, audit it under mallory's id (one record
per kind per window, not per frame), count it, and complete their rounds; with
a low ``peer_faults`` mallory is disconnected, refused while banned, and let
back in when the ban lifts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl.node.audit import read_entries
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.channels import Channel, tag
from p2pfl.node.config import load_config
from p2pfl.node.examples import HEART_SITES
from p2pfl.node.node import Node
from p2pfl.transport import MemoryNetwork
from protocols.wire import GossipMessage, Payload, dense, encode

TIMEOUT = 60
FLOOD = 300
LIMIT = 1 << 20  # the honest nodes' max_message_size (their model is far smaller)


def plan(rounds: int, round_timeout: float) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": round_timeout},
        "secure": {"enabled": False},
    }


def federation(
    root: Path, limits: dict[str, Any], round_timeout: float, mallory: dict[str, Any] | None = None
) -> list[SiteFiles]:
    """Four sites; the last one, mallory, with ``mallory`` over its limits."""
    sites = [
        Site(
            f"s{i}",
            f"memory://s{i}",
            "p2pfl.node.examples:heart_site",
            [name],
            limits={
                "backoff_initial": 0.1,
                "backoff_max": 0.3,
                **limits,
                **((mallory or {}) if i == 3 else {}),
            },
        )
        for i, name in enumerate(HEART_SITES)
    ]
    return local_federation(root, sites, plan(2, round_timeout), tls=False)


@contextlib.asynccontextmanager
async def started(files: list[SiteFiles]) -> AsyncIterator[list[Node]]:
    network = MemoryNetwork()
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(Node(load_config(f.config), network=network))
            for f in files
        ]
        yield nodes


async def until(predicate: Any, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def gossip(sender: str, round_: int, values: np.ndarray) -> bytes:
    return encode(GossipMessage(sender, round_, dense(values)), tag(Channel.GOSSIP))


def bad_frames(mallory: str, honest: str, dim: int) -> Iterator[tuple[str, bytes]]:
    """(kind of fault, frame): each one a member must not be able to slip in."""
    ones = np.ones(dim, np.float32)
    yield "undecodable", tag(Channel.GOSSIP) + b"P2G\x01garbage"
    u1 = Payload(dense(ones).encoding, dim, np.ones(dim, np.uint8))  # encodes; never decodes
    yield "dtype", encode(GossipMessage(mallory, 0, u1), tag(Channel.GOSSIP))
    yield "length", gossip(mallory, 0, np.ones(dim + 3, np.float32))
    yield "nan", gossip(mallory, 0, np.full(dim, np.nan, np.float32))
    yield "inf", gossip(mallory, 0, np.full(dim, np.inf, np.float32))
    yield "far ahead", gossip(mallory, 1000, ones)
    yield "another member's id", gossip(honest, 0, ones)
    yield "wrong channel", tag(Channel.SECAGG) + gossip(mallory, 0, ones)[1:]
    yield "unknown channel", b"\x09" + gossip(mallory, 0, ones)[1:]
    replay = gossip(mallory, 1, ones)
    yield "first copy (accepted)", replay
    yield "replay (accepted: dropped, as a reconnection's replay is)", replay


def faults_of(node: Node, peer: str) -> dict[str, Any]:
    return node.status()["peer_faults"].get(peer, {"faults": 0, "banned": False})


def test_a_hostile_members_frames_are_dropped_audited_once_per_kind_and_rounds_complete(
    tmp_path: Path,
) -> None:
    limits = {"peer_faults": 100_000, "linger_timeout": 5.0, "max_message_size": LIMIT}
    files = federation(tmp_path, limits, 20.0, {"max_message_size": 4 * LIMIT})
    mallory_id = files[3].node_id
    honest = range(3)

    async def scenario() -> tuple[list[int], list[dict[str, Any]]]:
        async with started(files) as nodes:
            mallory = nodes[3]
            runs = [asyncio.create_task(nodes[i].run(2)) for i in honest]
            own = asyncio.create_task(mallory.run(2))  # it also takes part, honestly
            await until(lambda: all(mallory.synced(files[i].node_id) for i in honest))
            await until(lambda: all(nodes[i].rounds.exchange is not None for i in honest))
            dim = nodes[0].rounds.learner.dim if nodes[0].rounds.learner else 0
            for i in honest:
                peer = files[i].node_id
                for _, frame in bad_frames(mallory_id, files[(i + 1) % 3].node_id, dim):
                    mallory.links.send(peer, frame)
                for _ in range(FLOOD):
                    mallory.links.send(peer, tag(Channel.GOSSIP) + b"flood")
                mallory.links.send(peer, tag(Channel.GOSSIP) + bytes(2 * LIMIT))  # closes the link
            async with asyncio.timeout(TIMEOUT):
                done = list(await asyncio.gather(*runs))
                await own
            return done, [faults_of(nodes[i], mallory_id) for i in honest]

    done, faults = asyncio.run(scenario())
    assert done == [2, 2, 2]
    bad = sum(1 for kind, _ in bad_frames("a", "b", 4) if "accepted" not in kind) + 1
    for i, counted in zip(honest, faults, strict=True):
        # Every kind is counted (below); of the frames, one in flight when the oversized
        # frame closes the link may be lost with it (seen once in a full run).
        assert counted["faults"] >= bad + FLOOD - 1 and not counted["banned"]
        entries = read_entries(files[i].directory / "audit.jsonl")
        errors = [e for e in entries if e["event"] == "peer-protocol-error"]
        assert errors and {e["peer"] for e in errors} == {mallory_id}
        assert len(errors) <= len(counted["kinds"])  # one record per kind in the window
        assert sum(e["count"] for e in errors) <= counted["faults"]
        assert {"malformed", "round", "channel", "frame", "framing"} <= set(counted["kinds"])
        assert [e["round"] for e in entries if e["event"] == "round"] == [
            1,
            2,
        ]  # rounds as the node numbers them


def test_a_member_past_the_fault_limit_is_banned_refused_then_let_back(tmp_path: Path) -> None:
    limits = {"peer_faults": 5, "peer_fault_window": 30.0, "peer_ban_seconds": 2.0}
    files = federation(tmp_path, {**limits, "linger_timeout": 1.0}, 2.0)
    mallory_id = files[3].node_id

    async def scenario() -> tuple[list[int], dict[str, Any], dict[str, Any]]:
        async with started(files) as nodes:
            victim, mallory = nodes[0], nodes[3]
            await until(lambda: victim.synced(mallory_id) and mallory.synced(files[0].node_id))
            runs = [asyncio.create_task(nodes[i].run(2)) for i in range(3)]
            for _ in range(4):
                mallory.links.send(files[0].node_id, b"\x09junk")
            await until(lambda: faults_of(victim, mallory_id)["faults"] == 4)
            assert not faults_of(victim, mallory_id)["banned"]
            assert victim.synced(mallory_id)
            mallory.links.send(files[0].node_id, b"\x09junk")  # the fifth
            await until(lambda: faults_of(victim, mallory_id)["banned"])
            during = faults_of(victim, mallory_id)
            await until(lambda: not victim.synced(mallory_id), 5)
            await until(lambda: victim.synced(mallory_id), 20)  # back once the ban lifts
            after = faults_of(victim, mallory_id)
            async with asyncio.timeout(TIMEOUT):
                done = list(await asyncio.gather(*runs))
            return done, during, after

    done, during, after = asyncio.run(scenario())
    assert done == [2, 2, 2]
    assert during["banned"] and during["bans"] == 1 and during["ban_left_seconds"] > 0
    assert not after["banned"] and after["bans"] == 1
    entries = read_entries(files[0].directory / "audit.jsonl")
    bans = [e for e in entries if e["event"] == "peer-banned"]
    assert [(e["peer"], e["faults"], e["seconds"]) for e in bans] == [(mallory_id, 5, 2.0)]
    refused = [e for e in entries if e["event"] == "auth-refused" and e["code"] == "banned"]
    assert refused and {e["peer"] for e in refused} == {mallory_id}
    kinds = [e["event"] for e in entries]
    ban_at = kinds.index("peer-banned")
    ups = [i for i, e in enumerate(entries) if e["event"] == "link-up" and e["peer"] == mallory_id]
    assert ups[0] < ban_at < ups[-1]  # the link came back after the ban

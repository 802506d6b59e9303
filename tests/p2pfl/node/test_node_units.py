"""The node's parts without a network: config, audit chain, checkpoints, backoff, plan, data,
the channel router, phases, and the round layer on a stand-in for its host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest
import torch

from p2pfl.errors import ConfigError, DataError
from p2pfl.node import checkpoint as ckpt
from p2pfl.node.audit import GENESIS, AuditLog, line_hash, read_entries, verify
from p2pfl.node.channels import Channel, Router, tagged
from p2pfl.node.config import config_from_table, load_config, template
from p2pfl.node.data import load_local_data
from p2pfl.node.errors import CheckpointError, NodeStopped, PlanError
from p2pfl.node.exchange import Exchange
from p2pfl.node.host import RoundHost
from p2pfl.node.links import backoff
from p2pfl.node.node import Node
from p2pfl.node.phases import ENDED, Phase
from p2pfl.node.rounds import MAX_EARLY_FRAMES, MAX_EARLY_FRAMES_PER_PEER, RoundDriver
from p2pfl.node.status import read_status, write_status
from p2pfl.spec import MODES, plan_from_table
from protocols.gossip import Straggler
from protocols.rounds import RoundOutput
from protocols.secagg import Abandoned
from protocols.secagg.phases import Phase as SecAggPhase

# -- config --------------------------------------------------------------------------------


def test_config_rejects_an_unknown_key_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nkey = "k"\nlisten_adress = "wss://x:1"\n')
    with pytest.raises(ConfigError, match="unknown key 'listen_adress'") as info:
        load_config(path)
    assert str(path) in str(info.value) and "listen" in str(info.value)
    with pytest.raises(ConfigError, match="unknown key 'limitz'"):
        config_from_table({"limitz": {}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'insecure'"):  # a flag, never a file key
        config_from_table({"insecure": True}, tmp_path)


def test_config_checks_types_and_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'max_message_size'.*expected int"):
        config_from_table({"limits": {"max_message_size": "big"}}, tmp_path)
    with pytest.raises(ConfigError, match="backoff_max"):
        config_from_table({"limits": {"backoff_initial": 5.0, "backoff_max": 1.0}}, tmp_path)
    with pytest.raises(ConfigError, match="not a valid TOML"):
        (tmp_path / "bad.toml").write_text("[node\n")
        load_config(tmp_path / "bad.toml")


def test_config_paths_are_relative_to_the_file_and_the_template_loads(tmp_path: Path) -> None:
    path = tmp_path / "site" / "node.toml"
    path.parent.mkdir()
    path.write_text(template(listen="wss://127.0.0.1:7443"))
    config = load_config(path)
    assert config.key_file == path.parent / "node.key"
    assert config.ledger_file == path.parent / "ledger"
    assert config.data_dir == path.parent
    assert config.node.listen == "wss://127.0.0.1:7443"
    assert config.data.entrypoint == "p2pfl.node.examples:heart_site"
    assert config.path(config.tls.cert) == path.parent / "tls-cert.pem"
    assert not config.insecure and config.limits.keep_checkpoints == 5


# -- audit log ------------------------------------------------------------------------------


def test_audit_entries_are_hash_chained_across_reopenings(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.record("start", node="a")
        audit.record("auth-refused", peer="x", code="not-member", raw=b"\x01")
    with AuditLog(path) as audit:
        audit.record("stop")
    lines = path.read_bytes().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev"] == GENESIS
    assert entries[1]["prev"] == line_hash(lines[0]) and entries[2]["prev"] == line_hash(lines[1])
    assert entries[1]["raw"] == "01"
    assert os.stat(path).st_mode & 0o077 == 0
    result = verify(path)
    assert result.ok and result.entries == 3


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_audit_verify_finds_tampering(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        for i in range(4):
            audit.record("round", round=i)
    lines = path.read_bytes().splitlines()
    if tamper == "edit":
        lines[1] = lines[1].replace(b'"round":1', b'"round":7')
    elif tamper == "delete":
        del lines[2]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = verify(path)
    assert not result.ok and result.problems[0][0] in (2, 3)


def test_audit_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.record("start")
    with path.open("ab") as handle:
        handle.write(b'{"seq":1,"time":"x","ev')  # a crash in the middle of a write
    with AuditLog(path) as audit:
        audit.record("start")
    assert [e["event"] for e in read_entries(path)] == ["start", "audit-torn-tail", "start"]
    assert verify(path).ok


# -- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip_is_raw_float32_and_msgpack(tmp_path: Path) -> None:
    model = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    path = ckpt.write_checkpoint(tmp_path, 3, model, {"plan_hash": b"\x00" * 32, "acc": 0.5})
    assert path.name == "round-000003.ckpt"
    raw = path.read_bytes()
    assert raw.startswith(ckpt.MAGIC) and raw.endswith(model.astype("<f4").tobytes())
    loaded = ckpt.read_checkpoint(path)
    assert loaded.round == 3 and np.array_equal(loaded.model, model)
    assert loaded.meta["acc"] == 0.5 and loaded.meta["plan_hash"] == b"\x00" * 32
    assert loaded.model.flags.writeable


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = np.arange(10, dtype=np.float32)
    ckpt.write_checkpoint(tmp_path, 1, model)

    def crash(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        ckpt.write_checkpoint(tmp_path, 2, model + 1)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-000001.ckpt"]  # no temp left
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.round == 1


def test_a_damaged_checkpoint_is_refused_and_skipped(tmp_path: Path) -> None:
    model = np.ones(64, dtype=np.float32)
    ckpt.write_checkpoint(tmp_path, 1, model)
    path = ckpt.write_checkpoint(tmp_path, 2, model * 2)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its hash"):
        ckpt.read_checkpoint(path)
    path.write_bytes(bytes(data[:-8]))
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.read_checkpoint(path)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.round == 1 and np.array_equal(latest.model, model)
    (tmp_path / "round-000003.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a p2pfl checkpoint"):
        ckpt.read_checkpoint(tmp_path / "round-000003.ckpt")


def test_a_checkpoint_is_checked_whole_without_keeping_its_model(tmp_path: Path) -> None:
    model = np.random.default_rng(1).standard_normal(300_001).astype(np.float32)
    path = ckpt.write_checkpoint(tmp_path, 5, model, {"acc": 0.25})
    checked = ckpt.read_checkpoint(path, model=False)
    assert checked.round == 5 and checked.meta["acc"] == 0.25 and checked.model.size == 0
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its hash"):
        ckpt.read_checkpoint(path, model=False)


def test_checkpoints_are_pruned_to_the_newest(tmp_path: Path) -> None:
    for r in range(1, 6):
        ckpt.write_checkpoint(tmp_path, r, np.zeros(3, dtype=np.float32))
    ckpt.prune_checkpoints(tmp_path, 2)
    assert [r for r, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]
    ckpt.prune_checkpoints(tmp_path, 0)  # 0 keeps all
    assert len(ckpt.list_checkpoints(tmp_path)) == 2


# -- backoff --------------------------------------------------------------------------------


def test_backoff_grows_to_its_cap_and_never_sleeps() -> None:
    delays = list(islice(backoff(0.1, 1.0, jitter=0.0), 7))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    jittered = list(islice(backoff(0.1, 1.0, jitter=0.5, rng=random.Random(3)), 50))
    assert all(0.05 - 1e-12 <= d <= 1.0 for d in jittered)
    again = list(islice(backoff(0.1, 1.0, jitter=0.5, rng=random.Random(3)), 50))
    assert jittered == again  # randomness is an argument
    with pytest.raises(ValueError):
        next(backoff(2.0, 1.0))


# -- plan and graph -------------------------------------------------------------------------

PLAN = {
    "seed": 3,
    "data": {"input_shape": [37], "num_classes": 2},
    "model": {"name": "logreg"},
    "training": {"rounds": 5},
    "topology": {"kind": "ring"},
}


def test_plan_parsing_names_unknown_keys_and_refuses_what_the_daemon_cannot_run() -> None:
    plan = plan_from_table(PLAN)
    assert plan.training.rounds == 5 and plan.gossip.mode == "sync" and not plan.secure.enabled
    with pytest.raises(PlanError, match="unknown key 'epochs'"):
        plan_from_table({**PLAN, "training": {"epochs": 3}})
    for mode in MODES:  # every mode the simulator runs deploys
        assert plan_from_table({**PLAN, "gossip": {"mode": mode}}).gossip.mode == mode
    with pytest.raises(PlanError, match=r"gossip\.mode must be one of"):
        plan_from_table({**PLAN, "gossip": {"mode": "flood"}})
    with pytest.raises(PlanError, match="input_shape"):
        plan_from_table({**PLAN, "data": {"num_classes": 2}})
    with pytest.raises(PlanError, match="no valid training plan"):
        plan_from_table(None)


def test_every_node_computes_the_same_graph_from_the_roster() -> None:
    roster = tuple(sorted(f"node{i:02d}" for i in range(6)))
    graph = plan_from_table(PLAN).graph(roster)
    for node in roster:
        hood = graph.neighbourhood(node, 0)
        assert len(hood.in_weights) == 2
        assert hood.self_weight + sum(hood.in_weights.values()) == pytest.approx(1.0)
        for peer, weight in hood.in_weights.items():  # symmetric Metropolis weights
            assert graph.neighbourhood(peer, 0).in_weights[node] == pytest.approx(weight)
        assert graph.links_of(node) == set(hood.in_weights)
    other = plan_from_table(PLAN).graph(roster)
    assert all(other.links_of(n) == graph.links_of(n) for n in roster)
    with pytest.raises(PlanError, match="sorted"):
        plan_from_table(PLAN).graph(roster[::-1])


@pytest.mark.parametrize(
    "kind", ["ring", "exponential-directed", "one-peer-exponential", "random-regular-per-round"]
)
def test_the_graphs_edges_are_every_nodes_links_at_once(kind: str) -> None:
    roster = tuple(sorted(f"node{i:02d}" for i in range(16)))  # a power of two: every kind
    graph = plan_from_table({**PLAN, "topology": {"kind": kind}}).graph(roster)
    one_by_one = {(min(a, b), max(a, b)) for a in roster for b in graph.links_of(a)}
    assert graph.edges() == one_by_one and one_by_one


# -- data entrypoint ------------------------------------------------------------------------


def tuple_data(n: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.zeros((n, 37), dtype=np.float64)
    y = np.arange(n) % 2
    return x, y, x[:2], y[:2]


def test_the_data_entrypoint_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    import p2pfl.node.examples as examples

    monkeypatch.setattr(examples, "tuple_data", tuple_data, raising=False)
    data = load_local_data("p2pfl.node.examples:tuple_data", [6], input_shape=[37], num_classes=2)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.x_train.shape == (6, 37) and data.x_test.shape == (2, 37)
    site = load_local_data(
        "p2pfl.node.examples:heart_site", ["hungary"], input_shape=[37], num_classes=2
    )
    assert site.x_train.shape[0] > 100
    with pytest.raises(DataError, match="shape"):
        load_local_data("p2pfl.node.examples:tuple_data", [], input_shape=[5], num_classes=2)
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        load_local_data("p2pfl.node.examples:tuple_data", [], input_shape=[37], num_classes=1)
    with pytest.raises(ConfigError, match="module:function"):
        load_local_data("nocolon", input_shape=[37], num_classes=2)
    with pytest.raises(ConfigError, match="not callable"):
        load_local_data("p2pfl.node.examples:nothing", input_shape=[37], num_classes=2)
    with pytest.raises(DataError, match="no heart-disease site"):
        load_local_data(
            "p2pfl.node.examples:heart_site", ["atlantis"], input_shape=[37], num_classes=2
        )


def test_data_as_an_object_with_named_features(monkeypatch: pytest.MonkeyPatch) -> None:
    import p2pfl.node.examples as examples

    x, y, xt, yt = tuple_data(4)
    names = [f"f{i}" for i in range(37)]
    splits = SimpleNamespace(x_train=x, y_train=y, x_test=xt, y_test=yt)
    monkeypatch.setattr(examples, "plain", lambda: splits, raising=False)
    monkeypatch.setattr(
        examples, "named", lambda: SimpleNamespace(**vars(splits), feature_names=names),
        raising=False,
    )  # fmt: skip
    monkeypatch.setattr(examples, "partial", lambda: SimpleNamespace(x_train=x), raising=False)
    plain = load_local_data("p2pfl.node.examples:plain", input_shape=[37], num_classes=2)
    assert plain.x_train.shape == (4, 37) and plain.feature_names is None
    named = load_local_data("p2pfl.node.examples:named", input_shape=[37], num_classes=2)
    assert named.feature_names == tuple(names)
    with pytest.raises(DataError, match="must return"):
        load_local_data("p2pfl.node.examples:partial", input_shape=[37], num_classes=2)


# -- the channel router ---------------------------------------------------------------------


class Routed:
    def __init__(self) -> None:
        self.frames: list[tuple[str, str, Channel, bytes]] = []
        self.errors: list[tuple[str, str]] = []

    def handler(self, name: str) -> Any:
        def handle(peer: str, channel: Channel, body: memoryview) -> None:
            self.frames.append((name, peer, channel, bytes(body)))

        return handle

    def error(self, peer: str, error: str) -> None:
        self.errors.append((peer, error))


def test_the_router_hands_each_frame_to_its_channel_handler_without_the_tag() -> None:
    seen = Routed()
    router = Router(
        {Channel.LEDGER: seen.handler("ledger"), Channel.GOSSIP: seen.handler("round")},
        seen.error,
    )
    router.route("a", tagged(Channel.GOSSIP, b"model"))
    router.route("b", memoryview(tagged(Channel.LEDGER, b"sync")))
    router.route("c", tagged(Channel.LEDGER, b""))
    assert seen.frames == [
        ("round", "a", Channel.GOSSIP, b"model"),
        ("ledger", "b", Channel.LEDGER, b"sync"),
        ("ledger", "c", Channel.LEDGER, b""),
    ]
    assert seen.errors == []


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "empty frame"),
        (b"\x00abc", "unknown channel 0"),
        (b"\xffabc", "unknown channel 255"),
        (tagged(Channel.SECAGG, b"x"), "unknown channel 3"),  # a channel with no handler here
    ],
)
def test_a_frame_no_handler_takes_is_the_peers_error_not_a_crash(frame: bytes, error: str) -> None:
    seen = Routed()
    router = Router({Channel.GOSSIP: seen.handler("round")}, seen.error)
    router.route("mallory", frame)
    assert seen.frames == []
    assert len(seen.errors) == 1
    peer, message = seen.errors[0]
    assert peer == "mallory" and error in message


def test_a_node_is_only_reachable_once_started_and_routes_by_its_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_from_table({"node": {"data_dir": str(tmp_path)}}, tmp_path)
    node = Node(config)
    assert node.phase is Phase.CREATED
    for missing in ("identity", "ledger", "links", "rounds", "sync"):
        with pytest.raises(NodeStopped):
            getattr(node, missing)
    status = node.status()  # a node not started reports what it is, no more
    assert status["phase"] == "created" and status["neighbours"] == {}
    assert status["node_id"] is None and status["federation"] is None
    caplog.set_level("DEBUG", logger="p2pfl.node.node")
    node._router.route("mallory", b"\x09junk")
    node._router.route("mallory", tagged(Channel.CONTROL, b"hello"))  # no rounds yet: ignored
    assert "protocol error from mallory: unknown channel 9" in caplog.text
    assert "control message from mallory ignored" in caplog.text


# -- phases ---------------------------------------------------------------------------------


def test_phases_are_the_text_of_the_status_file(tmp_path: Path) -> None:
    write_status(tmp_path, {"phase": Phase.WAITING_APPROVAL})
    text = read_status(tmp_path)["phase"]
    assert text == "waiting-approval" and Phase(text) is Phase.WAITING_APPROVAL
    assert {p.value for p in Phase} >= {"idle", "training", "mixing", "finished", "failed"}
    assert "stopped" in ENDED and "failed" in ENDED and "finished" not in ENDED


# -- the round layer on a stand-in host -----------------------------------------------------


class Host:
    """Just enough of a ``RoundHost`` for the round layer's bookkeeping."""

    node_id = "me"
    config = SimpleNamespace(limits=SimpleNamespace(max_message_size=1 << 20))

    def __init__(self) -> None:
        progress = {"p": 4}
        self.ledger = SimpleNamespace(
            progress=lambda: dict(progress), round_of=lambda node: progress.get(node, 0)
        )
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[tuple[str, str, str]] = []
        self.sent: list[tuple[str, bytes, int]] = []
        self.pruned: list[tuple[str, int]] = []
        self.wakes = 0

    def record(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))

    def send(self, peer: str, frame: bytes | bytearray, *, round: int) -> None:
        self.sent.append((peer, bytes(frame), round))

    def linked(self) -> list[str]:
        return ["p", "q"]

    def prune_replay(self, peer: str, below: int) -> None:
        self.pruned.append((peer, below))

    def wake_timer(self) -> None:
        self.wakes += 1

    def peer_error(self, peer: str, error: str, *, kind: str = "protocol") -> None:
        self.errors.append((peer, error, kind))


def host() -> RoundHost:
    return Host()  # type: ignore[return-value]


def test_the_exchange_counts_abandoned_rounds_and_sends_through_the_host() -> None:
    stand_in = host()
    exchange = Exchange(stand_in, SimpleNamespace(), secure=False, round=2)  # type: ignore[arg-type]
    assert exchange.abandoned == 0
    abandoned = Abandoned(2, "me", SecAggPhase.MASKED, "too few survivors")
    exchange.drive(RoundOutput((("p", b"\x02frame"),), (abandoned, Straggler(2, "q"))))
    exchange.drive(RoundOutput((), (Abandoned(3, "me", SecAggPhase.SHARE, "alone"),)))
    assert exchange.abandoned == 2 and exchange.round_bytes == len(b"frame")
    assert isinstance(stand_in, Host)
    assert stand_in.sent == [("p", b"\x02frame", 2)] and stand_in.wakes == 2
    # The core's round index 2 is round number 3 (``p2pfl.node.numbering``).
    assert stand_in.records == [("straggler", {"round": 3, "peer": "q"})]
    # p is known to be in round 5, we are in round 2: p's sender side of our round may
    # still need what we sent in round 1 and 2; q is not known past any round.
    exchange.prune()
    assert stand_in.pruned == [("p", 1), ("q", 0)]


class LingeringHost(Host):
    """A host whose neighbour finished the last round, and which relays one link of others."""

    def __init__(self, linger: float, carried: int = 1) -> None:
        super().__init__()
        self.config = SimpleNamespace(limits=SimpleNamespace(linger_timeout=linger))
        self.progress = {"p": 4, "far": 4, "gone": 1, "left": 3}
        self.ledger = SimpleNamespace(
            round_of=lambda node: self.progress.get(node, 0),
            members=lambda: dict.fromkeys(self.progress),
            left=lambda: {"left": 3},
            revoked=lambda: {},
        )
        self.carried = carried
        self.changes = asyncio.Event()
        self.phases: list[Phase] = []

    def set_phase(self, phase: Phase) -> None:
        self.phases.append(phase)

    def relaying_now(self) -> int:
        return self.carried

    async def delivered(self, peers: list[str], timeout: float) -> bool:
        return True

    async def wait_until(self, predicate: Any, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changes.clear()
                    await self.changes.wait()
        return bool(predicate())


def lingering(stand_in: LingeringHost) -> RoundDriver:
    rounds = RoundDriver(stand_in)  # type: ignore[arg-type]
    rounds.plan = SimpleNamespace()  # type: ignore[assignment]
    rounds.graph = SimpleNamespace(  # type: ignore[assignment]
        links_of=lambda me: {"p"}, roster=("far", "gone", "left", "me", "p")
    )
    rounds.completed = 4  # p's progress record says 4 as well
    return rounds


def test_a_relay_lingers_until_the_links_it_carries_have_closed() -> None:
    """Its neighbours are done, but the ends it pipes together may still be in the last
    round's exchange: leaving then would cut their frames (and their round) short."""

    async def main() -> None:
        stand_in = LingeringHost(linger=30.0)
        linger = asyncio.ensure_future(lingering(stand_in)._linger())
        await asyncio.sleep(0.05)
        assert not linger.done() and stand_in.phases == [Phase.LINGERING]
        stand_in.carried = 0  # the ends left: their splice ended
        stand_in.changes.set()
        async with asyncio.timeout(5):
            await linger

    asyncio.run(main())


def test_a_relay_stops_waiting_for_the_links_it_carries_at_the_linger_timeout() -> None:
    async def main() -> None:
        stand_in = LingeringHost(linger=0.2)
        async with asyncio.timeout(5):
            await lingering(stand_in)._linger()  # returns: the links are still carried
        assert stand_in.carried == 1

    asyncio.run(main())


def test_a_node_lingers_until_the_members_further_off_have_finished() -> None:
    """On a path, an end node that left once its neighbour was done saved a ledger without
    the far end's last round: it waits for every member's record, through its neighbours.
    Not for one that left, nor one already more than ``ABSENT_LAG`` rounds behind."""

    async def main() -> None:
        stand_in = LingeringHost(linger=30.0, carried=0)
        stand_in.progress["far"] = 3  # still in the last round
        linger = asyncio.ensure_future(lingering(stand_in)._linger())
        await asyncio.sleep(0.05)
        assert not linger.done()
        stand_in.progress["far"] = 4  # its last progress record arrived
        stand_in.changes.set()
        async with asyncio.timeout(5):
            await linger

    asyncio.run(main())


def test_round_frames_before_the_exchange_wait_a_bounded_number() -> None:
    rounds = RoundDriver(host())
    assert rounds.deadline is None
    rounds.poll(0.0)  # nothing to poll yet: no error
    rounds.on_ledger_changed()
    for i in range(MAX_EARLY_FRAMES + 5):
        rounds.on_frame(f"p{i % 40}", Channel.GOSSIP, memoryview(bytes([i % 256])))
    assert len(rounds._early) == MAX_EARLY_FRAMES
    assert rounds._early[1][0] == "p1" and bytes(rounds._early[1][2]) == b"\x01"


def test_one_member_cannot_fill_the_frames_kept_before_the_rounds() -> None:
    stand_in = Host()
    rounds = RoundDriver(stand_in)  # type: ignore[arg-type]
    for i in range(MAX_EARLY_FRAMES):
        rounds.on_frame("mallory", Channel.GOSSIP, memoryview(bytes([i % 256])))
    rounds.on_frame("mallory", Channel.GOSSIP, memoryview(bytes(1 << 20)))
    rounds.on_frame("honest", Channel.GOSSIP, memoryview(bytes(1 << 20)))
    kept = [peer for peer, _, _ in rounds._early]
    assert kept.count("mallory") == MAX_EARLY_FRAMES_PER_PEER and kept[-1] == "honest"
    flood = MAX_EARLY_FRAMES - MAX_EARLY_FRAMES_PER_PEER + 1
    assert stand_in.errors == [("mallory", ANY, "flood")] * flood

"""One round numbering everywhere: a three-round run says rounds 1..3 and "completed 3".

Three nodes in one process (``finished_run``, in-memory links) run three rounds;
then every output is read back: events, log lines, ``status.json`` and ``node
status``, checkpoint names and metadata, the audit log, the ledger's progress
records and ``federation show``, the node's RO-Crate and ``p2pfl export``. The
protocol cores still count from 0: the exchange converts at its boundary
(``p2pfl.node.numbering``), which the unit tests at the end pin down. A
checkpoint written under the old numbering (format version 2) resumes after the
round it holds, and a secure node's record of the round it dealt in, of either
numbering, keeps it from dealing twice.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
from memory_federation import ROUNDS, Run, memory_federation, run_peers

from p2pfl.cli import main
from p2pfl.cli.federation import summary
from p2pfl.cli.node import _describe
from p2pfl.ledger_file import load_ledger
from p2pfl.node import Finished, RoundCompleted, TrainingStarted
from p2pfl.node import checkpoint as ckpt
from p2pfl.node.audit import read_entries
from p2pfl.node.errors import CheckpointError
from p2pfl.node.exchange import Exchange
from p2pfl.node.numbering import index, number
from p2pfl.node.rounds import RoundDriver
from p2pfl.node.status import read_status
from protocols.gossip import RoundMixed, Straggler
from protocols.rounds import RoundOutput

EXPECTED = list(range(1, ROUNDS + 1))


def test_events_and_log_lines_number_the_rounds_from_one(finished_run: Run) -> None:
    for events in finished_run.events:
        (started,) = [e for e in events if isinstance(e, TrainingStarted)]
        assert started.round == 1 and started.rounds == ROUNDS and not started.resumed
        assert [e.round for e in events if isinstance(e, RoundCompleted)] == EXPECTED
        assert isinstance(events[-1], Finished) and events[-1].rounds == ROUNDS
    done = [line for line in finished_run.logs if re.match(r"round \d+/\d+ done", line)]
    assert len(done) == 3 * ROUNDS and all(f"/{ROUNDS} done" in line for line in done)
    logged = sorted({int(line.split()[1].split("/")[0]) for line in done})
    assert logged == EXPECTED  # the same numbers as the events'


def test_the_status_file_and_node_status_count_completed_rounds(finished_run: Run) -> None:
    for site in finished_run.files:
        status = read_status(site.directory)
        assert status["phase"] == "finished"
        assert status["completed"] == ROUNDS and status["rounds"] == ROUNDS
        assert status["round"] == ROUNDS and status["last_round"]["round"] == ROUNDS
        text = _describe({**status, "running": False})
        assert f"(last phase: finished): {ROUNDS} of {ROUNDS} rounds completed" in text
        assert f"finished: {ROUNDS} of {ROUNDS} rounds completed" in _describe(
            status | {"running": True}
        )
        assert f"(local test set, round {ROUNDS})" in text


def test_checkpoints_are_named_and_numbered_from_one(finished_run: Run) -> None:
    for site in finished_run.files:
        directory = site.directory / "checkpoints"
        names = sorted(p.name for p in directory.iterdir())
        assert names == [f"round-{r:06d}.ckpt" for r in EXPECTED]
        for r, path in ckpt.list_checkpoints(directory):
            read = ckpt.read_checkpoint(path, model=False)
            assert read.round == read.meta["round"] == r and read.version == ckpt.VERSION
            assert path.read_bytes().startswith(b"P2PFL-CKPT\x00\x03")


def test_the_audit_log_numbers_its_rounds_from_one(finished_run: Run) -> None:
    for site in finished_run.files:
        entries = read_entries(site.directory / "audit.jsonl")
        (training,) = [e for e in entries if e["event"] == "training"]
        assert training["round"] == 1 and training["rounds"] == ROUNDS
        assert [e["round"] for e in entries if e["event"] == "round"] == EXPECTED


def test_the_ledger_and_federation_show_say_round_r(
    finished_run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {site.node_id for site in finished_run.files}
    for site in finished_run.files:
        progress = load_ledger(site.directory / "ledger").progress()
        assert progress == dict.fromkeys(ids, ROUNDS)
    ledger_file = finished_run.files[0].directory / "ledger"
    assert summary(load_ledger(ledger_file))["progress"] == dict.fromkeys(sorted(ids), ROUNDS)
    assert main(["federation", "show", str(ledger_file)]) == 0
    out = capsys.readouterr().out
    assert all(f"{node_id}  round {ROUNDS}" in out for node_id in ids), out


def test_the_crate_holds_rounds_one_to_r(finished_run: Run) -> None:
    for site in finished_run.files:
        crate = site.directory / "crate"
        metrics = json.loads((crate / "metrics.json").read_text())
        assert metrics["completed"] == ROUNDS and metrics["target"] == ROUNDS
        assert [row["round"] for row in metrics["rounds"]] == EXPECTED
        assert set(metrics["progress"].values()) == {ROUNDS}
        described = (crate / "ro-crate-metadata.json").read_text()
        assert f"model after round {ROUNDS}" in described
        assert (crate / f"round-{ROUNDS:06d}.ckpt").is_file()


def test_export_takes_the_model_of_round_r(finished_run: Run, tmp_path: Path) -> None:
    source = finished_run.files[0].directory
    assert main(["export", "--from", str(source), "--to", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["source"]["round"] == ROUNDS == manifest["source"]["rounds"]


# -- the boundary: the exchange hands the core indices and numbers what it reports ---------


class Core:
    """A round core that records the rounds it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.deadline = None

    def begin_round(self, round: int, now: float, origin: Any = None) -> RoundOutput:
        self.calls.append(("begin", round))
        return RoundOutput((), ())

    def start_round(self, round: int, model: Any, now: float) -> RoundOutput:
        self.calls.append(("start", round))
        mixed = RoundMixed(round, model, ("p",), ("q",))
        return RoundOutput((), (mixed, Straggler(round, "q")))

    def resume_at(self, round: int) -> None:
        self.calls.append(("resume", round))


class Host:
    node_id = "me"

    def __init__(self) -> None:
        self.ledger = SimpleNamespace(progress=lambda: {}, round_of=lambda node: 0)
        self.records: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))

    def linked(self) -> list[str]:
        return []

    def wake_timer(self) -> None:
        pass


def test_the_exchange_is_the_boundary_between_numbers_and_indices() -> None:
    assert [index(n) for n in (1, 2, 3)] == [0, 1, 2] and number(0) == 1

    async def one_round() -> tuple[RoundMixed, Core, Host]:
        core, host = Core(), Host()
        exchange = Exchange(host, core, secure=False, round=1)  # type: ignore[arg-type]
        exchange.resume_at(3)
        waiter = exchange.mixed(3)
        exchange.begin_round(3, 0.0, np.zeros(2, np.float32))
        exchange.start_round(3, np.zeros(2, np.float32), 0.0)
        return await asyncio.wait_for(waiter, 5), core, host

    mixed, core, host = asyncio.run(one_round())
    assert core.calls == [("resume", 2), ("begin", 2), ("start", 2)]
    assert mixed.arrived == ("p",)  # the core's index 2 resolved the wait for round 3
    assert host.records == [("straggler", {"round": 3, "peer": "q"})]


# -- checkpoints of the previous numbering ------------------------------------------------


def as_version_2(path: Path) -> Path:
    """Rewrite a current checkpoint as version 2 wrote it: rounds counted from 0."""
    data = path.read_bytes()
    start = len(ckpt.MAGIC) + 4
    length = int.from_bytes(data[len(ckpt.MAGIC) : start], "little")
    meta = msgpack.unpackb(data[start : start + length], raw=False)
    meta["round"] -= 1
    packed = msgpack.packb(meta, use_bin_type=True)
    old = path.with_name(ckpt.checkpoint_name(meta["round"]))
    old.write_bytes(
        b"P2PFL-CKPT\x00\x02" + len(packed).to_bytes(4, "little") + packed + data[start + length :]
    )
    path.unlink()
    return old


def test_a_version_2_checkpoint_reads_as_the_round_it_holds(tmp_path: Path) -> None:
    model = np.arange(6, dtype=np.float32)
    written = ckpt.write_checkpoint(tmp_path, 5, model, {"accuracy": 0.5}, state={})
    old = as_version_2(written)
    assert old.name == "round-000004.ckpt"  # the old name: index 4
    read = ckpt.read_checkpoint(old)
    assert read.version == 2 and read.round == read.meta["round"] == 5
    assert np.array_equal(read.model, model) and read.has_state
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.round == 5


def test_a_checkpoint_of_round_zero_or_a_newer_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        ckpt.write_checkpoint(tmp_path, 0, np.zeros(2, np.float32))
    path = ckpt.write_checkpoint(tmp_path, 1, np.zeros(2, np.float32))
    data = bytearray(path.read_bytes())
    data[len(ckpt.MAGIC) - 1] = ckpt.VERSION + 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"newer than this p2pfl reads.*upgrade p2pfl"):
        ckpt.read_checkpoint(path)


def test_a_node_resumes_after_the_round_its_version_2_checkpoints_hold(tmp_path: Path) -> None:
    files = memory_federation(tmp_path, rounds=4)
    run_peers(files, rounds=2)
    for site in files:  # as the previous release would have left them
        for _, path in ckpt.list_checkpoints(site.directory / "checkpoints"):
            as_version_2(path)
    resumed = run_peers(files)
    for site, events in zip(files, resumed.events, strict=True):
        (started,) = [e for e in events if isinstance(e, TrainingStarted)]
        assert started.resumed and started.round == 3
        assert [e.round for e in events if isinstance(e, RoundCompleted)] == [3, 4]
        entries = read_entries(site.directory / "audit.jsonl")
        assert [e["round"] for e in entries if e["event"] == "resumed"] == [2]
        names = sorted(p.name for p in (site.directory / "checkpoints").iterdir())
        assert names == ["round-000000.ckpt", "round-000001.ckpt"] + [
            f"round-{r:06d}.ckpt" for r in (3, 4)
        ]
        assert read_status(site.directory)["completed"] == 4


class DealtHost(Host):
    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir


@pytest.mark.parametrize(
    ("written", "joins"),
    [
        ("4 {hash} numbered", 5),  # round 4 was begun: join round 5
        ("3 {hash} numbered", 4),  # round 3 was: round 4 is still to deal
        ("3 {hash}", 5),  # the previous numbering: index 3 is round 4
        ("4 {other} numbered", 4),  # another plan's
    ],
)
def test_a_secure_node_never_deals_twice_in_a_round_whichever_numbering_it_wrote(
    tmp_path: Path, written: str, joins: int
) -> None:
    rounds = RoundDriver(DealtHost(tmp_path))  # type: ignore[arg-type]
    rounds.plan_hash, rounds.round = b"\x01" * 32, 4
    text = written.format(hash=rounds.plan_hash.hex(), other="02" * 32)
    (tmp_path / "secure-dealt").write_text(text + "\n")
    rounds._skip_dealt_round()
    assert rounds.round == joins
    rounds._mark_dealt(joins)
    rounds.round = joins
    rounds._skip_dealt_round()  # what it writes, it reads back as the same round
    assert rounds.round == joins + 1

"""Real daemons as OS processes over wss: the four heart-disease hospitals, an intruder, a crash.

These start one ``p2pfl node run`` process per hospital on loopback (TLS,
Ed25519 handshake, secure aggregation over each neighbourhood) through the
processes engine, and compare with the protocol engine on the same scenario.
Waits are bounded: ``run_processes`` has a timeout, subprocesses too.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from p2pfl.engines import prepare, run_engine
from p2pfl.engines.processes import Federation, run_processes
from p2pfl.errors import P2PFLError
from p2pfl.ledger_file import load_ledger
from p2pfl.node.audit import read_entries, verify
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint
from p2pfl.node.status import read_status
from p2pfl.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def hospitals(rounds: int, **overrides: Any) -> Any:
    table = {
        "topology.kind": "complete",
        "secure.enabled": True,
        "training.rounds": rounds,
        "baselines.pooled": False,
        "baselines.local": False,
        **overrides,
    }
    scenario = load_scenario(ROOT / "simulations" / "hospitals.toml", table)
    return dataclasses.replace(scenario, sweep={})


INTRUDER = textwrap.dedent(
    """
    import asyncio, sys
    import nacl.signing
    from p2pfl.transport import (
        Authenticator,
        AuthenticationFailed,
        TransportClosed,
        WsTransport,
    )
    from p2pfl.ledger_file import load_ledger

    async def main(address, member, ledger, deadline):
        key = nacl.signing.SigningKey.generate()          # a key the ledger never saw
        auth = Authenticator(key, load_ledger(ledger).verify_key)  # knows the members' keys
        async with WsTransport(auth, insecure=True) as transport:  # dials wss:// all the same
            loop = asyncio.get_running_loop()
            end = loop.time() + deadline
            while True:
                try:
                    await transport.connect(address, expected_peer=member)
                except AuthenticationFailed as exc:
                    print("REFUSED", auth.node_id, exc.code, exc.by_peer, flush=True)
                    return 0
                except TransportClosed:
                    if loop.time() > end:
                        print("UNREACHABLE", flush=True)
                        return 3
                    await asyncio.sleep(0.2)            # the daemon is still starting
                else:
                    print("ACCEPTED", flush=True)
                    return 1

    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))))
    """
)


def test_four_hospitals_over_wss_match_the_protocol_engine_and_refuse_a_stranger(
    tmp_path: Path,
) -> None:
    scenario = hospitals(8, **{"secure.share_timeout": 60.0, "secure.masked_timeout": 30.0})
    setup = prepare(scenario)
    reference = run_engine("protocol", setup, "protocol")

    intruder: dict[str, Any] = {}

    def launch_intruder(federation: Federation) -> None:
        if "proc" in intruder:
            return
        target = federation.sites[0]
        intruder["proc"] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                INTRUDER,
                target.address,
                target.node_id,
                str(target.directory / "ledger"),
                "120",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )

    result = run_processes(setup, "processes", root=tmp_path, watch=launch_intruder, timeout=400)
    out, _ = intruder["proc"].communicate(timeout=120)

    assert result.engine == "processes"
    assert [r.round for r in result.rounds] == list(range(1, 9))
    final, expected = result.rounds[-1], reference.rounds[-1]
    assert final.acc_mean is not None and expected.acc_mean is not None
    assert abs(final.acc_mean - expected.acc_mean) <= 0.01, (final, expected)
    assert result.stragglers == 0 and result.extra["abandoned"] == 0

    # The stranger was refused by the first hospital, which logged the attempt.
    assert intruder["proc"].returncode == 0, out
    _, stranger, code, by_peer = out.split()[-4:]
    assert code == "not-member" and by_peer == "True"
    audit = tmp_path / "n0" / "audit.jsonl"
    refusals = [e for e in read_entries(audit) if e["event"] == "auth-refused"]
    assert any(e["peer"] == stranger and e["code"] == "not-member" for e in refusals)
    assert verify(audit).ok
    # Every hospital saw the others only through authenticated links, and says so.
    for site in ("n0", "n1", "n2", "n3"):
        events = {e["event"] for e in read_entries(tmp_path / site / "audit.jsonl")}
        assert {"start", "link-up", "training", "round", "stop"} <= events


TRAINING_FOR = 0.1  # seconds the victim trains before the kill: its shares have arrived


def _phase(federation: Federation, i: int) -> tuple[str, int]:
    try:
        status = read_status(federation.sites[i].directory)
    except P2PFLError:
        return "", -1
    return str(status.get("phase")), int(status.get("round", -1))


def test_a_daemon_killed_mid_round_is_dropped_then_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    rounds, first_kill_round, victim = 8, 3, 2
    scenario = hospitals(
        rounds,
        **{
            # Caught training: 0.5-1 s idle, seconds under load; the status file the watch
            # reads may be up to 0.2 s behind the phase (``p2pfl.node.status.MIN_GAP``).
            "training.local_epochs": 400,
            "secure.share_timeout": 90.0,
            "secure.masked_timeout": 20.0,  # well above a round's training, even under load
            "secure.unmask_timeout": 20.0,
        },
    )
    setup = prepare(scenario)
    state: dict[str, Any] = {}

    def kill_and_restart(federation: Federation) -> None:
        if "round" in state:
            return
        phase, round_ = _phase(federation, victim)
        if phase != "training" or not first_kill_round < round_ < rounds - 1:  # numbered from 1
            return
        # Kill only once the victim has been training this round for a while: its key
        # shares (dealt just before training) have then reached the receivers, so the
        # round needs dropout recovery. Killed at once, the shares may die in its send
        # queue, and the receivers close the round without it at the share deadline.
        # Watched here every 10 ms (the engine calls back every 0.1 s or more, and on an
        # idle machine a round's training can pass between two calls); a round whose
        # training ends first is let go, and the next one is tried.
        first = time.monotonic()
        while time.monotonic() - first < TRAINING_FOR:
            time.sleep(0.01)
            if _phase(federation, victim) != ("training", round_):
                return
        proc = federation.procs[victim]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        state["round"] = round_
        federation.start(victim)

    result = run_processes(
        setup,
        "fault",
        root=tmp_path,
        watch=kill_and_restart,
        timeout=600,
        limits={"rejoin_timeout": 30.0, "backoff_max": 1.0},
    )
    assert "round" in state, "the victim was never seen training"
    kill_round = state["round"]
    assert [r.round for r in result.rounds] == list(range(1, rounds + 1))

    sites = [tmp_path / f"n{i}" for i in range(4)]
    ids = result.extra["node_ids"]
    victim_id = ids[victim]
    # The others completed the kill round without the victim: declared dropped, in the ledger.
    ledger = load_ledger(sites[0] / "ledger")
    declared = ledger.secagg(kill_round)
    assert declared and all(victim_id in dropped for dropped in declared.values()), declared
    for i, site in enumerate(sites):
        if i == victim:
            continue
        ckpt = read_checkpoint(site / "checkpoints" / f"round-{kill_round:06d}.ckpt")
        assert victim_id in ckpt.meta["stragglers"]
        others = sorted(ids[j] for j in range(4) if j not in (i, victim))
        assert sorted(ckpt.meta["arrived"]) == others
        assert ckpt.meta["abandoned"] == 0
        entries = read_entries(site / "audit.jsonl")
        declarations = [e for e in entries if e["event"] == "dropouts-declared"]
        assert any(e["round"] == kill_round and victim_id in e["dropped"] for e in declarations)
    # The victim resumed from its last checkpoint and completed the run.
    entries = read_entries(sites[victim] / "audit.jsonl")
    resumed = [e for e in entries if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["round"] == kill_round - 1
    assert verify(sites[victim] / "audit.jsonl").ok
    for site in sites:
        done = [r for r, _ in list_checkpoints(site / "checkpoints")]
        assert done[-1] == rounds
        status = json.loads((site / "status.json").read_text())
        assert status["completed"] == rounds
    assert result.rounds[-1].acc_mean is not None and result.rounds[-1].acc_mean > 0.6


def test_a_plain_daemon_killed_mid_round_rejoins_its_neighbours(tmp_path: Path) -> None:
    """Plain D-PSGD: the others wait for the victim up to the round timeout, then go on."""
    rounds, victim = 7, 1
    scenario = hospitals(
        rounds,
        **{"secure.enabled": False, "training.local_epochs": 20, "gossip.round_timeout": 15.0},
    )
    state: dict[str, Any] = {}

    def kill_and_restart(federation: Federation) -> None:
        if "round" in state:
            return
        # Watched every 5 ms for up to a second a call: on an idle machine a round's
        # training can pass between two of the engine's calls (0.1 s or more apart).
        until = time.monotonic() + 1.0
        phase, round_ = _phase(federation, victim)
        while not (phase == "training" and 2 < round_ < rounds - 1):  # rounds numbered from 1
            if round_ >= rounds - 1 or time.monotonic() > until:
                return
            time.sleep(0.005)
            phase, round_ = _phase(federation, victim)
        federation.procs[victim].send_signal(signal.SIGKILL)
        federation.procs[victim].wait(timeout=30)
        state["round"] = round_
        federation.start(victim)

    result = run_processes(
        prepare(scenario),
        "plain-fault",
        root=tmp_path,
        watch=kill_and_restart,
        timeout=600,
        limits={"rejoin_timeout": 30.0, "backoff_max": 1.0},
    )
    assert "round" in state, "the victim was never seen training"
    kill_round = state["round"]
    ids = result.extra["node_ids"]
    sites = [tmp_path / f"n{i}" for i in range(4)]
    # The victim resumed from its checkpoint and ran the interrupted round again (plain
    # mode deals nothing that could not be redone), or skipped it if its neighbours had
    # closed it without it; the others mixed its model or counted it a straggler.
    resumed = [e for e in read_entries(sites[victim] / "audit.jsonl") if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["round"] == kill_round - 1
    for i, site in enumerate(sites):
        if i != victim:
            ckpt = read_checkpoint(site / "checkpoints" / f"round-{kill_round:06d}.ckpt")
            assert (ids[victim] in ckpt.meta["arrived"]) != (ids[victim] in ckpt.meta["stragglers"])
        assert [r for r, _ in list_checkpoints(site / "checkpoints")][-1] == rounds
    assert [r.round for r in result.rounds] == list(range(1, rounds + 1))

"""A daemon SIGKILLed after a round and restarted ends where an uninterrupted one does.

Four heart-disease hospitals as real ``p2pfl node run`` processes over wss
(``--engine processes``), complete graph, sync gossip, secure aggregation off,
no DP. Each federation runs twice from the same plan: once untouched, once
where one daemon is killed with SIGKILL after its checkpoint of round k is on
disk (and its neighbours have finished round k too), while it trains round
k+1, before it has sent anything of that round. It is restarted at once; its
neighbours wait for it (a round timeout far above a restart), replay their
round k+1 frames when its links come back, and it resumes from its checkpoint
with its optimizer state. Every node's final parameters must match the
uninterrupted run's to 1e-6 relative, with momentum SGD and with Adam; without
the optimizer state in the checkpoint the victim, and through gossip all the
others, would end elsewhere (``test_node_checkpoint_state`` shows the trainer
half of that).
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfl.engines import prepare
from p2pfl.engines.processes import Federation, run_processes
from p2pfl.errors import P2PFLError
from p2pfl.node.audit import read_entries
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint
from p2pfl.node.status import read_status
from p2pfl.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

ROUNDS, FIRST_KILL, VICTIM, NODES = 5, 1, 2, 4
LIMITS = {"rejoin_timeout": 60.0, "backoff_max": 1.0}
OPTIMIZERS = {
    "momentum-sgd": {"training.optimizer": "sgd", "training.momentum": 0.9, "training.lr": 0.01},
    "adam": {"training.optimizer": "adam", "training.lr": 0.01},
}


def setup_for(optimizer: dict[str, Any]) -> Any:
    table = {
        "topology.kind": "complete",
        "secure.enabled": False,
        "training.rounds": ROUNDS,
        # A round's training lasts long enough to be caught in (0.3-0.6 s idle): the watch
        # runs every 0.1 s or more and the status file may be 0.2 s behind the phase.
        "training.local_epochs": 240,
        "gossip.round_timeout": 240.0,  # the neighbours wait for the restart, never close early
        "baselines.pooled": False,
        "baselines.local": False,
        **optimizer,
    }
    scenario = load_scenario(ROOT / "simulations" / "hospitals.toml", table)
    return prepare(dataclasses.replace(scenario, sweep={}))


def final_models(root: Path) -> list[np.ndarray]:
    return [
        read_checkpoint(root / f"n{i}" / "checkpoints" / f"round-{ROUNDS:06d}.ckpt").model
        for i in range(NODES)
    ]


def has_checkpoint(federation: Federation, i: int, round_: int) -> bool:
    ckpts = federation.sites[i].directory / "checkpoints"
    return any(r >= round_ for r, _ in list_checkpoints(ckpts))


def phase_of(federation: Federation, i: int) -> tuple[str, int]:
    try:
        status = read_status(federation.sites[i].directory)
    except P2PFLError:
        return "", -1
    return str(status.get("phase")), int(status.get("round", -1))


def kill_after_checkpoint(state: dict[str, Any]) -> Any:
    """A watch that SIGKILLs the victim once, in round k+1's training, and restarts it."""

    def watch(federation: Federation) -> None:
        if "killed_after" in state:
            return
        phase, round_ = phase_of(federation, VICTIM)
        k = round_ - 1  # the last round completed (rounds are numbered from 1)
        if phase != "training" or not FIRST_KILL < k < ROUNDS - 1:
            return
        # Everyone holds round k (so the victim's round-k frame reached them all) and the
        # victim trains k+1: nothing of round k+1 has left it yet.
        if not all(has_checkpoint(federation, i, k) for i in range(NODES)):
            return
        proc = federation.procs[VICTIM]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        state["killed_after"] = k
        federation.start(VICTIM)

    return watch


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_daemon_killed_and_restarted_ends_with_the_uninterrupted_parameters(
    tmp_path: Path, name: str
) -> None:
    setup = setup_for(OPTIMIZERS[name])
    straight_root, restarted_root = tmp_path / "straight", tmp_path / "restarted"
    run_processes(setup, "straight", root=straight_root, timeout=900, limits=LIMITS)
    state: dict[str, Any] = {}
    run_processes(
        setup,
        "restarted",
        root=restarted_root,
        timeout=900,
        limits=LIMITS,
        watch=kill_after_checkpoint(state),
    )
    assert "killed_after" in state, "the victim was never caught training after a checkpoint"
    k = state["killed_after"]

    victim = restarted_root / f"n{VICTIM}"
    resumed = [e for e in read_entries(victim / "audit.jsonl") if e["event"] == "resumed"]
    assert [e["round"] for e in resumed] == [k]
    # It trained the interrupted round again, from its checkpoint, with the optimizer state.
    ckpt = read_checkpoint(victim / "checkpoints" / f"round-{k:06d}.ckpt")
    assert ckpt.has_state and set(ckpt.state) and all(v.any() for v in ckpt.state.values())
    for root in (straight_root, restarted_root):
        for i in range(NODES):
            for r, path in list_checkpoints(root / f"n{i}" / "checkpoints"):
                meta = read_checkpoint(path, model=False).meta
                assert meta["stragglers"] == [] and len(meta["arrived"]) == NODES - 1, (root, i, r)

    for i, (got, want) in enumerate(
        zip(final_models(restarted_root), final_models(straight_root), strict=True)
    ):
        gap = float(np.linalg.norm(got - want))
        assert gap <= 1e-6 * float(np.linalg.norm(want)), (i, gap)

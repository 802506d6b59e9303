"""Every link reset at the moment a round ends: no secure round waits for a lost frame.

Four ``p2pfl node run`` daemons, secure, each behind a ``FaultProxy`` that
delays every chunk 50 ms each way (so a round's last frames are still in
flight when a neighbour finishes its round) and resets nothing at random; the
harness resets every proxied connection at once whenever a daemon's status
file shows one more round completed (``Settings.reset_on_round``). What dies
with those resets is what a node that just finished its round still owes its
slower neighbours: their masked inputs and reveals, its share relays and
declarations. The link's replay must bring it back (``p2pfl.node.links``,
``p2pfl.node.exchange.replay_floor``). It did not when a node dropped a
round's frames for replay as soon as its own round ended: the neighbour's
round then waited for its secure timeout and declared the node dropped (the
stalls of about 61 s in the 16-daemon soak). So here no round may miss a
neighbour, none is abandoned or skipped, and none lasts as long as the secure
timeouts. And the ledgers must converge: the reset that comes as the last node
finishes kills its last figures and progress in flight, and that node, whose
neighbours had all finished, left at once; they waited out their linger for
its progress and ended one record short (seen on an idle machine, where the
harness resets within milliseconds of the round's end). It now stays until
every neighbour holds its records (``Node.delivered``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from p2pfl.transport.faultproxy import LinkFaults

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from simulations.bench.soak_harness import Settings, soak  # noqa: E402

NODES, ROUNDS, TIMEOUT = 4, 8, 20.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


def test_links_reset_as_rounds_end_lose_no_round_frame(tmp_path: Path) -> None:
    settings = Settings(
        NODES,
        ROUNDS,
        seed=2,
        faults=LinkFaults(latency=0.05),
        warmup=1,
        interval=0.02,
        timeout=400.0,
        round_timeout=TIMEOUT,
        reset_on_round=True,
    )
    result = soak(tmp_path, settings)

    assert result.resets >= ROUNDS  # links were cut as the rounds ended
    for node in result.nodes:
        assert node.returncode == 0, node.log_tail
        assert node.completed == list(range(1, ROUNDS + 1)), node.name
        assert node.stragglers == 0, (node.name, node.log_tail)  # nobody declared dropped
        assert node.abandoned == 0 and node.skipped == [], node.name
        assert node.slowest < TIMEOUT, (node.name, node.slowest)  # no round waited it out
        assert node.audit_intact, node.name
    assert result.records_converged and result.state_vectors_converged

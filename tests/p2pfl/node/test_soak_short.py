"""A short soak: four ``p2pfl node run`` daemons, secure, behind fault proxies that reset links.

The harness of simulations/bench/soak_bench.py (which runs 16 daemons for 200
rounds), smaller: every daemon has a ``FaultProxy`` in front of it (the ledger
records the proxy, ``[node] advertise``) adding latency, jitter, a bandwidth cap
and resets. A connection is reset once it has forwarded a number of bytes drawn
from its seeded generator (``LinkFaults.resets_per_mb``: 100 kB on average),
never after a time: the rounds move the same bytes however fast the machine, so
a fast run meets as many resets as a slow one (about 200 kB cross each link in
30 rounds, so a dozen or so resets; a time-based rate gave a run of 5 s on an
idle machine none). Every round must
complete on every node, missing only as many neighbours as the secure threshold
allows (and then none abandoned or skipped); the saved ledgers must hold the same
records and state vector; every audit chain must verify; RSS and open descriptors,
sampled from /proc while the rounds run, must stay within a loose bound (25%) after
a warm-up.

The plan's secure timeouts are 8 seconds (share, masked, unmask): a reset in the
middle of a secure round can stall it until a timeout (the soak bench shows it),
and with the usual 60 s one such round alone would outlast the test's budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from p2pfl.transport.faultproxy import LinkFaults

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from simulations.bench.soak_harness import Settings, growth, soak, training  # noqa: E402

NODES, ROUNDS, WARMUP = 4, 30, 5
# Sampled every 50 ms: an idle machine runs the 25 rounds after the warm-up in about
# 2.5 s, which the bench's 0.5 s left with fewer than the six samples growth needs.
INTERVAL = 0.05
BOUND = 0.25
RESETS_PER_MB = 10.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


def test_daemons_soak_through_resetting_proxies(tmp_path: Path) -> None:
    faults = LinkFaults(latency=0.002, jitter=0.003, bandwidth=10e6, resets_per_mb=RESETS_PER_MB)
    settings = Settings(
        NODES,
        ROUNDS,
        seed=1,
        faults=faults,
        warmup=WARMUP,
        timeout=900.0,
        round_timeout=8.0,
        interval=INTERVAL,
    )
    result = soak(tmp_path, settings)

    print(f"{result.resets} resets, {result.proxied_bytes / 1e6:.2f} MB proxied")
    assert result.resets > 0  # the proxies did cut links under the rounds
    for node in result.nodes:
        assert node.returncode == 0, node.log_tail
        assert node.completed == list(range(1, ROUNDS + 1)), node.name
        assert node.stragglers <= result.tolerance, node.name
        if node.stragglers <= result.tolerance:
            assert node.abandoned == 0 and node.skipped == [], node.name
        assert node.audit_intact, node.name
        kept = training(node.samples, WARMUP, ROUNDS)
        rss, fds = growth(kept, "rss"), growth(kept, "fds")
        assert rss is not None and fds is not None, f"{node.name}: too few samples"
        assert max(rss) < BOUND, (node.name, rss)
        assert fds[0] < BOUND, (node.name, fds)
    assert result.records_converged
    assert result.state_vectors_converged

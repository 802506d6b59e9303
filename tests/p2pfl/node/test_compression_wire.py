"""CHOCO compression in the daemon: the bytes a round puts on the wire shrink as promised.

Three in-memory sites train an MLP of about 10k parameters for two rounds, once
with plain D-PSGD frames and once per compressor. Each round's ``bytes_sent`` (the
frames the round core sent, without the channel tag) must fall by at least 90% of
the ratio the compressor promises: 32/bits for quantization (bit-packed levels), and
1/(2 x fraction) for top-k (a float32 value and a uint32 index per kept entry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from memory_federation import SITES, run_peers

from p2pfl.node.bootstrap import Site, local_federation
from p2pfl.node.events import RoundCompleted

pytestmark = pytest.mark.slow
ROUNDS = 2
HIDDEN = 256  # 37 x 256 + 256 + 256 x 2 + 2 = 10,242 parameters


def _plan(gossip: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "mlp", "hidden": [HIDDEN]},
        "training": {"rounds": ROUNDS, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"round_timeout": 60.0, **gossip},
    }


def _round_bytes(root: Path, gossip: dict[str, Any]) -> list[int]:
    sites = [
        Site(s.lower(), f"memory://{s.lower()}", "p2pfl.node.examples:heart_site", [s])
        for s in SITES
    ]
    files = local_federation(root, sites, _plan(gossip), tls=False)
    run = run_peers(files)
    sent = [e.bytes_sent for events in run.events for e in events if isinstance(e, RoundCompleted)]
    assert len(sent) == ROUNDS * len(SITES), "every site completes every round"
    return sent


@pytest.mark.parametrize(
    ("gossip", "promised"),
    [
        ({"mode": "choco", "compression": "quantize", "bits": 4}, 32 / 4),
        ({"mode": "choco", "compression": "quantize", "bits": 8}, 32 / 8),
        ({"mode": "choco", "compression": "topk", "topk_fraction": 0.01}, 1 / (2 * 0.01)),
    ],
    ids=["quantize4", "quantize8", "topk1%"],
)
def test_compressed_rounds_send_the_promised_fraction(
    tmp_path: Path, gossip: dict[str, Any], promised: float
) -> None:
    dense = _round_bytes(tmp_path / "dense", {"mode": "sync"})
    compressed = _round_bytes(tmp_path / "compressed", gossip)
    params = 37 * HIDDEN + HIDDEN + HIDDEN * 2 + 2
    # Two neighbours each: a dense round sends at least two float32 models.
    assert min(dense) >= 2 * 4 * params
    ratio = min(dense) / max(compressed)
    assert ratio >= 0.9 * promised, (
        f"{gossip}: dense {min(dense)} B vs compressed {max(compressed)} B per round: "
        f"{ratio:.1f}x, promised {promised:.0f}x"
    )

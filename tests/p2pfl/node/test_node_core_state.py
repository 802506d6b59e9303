"""A round core's state through a real checkpoint file, as a restarted node reads it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p2pfl.node import checkpoint as ckpt
from p2pfl.node.round_files import CORE_STATE
from protocols.compression import QuantizeCompressor
from protocols.gossip import ChocoGossip, Neighbourhood


def hood(me: str) -> Neighbourhood:
    others = {p: 0.5 for p in ("a", "b") if p != me}
    return Neighbourhood(0.5, others, others)


def core(me: str) -> ChocoGossip:
    return ChocoGossip(
        me, lambda _r: hood(me), compressor=QuantizeCompressor(bits=4), gamma=0.5, seed=3
    )


def test_a_choco_core_restarts_from_a_checkpoint_with_the_copies_its_neighbour_holds(
    tmp_path: Path,
) -> None:
    a, b = core("a"), core("b")
    rng = np.random.default_rng(0)
    models = {"a": rng.standard_normal(9).astype(np.float32), "b": np.zeros(9, np.float32)}
    for r in range(2):
        out_a = a.start_round(r, models["a"], 0.0)
        out_b = b.start_round(r, models["b"], 0.0)
        (mixed_b,) = b.receive("a", out_a.sends[0][1], 0.0).events
        (mixed_a,) = a.receive("b", out_b.sends[0][1], 0.0).events
        models = {"a": mixed_a.model + 1, "b": mixed_b.model - 1}
    state = {CORE_STATE + k: v for k, v in a.export_state().items()}
    path = ckpt.write_checkpoint(tmp_path, 1, models["a"], {"node": "a"}, state=state)
    back = ckpt.read_checkpoint(path)
    restored = core("a")
    restored.import_state(
        {k[len(CORE_STATE) :]: v for k, v in back.state.items() if k.startswith(CORE_STATE)}
    )
    restored.resume_at(2)
    # Restored and uninterrupted cores make the same message and mix the same round.
    out_b = b.start_round(2, models["b"], 0.0)
    for side in (a, restored):
        out = side.start_round(2, models["a"].copy(), 0.0)
        (mixed,) = side.receive("b", out_b.sends[0][1], 0.0).events
        side_msg = out.sends[0][1]
        if side is a:
            expected, expected_msg = mixed.model, side_msg
    np.testing.assert_array_equal(mixed.model, expected)
    np.testing.assert_array_equal(side_msg.payload.values, expected_msg.payload.values)
    b.receive("a", expected_msg, 0.0)  # b closes round 2 too
    # b's copy of a equals a's own copy, before and after the restart.
    np.testing.assert_array_equal(b.export_state()["copy:a"], restored.export_state()["own"])

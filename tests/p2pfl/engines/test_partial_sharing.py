"""Partial sharing on the engines: frames carry the shared layers only, and the engines agree.

The four hospitals on the complete graph, logistic regression whose bias is
personal (``personalise.layers = ["1.bias"]``). The protocol engine runs the
daemon's cores over the wire format; every frame it delivers is decoded here.
The daemons' side is the parity matrix (``test_engines_parity.py``, its
``partial`` cells).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.spec import PersonaliseSection
from protocols import secagg, wire

ROOT = Path(__file__).resolve().parents[3]
PARTIAL = {"personalise.method": "partial", "personalise.layers": ["1.bias"]}
SECURE = {"secure.enabled": True, "secure.share_timeout": 60.0, "secure.masked_timeout": 30.0}


BASE = {"topology.kind": "complete", **PARTIAL}


def test_the_protocol_engines_frames_carry_the_body_only(delivered: list[bytes], hospitals) -> None:
    setup = prepare(hospitals(**BASE))
    frames = delivered
    result = run_engine("protocol", setup, "protocol")
    assert setup.dim == 76 and setup.shared_dim == 74
    assert len(frames) == 3 * 4 * 3  # rounds x nodes x neighbours
    assert all(wire.decode(f).payload.length == 74 for f in frames)
    final = result.final_params
    # complete graph, weights 1/4: every node holds the same body after a mix, its own bias
    assert torch.allclose(final[:, :74], final[:1, :74].expand(4, -1), atol=1e-6)
    assert len({tuple(row.tolist()) for row in final[:, 74:]}) == 4
    assert result.rounds[0].bytes_per_node == sum(len(f) for f in frames) / (3 * 4)


def test_secure_frames_mask_the_body_only(delivered: list[bytes], hospitals) -> None:
    setup = prepare(hospitals(**BASE, **SECURE, **{"training.rounds": 1}))
    run_engine("protocol", setup, "protocol")
    messages = [secagg.decode(m) for m in delivered]
    codes = [m.codes.shape[0] for m in messages if isinstance(m, secagg.MaskedInput)]
    assert codes == [74] * 12


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_the_vectorized_and_protocol_engines_agree(secure: bool, hospitals) -> None:
    setup = prepare(hospitals(**BASE, **(SECURE if secure else {})))
    ours = run_engine("vectorized", setup, "vectorized")
    theirs = run_engine("protocol", setup, "protocol")
    gap = float((ours.final_params - theirs.final_params).norm() / ours.final_params.norm())
    assert gap <= 1e-5, gap
    if not secure:  # (the vectorized engine counts no key shares, only masked inputs)
        assert ours.rounds[-1].bytes_per_node == theirs.rounds[-1].bytes_per_node
    # and partial sharing is not full sharing: the biases differ from a plain run's
    plain = prepare(dataclasses.replace(setup.scenario, personalise=PersonaliseSection()))
    full = run_engine("vectorized", plain, "full")
    assert not torch.allclose(full.final_params[:, 74:], ours.final_params[:, 74:], atol=1e-4)

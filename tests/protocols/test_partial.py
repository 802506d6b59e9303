"""Partial sharing: the selection of shared coordinates, and round cores that mix only those.

The frames every core sends are decoded here: the personal coordinates of a
model (marked with values no mix could produce) never appear in them, and the
personal part of each node's mixed model is, value for value, what it trained.
"""

from __future__ import annotations

import numpy as np
import pytest
from gossip_harness import metropolis_weights
from hypothesis import given
from hypothesis import strategies as st
from test_round_cores import (
    Net,
    gossip_net,
    names,
    secure_cores,
    secure_tolerance,
    small_graph,
    stacked,
)

from protocols import secagg, wire
from protocols.errors import LocalProtocolError
from protocols.gossip import SyncGossip
from protocols.partial import Selection, personal_blocks
from protocols.rounds import PartialRoundCore, RoundCore

# A model of two layers: "0.weight" (4), "0.bias" (2), "1.weight" (3), "1.bias" (1).
NAMES = ["0.weight", "0.bias", "1.weight", "1.bias"]
SIZES = [4, 2, 3, 1]
HEAD = Selection.of_blocks(personal_blocks(NAMES, SIZES, ["1"]))  # the body is shared
MARK = 1000.0  # personal coordinates hold MARK + node: no mix of body values comes near


def test_blocks_merge_into_ranges_and_name_modules_or_parameters() -> None:
    assert Selection(10, ((0, 6),)) == HEAD
    assert HEAD.shared_dim == 6 and HEAD.personal_dim == 4
    middle = Selection.of_blocks(personal_blocks(NAMES, SIZES, ["0.bias", "1.bias"]))
    assert middle.shared == ((0, 4), (6, 9))
    np.testing.assert_array_equal(middle.indices(), [0, 1, 2, 3, 6, 7, 8])
    # "1" names the module, never "1x.weight" or a parameter that merely starts so
    assert personal_blocks(["1.weight", "10.weight"], [2, 2], ["1"]) == [(2, True), (2, False)]


def test_names_that_match_nothing_and_selections_that_share_nothing_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match=r"\['2'\] name no parameter"):
        personal_blocks(NAMES, SIZES, ["1", "2"])
    with pytest.raises(LocalProtocolError, match="shares nothing"):
        Selection.of_blocks(personal_blocks(NAMES, SIZES, ["0", "1"]))
    with pytest.raises(LocalProtocolError, match="sorted, disjoint"):
        Selection(10, ((4, 6), (0, 2)))
    with pytest.raises(LocalProtocolError, match="last axis must be 6"):
        HEAD.scatter(np.zeros(10), np.zeros(5))


@given(
    blocks=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=8),
    rows=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_gather_takes_the_shared_part_and_scatter_puts_it_back_alone(
    blocks: list[tuple[int, bool]], rows: int, seed: int
) -> None:
    if not any(size and not personal for size, personal in blocks):
        return  # nothing shared: refused, tested above
    selection = Selection.of_blocks(blocks)
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(rows, selection.dim))
    personal = np.concatenate([np.full(s, p, dtype=bool) for s, p in blocks])
    np.testing.assert_array_equal(selection.gather(full), full[:, ~personal])
    new = rng.normal(size=(rows, selection.shared_dim))
    out = selection.scatter(full, new)
    np.testing.assert_array_equal(out[:, personal], full[:, personal])
    np.testing.assert_array_equal(selection.gather(out), new)
    np.testing.assert_array_equal(selection.gather(full[0]), full[0, ~personal])  # one vector


def marked(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    models = {}
    for i in range(n):
        x = rng.normal(size=HEAD.dim).astype(np.float32)
        x[HEAD.shared[0][1] :] = MARK + i
        models[str(i)] = x
    return models


class Recorder:
    """Every frame each wrapped core sent, kept to be decoded."""

    def __init__(self, cores: dict[str, RoundCore]) -> None:
        self.frames: list[bytes] = []
        self.cores: dict[str, RoundCore] = {
            name: _Recording(PartialRoundCore(core, HEAD), self.frames)
            for name, core in cores.items()
        }


class _Recording:
    def __init__(self, core: PartialRoundCore, frames: list[bytes]) -> None:
        self.core, self.frames = core, frames

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self.core, name)
        if not callable(attribute):
            return attribute

        def call(*args: object) -> object:
            out = attribute(*args)
            self.frames.extend(frame for _, frame in out.sends)
            return out

        return call


def test_partial_sync_rounds_mix_the_body_and_never_send_the_head() -> None:
    w = metropolis_weights(small_graph())
    x = marked(5, seed=1)
    plain = gossip_net(w, lambda name, hood: SyncGossip(name, hood))
    rec = Recorder(plain.cores)
    net = Net(rec.cores, rounds=3, train={str(i): 0.1 * i for i in range(5)}).run(x)
    models = stacked(net.models)
    expected_body = np.linalg.matrix_power(w, 3) @ HEAD.gather(stacked(x))
    np.testing.assert_allclose(HEAD.gather(models), expected_body, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(models[:, 6:], stacked(x)[:, 6:])  # the heads as trained
    assert len(rec.frames) == 3 * 2 * small_graph().number_of_edges()
    for frame in rec.frames:
        values = np.asarray(wire.decode(frame).payload.values)
        assert values.shape == (HEAD.shared_dim,)
        assert np.abs(values).max() < MARK / 2  # no personal coordinate on the wire


def test_partial_secure_rounds_mask_only_the_body() -> None:
    w = metropolis_weights(small_graph())
    x = marked(5, seed=2)
    rec = Recorder(secure_cores(w, HEAD.shared_dim))
    net = Net(rec.cores, rounds=1).run(x)
    models = stacked(net.models)
    body = w @ HEAD.gather(stacked(x))
    assert np.abs(HEAD.gather(models) - body).max() <= secure_tolerance(body)
    np.testing.assert_array_equal(models[:, 6:], stacked(x)[:, 6:])
    masked = [m for m in map(secagg.decode, rec.frames) if isinstance(m, secagg.MaskedInput)]
    assert len(masked) == 2 * small_graph().number_of_edges()
    assert all(m.codes.shape == (HEAD.shared_dim,) for m in masked)
    assert all(net.mixed(n, 0).stragglers == () for n in names(5))


def test_a_mix_for_a_round_never_started_is_our_misuse() -> None:
    w = metropolis_weights(small_graph())
    core = PartialRoundCore(gossip_net(w, lambda n, h: SyncGossip(n, h)).cores["0"], HEAD)
    core.start_round(0, marked(5, 0)["0"], 0.0)
    with pytest.raises(LocalProtocolError, match="already started"):
        core.start_round(0, marked(5, 0)["0"], 0.0)

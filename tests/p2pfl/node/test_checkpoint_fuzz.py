"""A damaged checkpoint is a CheckpointError, whatever its metadata holds.

Mutated files once made ``read_checkpoint`` raise ``TypeError``, ``ValueError``
and ``OverflowError``: a round that is a float or a string, a negative
dimension balanced by the state's sizes, a digest of the wrong type. Each such
case is kept here, and hypothesis rewrites the metadata fields with values of
every type.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.node.checkpoint import MAGIC, read_checkpoint, write_checkpoint
from p2pfl.node.errors import CheckpointError


def forged(meta: dict[str, Any], body: bytes = b"\0" * 8) -> bytes:
    packed = msgpack.packb(meta, use_bin_type=True)
    return MAGIC + struct.pack("<I", len(packed)) + packed + body


def valid_meta(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"round": 1, "dim": 2, "sha256": b"\0" * 32}
    meta.update(changes)
    return meta


CASES = {
    "round is infinite": valid_meta(round=float("inf")),
    "round is a string": valid_meta(round="one"),
    "round is a list": valid_meta(round=[1]),
    "round is negative": valid_meta(round=-3),
    "negative dim balanced by the state": valid_meta(dim=-1, state=[["m", 3]]),
    "sha256 is an integer": valid_meta(sha256=5),
    "sha256 is a string": valid_meta(sha256="ab" * 32),
    "state_sha256 is a map": valid_meta(dim=1, state=[["m", 1]], state_sha256={"a": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("keep", [True, False])
def test_bad_metadata_is_a_checkpoint_error(tmp_path: Path, case: str, keep: bool) -> None:
    path = tmp_path / "round-000001.ckpt"
    path.write_bytes(forged(CASES[case]))
    with pytest.raises(CheckpointError):
        read_checkpoint(path, model=keep)


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=40),
    st.lists(st.integers(-5, 5), max_size=3),
    st.lists(st.tuples(st.text(max_size=3), st.integers(-5, 5)).map(list), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**64 - 1), max_size=2),
)
fields = st.sampled_from(["round", "dim", "sha256", "state", "state_sha256"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(fields, values, max_size=5), st.integers(0, 24))
def test_any_metadata_reads_back_or_is_a_checkpoint_error(
    tmp_path_factory: pytest.TempPathFactory, changes: dict[str, Any], body: int
) -> None:
    path = tmp_path_factory.mktemp("ckpt") / "round-000001.ckpt"
    path.write_bytes(forged(valid_meta(**changes), b"\0" * body))
    for keep in (True, False):
        with contextlib.suppress(CheckpointError):
            read_checkpoint(path, model=keep)


def test_a_written_checkpoint_still_reads_back(tmp_path: Path) -> None:
    model = np.arange(4, dtype=np.float32)
    path = write_checkpoint(tmp_path, 3, model, state={"m": np.ones(2, dtype=np.float32)})
    back = read_checkpoint(path)
    assert back.round == 3 and np.array_equal(back.model, model)
    assert np.array_equal(back.state["m"], np.ones(2, dtype=np.float32))

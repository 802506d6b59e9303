"""A node joining a federation that trains: its start model from its new neighbours.

A member admitted and approved while the others train is a joiner
(``p2pfl.node.membership``): the members acknowledge its join, and from the
boundary round b it is a member of the new epoch. Before its first round it
asks each in-neighbour of its epoch for its model (a control message,
``ask_model``); a neighbour that counts it among the joiners answers with the
model it ended its last completed round with (``model_reply``), and, while a
join is upcoming, records that model's digest (SHA-256 of its float32 bytes,
``model_digest``) with its progress in the ledger. The joiner keeps only
answers whose round and digest match the neighbour's progress record, waits
until it has one from every in-neighbour for the same round k >= b - 1, and
starts round k + 1 from their mean: no stale model is mixed into theirs, and
no neighbour can hand it a model other than the one it recorded.

What a neighbour reveals so is its model after mixing, which it would send its
neighbours in plain gossip; under secure aggregation that model is the
aggregate of its own neighbourhood, not any member's trained model, and only
a joiner of its epoch ever gets it (docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from protocols.errors import DecodeError

MAX_CONTROL_HEADER = 256


def model_digest(model: npt.NDArray[Any]) -> bytes:
    """SHA-256 of a model vector's float32 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(model, dtype="<f4").tobytes()).digest()


def ask_model() -> bytes:
    return msgpack.packb({"ask": "model"})


def model_reply(round_: int, model: npt.NDArray[Any]) -> bytes:
    vector = np.ascontiguousarray(model, dtype="<f4")
    return msgpack.packb({"model": int(round_), "values": vector.tobytes()})


def decode_control(body: memoryview, dim: int | None) -> tuple[str, int | None, Any]:
    """``("ask", None, None)`` or ``("model", round, vector)``; ``DecodeError`` otherwise.

    A model must have ``dim`` float32 entries (unknown: ``None``, any length).
    """
    try:
        message = msgpack.unpackb(
            bytes(body), max_bin_len=(4 * dim if dim else 1 << 30), max_map_len=4
        )
    except Exception as exc:  # msgpack raises many types for bad input
        raise DecodeError(f"control message: {exc}") from None
    if message == {"ask": "model"}:
        return "ask", None, None
    if isinstance(message, dict) and set(message) == {"model", "values"}:
        round_, values = message["model"], message["values"]
        whole = isinstance(values, bytes) and len(values) % 4 == 0
        if (
            type(round_) is int
            and round_ >= 0
            and whole
            and (dim is None or len(values) == 4 * dim)
        ):
            return "model", round_, np.frombuffer(values, dtype="<f4")
    raise DecodeError("control message: neither a model request nor a model")


def start_model(
    replies: dict[str, tuple[int, npt.NDArray[np.float32]]],
    recorded: dict[str, tuple[int, bytes]],
    peers: list[str],
    earliest: int,
) -> tuple[int, npt.NDArray[np.float32]] | None:
    """The round and mean model to start from, once every peer's answer is checked.

    ``replies``: each peer's answer (round, model); ``recorded``: each member's last
    progress (round, digest) in the ledger. ``None`` while some peer's answer is
    missing, does not match its record, is before ``earliest`` or of another round.
    """
    rounds = set()
    for peer in peers:
        reply, record = replies.get(peer), recorded.get(peer)
        if reply is None or record is None or reply[0] != record[0] or reply[0] < earliest:
            return None
        if model_digest(reply[1]) != record[1]:
            return None
        rounds.add(reply[0])
    if len(rounds) != 1 or not peers:
        return None
    stacked = np.stack([replies[p][1] for p in peers]).astype(np.float64)
    mean: npt.NDArray[np.float32] = (stacked.sum(axis=0) / len(peers)).astype(np.float32)
    return rounds.pop(), mean

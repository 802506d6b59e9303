"""Energy estimates: bytes on the wire and seconds of training, priced in joules.

The point is to compare settings (topologies, compression, local steps) by cost,
not to measure anybody's electricity bill: every factor is an assumption that
the ``[energy]`` section of a scenario lets users set for their own network and
hardware. Two terms, both linear:

- network: ``bytes sent × joules_per_byte``;
- compute: ``training seconds × cores × watts_per_core × pue``, the way the
  Green Algorithms calculator (Lannelongue, Grealey & Inouye, Advanced Science
  2021) prices CPU time, with every core taken as fully busy.

What a simulated run measures today (``p2pfl.engines.common``): each round
record carries ``bytes_per_node`` (bytes one node sent that round, averaged
over the nodes), the run knows its number of nodes, and local-training wall
time is known only for the whole run. So ``run_energy`` takes the training
time of the run and spreads it evenly over the rounds; it does not pretend to
know one round's compute. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pfl.errors import ConfigError

JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class EnergySection:
    """The factors that turn bytes and seconds into joules (a scenario's ``[energy]``).

    ``joules_per_byte`` (default 6.75e-6 J/B, about 0.84 µJ per bit): energy to
    carry one byte between two sites over the Internet. Aslan, Mayers, Koomey &
    France (J. Industrial Ecology 22(4), 2018) estimate 0.06 kWh/GB for 2015 for
    core and fixed-line access networks, halving about every two years; carried
    forward to 2025 that is 0.06 / 2^5 ≈ 0.0019 kWh/GB, the default. Published
    figures span four orders of magnitude with the year and what is counted
    (Coroama & Hilty, Environ. Impact Assess. Rev. 45, 2014: 0.0064 to 136
    kWh/GB); counting only the routers and links of a wide-area path gives
    figures in the nJ-per-bit range, far lower. An assumption: set it for your
    network (0 leaves the network out).

    ``watts_per_core`` (default 12 W): power of one busy CPU core, taken as its
    share of the processor's thermal design power, which is about 10 to 15 W
    on common server processors (the Green Algorithms approach). Set it from
    your processor's TDP divided by its cores, or a GPU's power for GPU
    training with ``cores = 1``.

    ``cores`` (default 1): cores one node's local training keeps busy.

    ``pue`` (default 1.0): the data centre's power usage effectiveness, facility
    power over IT power. 1.0 counts the computers alone; industry surveys
    report averages around 1.5 to 1.6, large cloud operators about 1.1. It
    multiplies compute only: the network figure above already covers the
    network's own buildings as far as its sources do.
    """

    joules_per_byte: float = 6.75e-6
    watts_per_core: float = 12.0
    cores: int = 1
    pue: float = 1.0

    def __post_init__(self) -> None:
        _check_number("energy.joules_per_byte", self.joules_per_byte, minimum=0.0)
        _check_number("energy.watts_per_core", self.watts_per_core, minimum=0.0)
        _check_number("energy.pue", self.pue, minimum=1.0)
        if not isinstance(self.cores, int) or isinstance(self.cores, bool) or self.cores < 1:
            raise ConfigError(
                f"energy.cores must be a whole number of cores >= 1, not {self.cores!r}"
            )


def _check_number(key: str, value: Any, *, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum:g}, not {value!r}")


def round_energy(
    bytes_sent: float, compute_seconds: float, factors: EnergySection
) -> dict[str, float]:
    """Joules for ``bytes_sent`` bytes and ``compute_seconds`` seconds of training.

    The scope is the caller's: one node's round, or the whole federation's.
    ``compute_seconds`` is wall time of one training process; it is multiplied
    by ``factors.cores``. Negative or non-finite inputs are a ``ValueError``
    (a bug in the caller, not a user's setting).
    """
    _check_measure("bytes_sent", bytes_sent)
    _check_measure("compute_seconds", compute_seconds)
    network = bytes_sent * factors.joules_per_byte
    compute = compute_seconds * factors.cores * factors.watts_per_core * factors.pue
    return {"network_j": network, "compute_j": compute, "total_j": network + compute}


def _check_measure(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def run_energy(
    rounds: Sequence[Mapping[str, Any]],
    nodes: int,
    train_seconds: float,
    factors: EnergySection,
) -> dict[str, Any]:
    """The energy of one simulated run, for the whole federation: per round and in total.

    ``rounds`` are the run's round records as dicts (``dataclasses.asdict`` of
    ``RoundRecord``, as in a report's ``runs[i]["rounds"]``): each needs
    ``bytes_per_node``, and ``round`` labels it when present. ``nodes`` is the
    number of nodes, so a round's bytes are ``bytes_per_node × nodes``.
    A record's ``train_seconds`` (when every record has one) is that round's
    measured local-training time of all nodes together; otherwise
    ``train_seconds``, the run's total (node-seconds), is spread evenly.

    Returns ``network_j``, ``compute_j``, ``total_j``, ``total_kwh``,
    ``per_node_j``, ``bytes``, ``compute_seconds``, ``per_round`` (one dict per
    round: ``round``, ``bytes``, ``compute_seconds``, ``network_j``,
    ``compute_j``, ``total_j``) and ``factors``, ready for a JSON report.
    """
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise ValueError(f"nodes must be a whole number >= 1, got {nodes!r}")
    _check_measure("train_seconds", train_seconds)
    measured = bool(rounds) and all(r.get("train_seconds") is not None for r in rounds)
    even = train_seconds / len(rounds) if rounds else 0.0
    per_round = [
        _round_row(
            index, record, nodes, float(record["train_seconds"]) if measured else even, factors
        )
        for index, record in enumerate(rounds, start=1)
    ]
    totals = {key: sum(row[key] for row in per_round) for key in _SUMMED}
    if not rounds:
        totals.update(round_energy(0.0, train_seconds, factors))
        totals["compute_seconds"] = train_seconds
    return {
        **totals,
        "total_kwh": totals["total_j"] / JOULES_PER_KWH,
        "per_node_j": totals["total_j"] / nodes,
        "per_round": per_round,
        "factors": dataclasses.asdict(factors),
    }


_SUMMED = ("bytes", "compute_seconds", "network_j", "compute_j", "total_j")


def _round_row(
    index: int, record: Mapping[str, Any], nodes: int, seconds: float, factors: EnergySection
) -> dict[str, Any]:
    if "bytes_per_node" not in record:
        raise ValueError(f"round record {index} has no 'bytes_per_node': {dict(record)!r}")
    sent = float(record["bytes_per_node"]) * nodes
    return {
        "round": record.get("round", index),
        "bytes": sent,
        "compute_seconds": seconds,
        **round_energy(sent, seconds, factors),
    }

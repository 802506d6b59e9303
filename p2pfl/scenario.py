"""Scenario files: one TOML file describes a whole simulated federation.

Every section is a frozen dataclass; a key the dataclass does not know is an
error naming the key and the file, and a value of the wrong type is an error
naming the key, the type wanted and the value given. ``[sweep]`` maps dotted
keys to lists of values: the scenario runs once per combination, side by side.
``--set key=value`` overrides any dotted key before validation.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfl.drift import DriftSection
from p2pfl.energy import EnergySection
from p2pfl.errors import ConfigError
from p2pfl.privacy.config import PrivacySection
from p2pfl.tables import build


@dataclass(frozen=True)
class DataSection:
    dataset: str = "heart"
    partition: str = "natural"
    nodes: int = 4
    alpha: float = 0.5
    classes_per_node: int = 2
    test_fraction: float = 0.2
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    data_dir: str | None = None


@dataclass(frozen=True)
class ModelSection:
    name: str = "logreg"
    hidden: list[int] | None = None


@dataclass(frozen=True)
class TrainingSection:
    rounds: int = 20
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class TopologySection:
    kind: str = "ring"
    weights: str = "metropolis"
    degree: int | None = None
    seed: int | None = None
    path: str | None = None
    p: float | None = None
    k: int | None = None
    m: int | None = None


@dataclass(frozen=True)
class GossipSection:
    mode: str = "sync"
    compression: str = "none"
    bits: int = 4
    topk_fraction: float = 0.01
    gamma: float = 1.0


@dataclass(frozen=True)
class ClockSection:
    """The protocol engine's virtual clock (seconds); the vectorized engine ignores it."""

    latency: float = 0.005
    bandwidth: float = 1.0e9
    step_time: float = 0.002
    speeds: list[float] = field(default_factory=list)
    round_timeout: float | None = None


@dataclass(frozen=True)
class SecureSection:
    """Secure aggregation over each neighbourhood (sync mode only).

    The fixed-point step is 1 / ``scale``; each contribution W_ij x_j is clipped
    to [-``clip``, ``clip``]. The defaults (step 2^-18, clip 8) keep the codes on
    the fast 32-bit path and neighbourhoods up to 256 without overflow.

    ``dropouts`` lists [node, round] pairs: that node vanishes after dealing its
    shares in that round (rounds count from 0). Timeouts are virtual seconds of
    the protocol engine's clock; the share phase opens when a node starts its
    round, before its neighbours (who may still be closing the previous round
    over a dropout) can deal, so its timeout is the longest.
    """

    enabled: bool = False
    scale: float = 262144.0
    clip: float = 8.0
    modulus_bits: int = 32
    threshold: int | None = None
    sparse_k: int | None = None
    dropouts: list[list[int]] = field(default_factory=list)
    share_timeout: float = 600.0
    masked_timeout: float = 60.0
    unmask_timeout: float = 60.0


@dataclass(frozen=True)
class BaselineSection:
    pooled: bool = False
    local: bool = False
    personalised_steps: int = 0


@dataclass(frozen=True)
class EvalSection:
    every: int = 1
    chunk: int = 64


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    seed: int = 0
    engine: str = "vectorized"
    device: str = "auto"
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    topology: TopologySection = field(default_factory=TopologySection)
    gossip: GossipSection = field(default_factory=GossipSection)
    secure: SecureSection = field(default_factory=SecureSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    drift: DriftSection = field(default_factory=DriftSection)
    energy: EnergySection = field(default_factory=EnergySection)
    clock: ClockSection = field(default_factory=ClockSection)
    baselines: BaselineSection = field(default_factory=BaselineSection)
    eval: EvalSection = field(default_factory=EvalSection)
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.gossip.mode not in MODES:
            raise ConfigError(f"gossip.mode must be one of {', '.join(MODES)}")
        if self.training.rounds < 1:
            raise ConfigError("training.rounds must be at least 1")
        if self.eval.every < 1:
            raise ConfigError("eval.every must be at least 1")
        if self.secure.enabled and self.gossip.mode != "sync":
            raise ConfigError("secure.enabled needs gossip.mode = 'sync'")
        if self.secure.dropouts and not self.secure.enabled:
            raise ConfigError("secure.dropouts are scheduled but secure.enabled is false")
        for pair in self.secure.dropouts:
            if len(pair) != 2 or min(pair) < 0:
                raise ConfigError(f"secure.dropouts entries are [node, round] pairs, got {pair}")


ENGINES = ("vectorized", "protocol", "processes")
MODES = ("sync", "choco", "async")


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax where it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(table: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = table
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


def load_table(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"scenario file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def scenario_from_table(
    table: dict[str, Any], where: str = "scenario", overrides: dict[str, Any] | None = None
) -> Scenario:
    table = _deep_copy(table)
    for key, value in (overrides or {}).items():
        _set_dotted(table, key, value)
    scenario = build(Scenario, table, where)
    for key in scenario.sweep:
        _check_sweep_key(key, where)
    return scenario


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    return scenario_from_table(load_table(path), str(path), overrides)


def _check_sweep_key(key: str, where: str) -> None:
    section, _, name = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(Scenario)}
    if section not in fields or section == "sweep":
        raise ConfigError(f"{where} [sweep]: unknown key {key!r}")
    hint = typing.get_type_hints(Scenario)[section]
    if dataclasses.is_dataclass(hint):
        if name not in {f.name for f in dataclasses.fields(hint)}:
            raise ConfigError(f"{where} [sweep]: unknown key {key!r}")
    elif name:
        raise ConfigError(f"{where} [sweep]: unknown key {key!r}")


def _deep_copy(table: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in table.items()}


def expand_sweep(scenario: Scenario, where: str = "scenario") -> list[tuple[str, Scenario]]:
    """One (label, scenario) per combination of the sweep's values; the base alone if none."""
    if not scenario.sweep:
        return [("base", scenario)]
    keys = list(scenario.sweep)
    base = to_table(scenario)
    base.pop("sweep")
    runs = []
    for values in itertools.product(*(scenario.sweep[k] for k in keys)):
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        runs.append((label, scenario_from_table(base, where, dict(zip(keys, values, strict=True)))))
    return runs


def to_table(scenario: Scenario) -> dict[str, Any]:
    """The scenario as a TOML-ready table (None values left out)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        return obj

    result: dict[str, Any] = clean(dataclasses.asdict(scenario))
    return result

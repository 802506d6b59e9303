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

from p2pfl.datasets import FederatedData, load_federated
from p2pfl.drift import DriftSection
from p2pfl.energy import EnergySection
from p2pfl.errors import ConfigError
from p2pfl.spec import RunSpec
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
class ClockSection:
    """The protocol engine's virtual clock (seconds); the vectorized engine ignores it."""

    latency: float = 0.005
    bandwidth: float = 1.0e9
    step_time: float = 0.002
    speeds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class DropoutSection:
    """Scheduled secure-aggregation dropouts of a simulation.

    ``schedule`` lists [node, round] pairs: that node vanishes after dealing its
    shares in that round (rounds count from 0), so its neighbours must recover.
    """

    schedule: list[list[int]] = field(default_factory=list)


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
class Scenario(RunSpec):
    """A rehearsal: the run spec (``p2pfl.spec``) plus the simulation-only sections."""

    name: str = "scenario"
    engine: str = "vectorized"
    device: str = "auto"
    data: DataSection = field(default_factory=DataSection)
    drift: DriftSection = field(default_factory=DriftSection)
    energy: EnergySection = field(default_factory=EnergySection)
    clock: ClockSection = field(default_factory=ClockSection)
    dropouts: DropoutSection = field(default_factory=DropoutSection)
    baselines: BaselineSection = field(default_factory=BaselineSection)
    eval: EvalSection = field(default_factory=EvalSection)
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.eval.every < 1:
            raise ConfigError("eval.every must be at least 1")
        if self.dropouts.schedule and not self.secure.enabled:
            raise ConfigError("dropouts.schedule is set but secure.enabled is false")
        for pair in self.dropouts.schedule:
            if len(pair) != 2 or min(pair) < 0:
                raise ConfigError(f"dropouts.schedule entries are [node, round] pairs, got {pair}")


def load_data(scenario: Scenario) -> FederatedData:
    """The scenario's federated data, split among its nodes as every engine sees it."""
    d = scenario.data
    return load_federated(
        d.dataset,
        d.nodes,
        d.partition,
        alpha=d.alpha,
        classes_per_node=d.classes_per_node,
        test_fraction=d.test_fraction,
        max_train_samples=d.max_train_samples,
        max_test_samples=d.max_test_samples,
        seed=scenario.seed,
        data_dir=d.data_dir,
    )


ENGINES = ("vectorized", "protocol", "processes")


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

"""Scenario files: one TOML file describes a whole simulated federation.

Every section is a frozen dataclass; a key the dataclass does not know is an
error naming the key and the file, and a value of the wrong type is an error
naming the key, the type wanted and the value given. ``[sweep]`` maps dotted
keys to lists of values: the scenario runs once per combination, side by side.
``--set key=value`` overrides any dotted key before validation.

``[data] dataset`` and ``[model] name`` may name the user's own code as
``module:function`` (docs/your-data.md); the module is looked up in the
scenario file's folder, then the current directory, then ``PYTHONPATH`` and
the installed packages (``search_folders``).
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
from p2pfl.datasets.base import Source
from p2pfl.datasets.user import PER_SITE_PARTITION, load_user_data
from p2pfl.drift import DriftSection
from p2pfl.energy import EnergySection
from p2pfl.entrypoints import CodeSource, is_reference, resolve
from p2pfl.errors import ConfigError
from p2pfl.events import EventSection, check_events
from p2pfl.spec import RunSpec
from p2pfl.tables import build


@dataclass(frozen=True)
class DataSection:
    """The federation's data: a built-in ``dataset`` (``p2pfl.datasets.DATASETS``) or
    ``module:function`` of the user's own, called with ``args`` and ``kwargs``
    (``p2pfl.datasets.user``); ``num_classes`` only applies to the latter."""

    dataset: str = "heart"
    partition: str = "natural"
    nodes: int = 4
    alpha: float = 0.5
    classes_per_node: int = 2
    test_fraction: float = 0.2
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    data_dir: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None


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


ATTACKS = ("sign-flip", "scale", "nan")


@dataclass(frozen=True)
class AttackSection:
    """Byzantine members of a simulation (never part of a deployed plan).

    Each round, after local training, the delta each node in ``nodes`` sends (its
    model, against the zero reference of sync gossip) is replaced: ``sign-flip``
    sends -``scale`` * x, ``scale`` sends ``scale`` * x, ``nan`` sends NaN everywhere. The
    attacker's own core mixes what it sent, as a node that believes it; the report
    gives the honest nodes' accuracy apart (``p2pfl.engines.attack``).
    """

    nodes: list[int] = field(default_factory=list)
    kind: str = "sign-flip"
    scale: float = 100.0

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"attack.kind must be one of {', '.join(ATTACKS)}, not {self.kind!r}")
        if len(set(self.nodes)) != len(self.nodes) or any(i < 0 for i in self.nodes):
            raise ConfigError(f"attack.nodes must be distinct node indices, got {self.nodes}")


@dataclass(frozen=True)
class BaselineSection:
    pooled: bool = False
    minibatch: bool = False
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
    attack: AttackSection = field(default_factory=AttackSection)
    eval: EvalSection = field(default_factory=EvalSection)
    events: list[EventSection] = field(default_factory=list)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    source_file: str | None = field(default=None, compare=False)
    """The file the scenario was read from (not a key of it, nor part of its equality)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.eval.every < 1:
            raise ConfigError("eval.every must be at least 1")
        if self.dropouts.schedule and not self.secure.enabled:
            raise ConfigError("dropouts.schedule is set but secure.enabled is false")
        if self.attack.nodes and self.attack.kind == "nan" and self.secure.enabled:
            raise ConfigError(
                "attack.kind = 'nan' cannot reach a secure neighbourhood: the fixed-point "
                "encoding refuses NaN (use 'scale', docs/threat-model.md)"
            )
        for pair in self.dropouts.schedule:
            if len(pair) != 2 or min(pair) < 0:
                raise ConfigError(f"dropouts.schedule entries are [node, round] pairs, got {pair}")
        check_events(self.events, self.engine, self.gossip.mode, self.privacy.private_metrics)


def search_folders(scenario: Scenario) -> list[str]:
    """Where the scenario's own modules are looked up first: its file's folder, the current one."""
    folders = [] if scenario.source_file is None else [str(Path(scenario.source_file).parent)]
    folders.append(".")
    resolved = [str(Path(f).resolve()) for f in folders]
    return list(dict.fromkeys(resolved))


def _where(scenario: Scenario) -> str:
    return scenario.source_file or "scenario"


def load_data(scenario: Scenario) -> FederatedData:
    """The scenario's federated data, split among its nodes as every engine sees it."""
    d = scenario.data
    if is_reference(d.dataset):
        return _user_data(scenario)
    for name, value in (("args", d.args), ("kwargs", d.kwargs), ("num_classes", d.num_classes)):
        if value:
            raise ConfigError(
                f"{_where(scenario)} [data] {name} applies to a dataset of your own "
                f"('module:function'), not to {d.dataset!r}"
            )
    return _partitioned(scenario, d.dataset, data_dir=d.data_dir)


def _user_data(scenario: Scenario) -> FederatedData:
    d = scenario.data
    key = f"{_where(scenario)} [data] dataset"
    if d.data_dir is not None:
        raise ConfigError(f"{_where(scenario)} [data] data_dir applies to fashion-mnist only")
    user = load_user_data(
        d.dataset,
        d.args,
        d.kwargs,
        nodes=d.nodes,
        num_classes=d.num_classes,
        search=search_folders(scenario),
        key=key,
    )
    if user.sites is not None:
        if d.partition != PER_SITE_PARTITION:
            raise ConfigError(
                f"{key} {d.dataset!r} returned per-site data, which keep their own split: "
                f"[data] partition must be {PER_SITE_PARTITION!r}, not {d.partition!r}"
            )
        for name in ("max_train_samples", "max_test_samples"):
            if getattr(d, name) is not None:
                raise ConfigError(
                    f"{key} {d.dataset!r} returned per-site data: [data] {name} only applies "
                    "to one dataset that the scenario partitions"
                )
        return user.sites
    assert user.pooled is not None
    if d.partition == PER_SITE_PARTITION:
        raise ConfigError(
            f"{key} {d.dataset!r} returned one dataset to partition: set [data] partition "
            f"to iid, dirichlet or classes ({PER_SITE_PARTITION!r} needs per-site data)"
        )
    return _partitioned(scenario, user.pooled)


def _partitioned(
    scenario: Scenario, source: str | Source, data_dir: str | None = None
) -> FederatedData:
    """``source`` (a built-in dataset's name or a user's pooled data) split as ``[data]`` says."""
    d = scenario.data
    return load_federated(
        source,
        d.nodes,
        d.partition,
        alpha=d.alpha,
        classes_per_node=d.classes_per_node,
        test_fraction=d.test_fraction,
        max_train_samples=d.max_train_samples,
        max_test_samples=d.max_test_samples,
        seed=scenario.seed,
        data_dir=data_dir,
    )


def user_code(scenario: Scenario) -> dict[str, dict[str, str]]:
    """The scenario's own dataset loader and model factory: reference, file and SHA-256."""
    found: dict[str, CodeSource] = {}
    where = _where(scenario)
    if is_reference(scenario.data.dataset):
        found["dataset"] = resolve(
            scenario.data.dataset, f"{where} [data] dataset", search_folders(scenario)
        ).source
    if is_reference(scenario.model.name):
        found["model"] = resolve(
            scenario.model.name, f"{where} [model] name", search_folders(scenario)
        ).source
    return {role: source.as_report() for role, source in found.items()}


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
    table: dict[str, Any],
    where: str = "scenario",
    overrides: dict[str, Any] | None = None,
    *,
    source_file: str | Path | None = None,
) -> Scenario:
    """The scenario of ``table``; ``source_file``: the file it came from (where own modules
    are looked up)."""
    table = _deep_copy(table)
    for key, value in (overrides or {}).items():
        _set_dotted(table, key, value)
    scenario = build(Scenario, table, where, skip=frozenset({"source_file"}))
    for key in scenario.sweep:
        _check_sweep_key(key, where)
    if source_file is not None:
        scenario = dataclasses.replace(scenario, source_file=str(source_file))
    return scenario


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    return scenario_from_table(load_table(path), str(path), overrides, source_file=path)


def _check_sweep_key(key: str, where: str) -> None:
    section, _, name = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(Scenario)}
    if section not in fields or section in ("sweep", "source_file"):
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
        overrides = dict(zip(keys, values, strict=True))
        run = scenario_from_table(base, where, overrides, source_file=scenario.source_file)
        runs.append((label, run))
    return runs


def to_table(scenario: Scenario) -> dict[str, Any]:
    """The scenario as a TOML-ready table (None values and ``source_file`` left out)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        return obj

    result: dict[str, Any] = clean(dataclasses.asdict(scenario))
    result.pop("source_file", None)
    return result

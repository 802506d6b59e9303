"""A training plan: the run spec a federation deploys, plus the data every site must hand it.

A plan is the TOML a founder passes to ``p2pfl federation create --plan`` and
every member approves by its hash; ``p2pfl simulate SCENARIO --write-plan
PLAN.toml`` writes the plan of what was simulated, every key explicit, so the
hash the daemons approve is the hash of what was rehearsed. Its keys are the
run spec's sections (``p2pfl.spec.sections``, the same defaults as a
scenario) and::

    seed = 0                      # model initialisation, batch order, random graphs
    members = 4                   # optional: the federation size the plan was made for
    [data]                        # the shapes every site's entrypoint must match
    input_shape = [37]
    num_classes = 2
    [data.schema]                 # optional: columns, units, ranges (``p2pfl.schema``)
    features = [{ name = "age", type = "float", unit = "years", min = 0.0, max = 120.0 }, ...]

With ``members`` set, ``federation create`` checks the plan for that many nodes
at every step of its topology, and a daemon refuses to train with a roster of
another size. Without it, each daemon checks the plan for its roster's size when
training starts. Either check refuses secure neighbourhoods that tolerate no
dropout unless ``[secure] allow_no_dropout = true`` says the federation accepts
them (``_check_dropouts``), and ``check_rounds`` refuses a node asked for more
rounds than the plan's.

A plan without ``[data.schema]`` stays valid (only shapes and labels are
checked); with one, it must name one feature per input value and, if it names
classes, as many as ``num_classes``: each node checks its data against it
before training (``p2pfl.node.data.check_local_data``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import topology
from p2pfl.errors import ConfigError
from p2pfl.schema import Schema, parse_schema, schema_table
from p2pfl.spec.errors import PlanError
from p2pfl.spec.graph import Graph
from p2pfl.spec.run import SPEC_FIELDS, RunSpec
from p2pfl.tables import build
from protocols.records import plan_hash


@dataclass(frozen=True)
class PlanData:
    input_shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    schema: Schema | None = None  # parsed apart from the table (``plan_from_table``)


@dataclass(frozen=True)
class Plan(RunSpec):
    members: int | None = None
    data: PlanData = field(default_factory=PlanData)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.privacy.opt_in:
            raise PlanError(
                "plan [privacy] opt_in: whether a site shares its own figures is its own "
                "choice (`share_metrics` in its node config), not the plan's"
            )
        if not self.data.input_shape or any(d < 1 for d in self.data.input_shape):
            raise PlanError("plan [data] input_shape must list the positive sizes of one sample")
        if self.data.num_classes < 2:
            raise PlanError("plan [data] num_classes must be at least 2")
        if self.data.schema is not None:
            _check_schema_fits(self.data.schema, self.data)
        if self.topology.path is not None:
            raise PlanError("plan [topology] path: a graph file is not shared by the ledger")
        if self.members is not None:
            self.check_for(self.members)

    def check_for(self, n: int) -> None:
        """Refuse (``PlanError``) a plan that cannot run on ``n`` members, naming the step."""
        self._check_size(n)
        with plan_errors(f"plan for {n} members: "):
            topo = self.check(n)
            self._check_dropouts(topo, None)

    def graph(self, roster: tuple[str, ...], *, epoch: bool = False) -> Graph:
        """The members' graph: roster sorted by node id, so every member computes the same.

        ``epoch``: the roster of a later epoch (members left or were revoked), which
        ``members``, the size of the run's roster, does not bound.
        """
        if list(roster) != sorted(set(roster)):
            raise PlanError("the roster must be sorted node ids without repeats")
        if not epoch:
            self._check_size(len(roster))
        with plan_errors(f"plan for {len(roster)} members: "):
            graph = Graph.build(self, roster)
            self._check_dropouts(graph.topo, list(roster))
            return graph

    def check_rounds(self, rounds: int | None) -> int:
        """The rounds a node is asked to complete in all: the plan's, or fewer; else ``PlanError``.

        Every member approved ``training.rounds``: a node that trained beyond them
        would hold checkpoints of rounds no plan covers (``p2pfl export`` refuses them).
        """
        planned = self.training.rounds
        if rounds is None:
            return planned
        if not 1 <= rounds <= planned:
            raise PlanError(
                f"{rounds} rounds asked, but the approved plan has {planned} "
                f"(training.rounds): ask for 1 to {planned}, or publish a plan with more rounds"
            )
        return rounds

    def _check_dropouts(self, topo: topology.Topology, names: list[str] | None) -> None:
        """Refuse secure neighbourhoods that tolerate no dropout, unless the plan accepts them.

        A node with d in-neighbours and threshold t completes a secure round with up to
        d - t of them missing; at zero, one neighbour down or restarting makes it abandon
        the round (it keeps its own model), after waiting out the secure timeouts.
        """
        secure = self.secure
        if not secure.enabled or secure.allow_no_dropout:
            return
        tolerance = self.secure_tolerance(topo, names)
        fragile = sorted(node for node, value in tolerance.items() if value < 1)
        if fragile:
            raise PlanError(
                f"plan [secure]: on topology {topo.kind!r} of {topo.n} nodes, {len(fragile)} "
                f"of {topo.n} secure neighbourhoods tolerate no dropout (first: {fragile[0]}): "
                "one neighbour down or restarting makes them abandon that round's "
                "aggregation; choose a topology with more neighbours per node (or a lower "
                "[secure] threshold), or set [secure] allow_no_dropout = true to accept it"
            )

    def _check_size(self, n: int) -> None:
        if self.members is not None and n != self.members:
            raise PlanError(f"the plan was made for {self.members} members, but the roster has {n}")

    def table(self) -> dict[str, Any]:
        """The plan as a TOML-ready table, every key explicit (its hash is the plan hash)."""
        table: dict[str, Any] = {"seed": self.seed}
        if self.members is not None:
            table["members"] = self.members
        data: dict[str, Any] = {
            "input_shape": list(self.data.input_shape),
            "num_classes": self.data.num_classes,
        }
        if self.data.schema is not None:
            data["schema"] = schema_table(self.data.schema)
        table["data"] = data
        shared = super().table()
        table.update({k: shared[k] for k in SPEC_FIELDS if k != "seed" and k in shared})
        return table

    def hash(self) -> bytes:
        """What every member approves: the hash of ``table()`` as the ledger stores it."""
        return plan_hash(self.table())


@contextlib.contextmanager
def plan_errors(prefix: str = "") -> Iterator[None]:
    """Any ``ConfigError`` inside (a section's check, a bad key) raised as a ``PlanError``."""
    try:
        yield
    except PlanError:
        raise
    except ConfigError as exc:
        raise PlanError(f"{prefix}{exc}") from None


def _check_schema_fits(schema: Schema, data: PlanData) -> None:
    """A schema names one feature per input value, and the plan's classes if any."""
    size = math.prod(data.input_shape)
    if len(schema.features) != size:
        raise PlanError(
            f"plan [data.schema] features: {len(schema.features)} features, but input_shape "
            f"{data.input_shape} has {size} values per sample"
        )
    if schema.classes and len(schema.classes) != data.num_classes:
        raise PlanError(
            f"plan [data.schema] classes: {len(schema.classes)} names, "
            f"but num_classes is {data.num_classes}"
        )


def plan_from_table(table: Mapping[str, Any] | None, where: str = "plan") -> Plan:
    """The ``Plan`` of a plan table (the ledger's record, or a file); ``PlanError`` if bad."""
    if table is None:
        raise PlanError("the ledger holds no valid training plan yet")
    with plan_errors():  # the sections' own checks, unknown keys, bad types
        table = dict(table)
        schema_table_ = None
        if isinstance(table.get("data"), dict) and "schema" in table["data"]:
            table["data"] = dict(table["data"])
            schema_table_ = table["data"].pop("schema")
        plan = build(Plan, table, where)
        if schema_table_ is None:
            return plan
        schema = parse_schema(schema_table_, f"{where} [data.schema]")
        return dataclasses.replace(plan, data=dataclasses.replace(plan.data, schema=schema))


def plan_of(
    spec: RunSpec,
    input_shape: tuple[int, ...] | list[int],
    num_classes: int,
    *,
    members: int | None = None,
    schema: Schema | None = None,
) -> Plan:
    """The plan that deploys ``spec`` (a scenario's shared sections) for data of this shape."""
    shared = {name: getattr(spec, name) for name in SPEC_FIELDS}
    shared["privacy"] = dataclasses.replace(spec.privacy, opt_in=[])  # each site's own choice
    with plan_errors():
        return Plan(
            **shared,
            members=members,
            data=PlanData([int(d) for d in input_shape], int(num_classes), schema),
        )

"""A small deterministic driver for the gossip cores, for tests only.

A ``Harness`` holds a list of cores (node ``i`` has id ``str(i)``), a queue of
encoded frames in flight and a virtual clock ``now``. Every message a core
wants to send goes through ``wire.encode`` into the queue and through
``wire.decode`` out of it, so the tests exercise the bytes as well as the
maths. Which action happens next (start a node, deliver a frame) is picked by
a ``Chooser``: either hypothesis (``data_chooser``) or a seeded numpy
``Generator`` (``rng_chooser``); nothing here reads a clock or global state.

The graph helpers build mixing matrices without ``topology/``: Metropolis-
Hastings weights on a random connected undirected graph (doubly stochastic)
and uniform out-weights on a directed graph (column-stochastic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st

from protocols import wire
from protocols.gossip import (
    ChocoGossip,
    Event,
    GossipCore,
    Neighbourhood,
    NeighbourhoodFn,
    Output,
    Phase,
    PushSumGossip,
    RoundMixed,
    SyncGossip,
)

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[Any]
Chooser = Callable[[int], int]
"""``choose(n)`` returns an index in ``range(n)``; ``n >= 1``."""


def rng_chooser(rng: np.random.Generator) -> Chooser:
    return lambda n: int(rng.integers(n))


def data_chooser(data: st.DataObject) -> Chooser:
    return lambda n: data.draw(st.integers(0, n - 1), label="choice")


# --- graphs and mixing matrices ------------------------------------------------


def random_connected_graph(n: int, rng: np.random.Generator, p: float = 0.3) -> nx.Graph:
    """A random spanning tree (connected by construction) plus each other edge with chance ``p``."""
    g = nx.Graph()
    g.add_nodes_from(range(n))
    order = rng.permutation(n)
    for k in range(1, n):
        g.add_edge(int(order[k]), int(order[rng.integers(k)]))
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < p:
                g.add_edge(i, j)
    assert nx.is_connected(g)
    return g


def metropolis_weights(g: nx.Graph) -> Matrix:
    """Metropolis-Hastings: W_ij = 1 / (1 + max(d_i, d_j)) on edges (doubly stochastic)."""
    n = g.number_of_nodes()
    w = np.zeros((n, n))
    for i, j in g.edges():
        w[i, j] = w[j, i] = 1.0 / (1 + max(g.degree[i], g.degree[j]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w


def directed_ring_graph(n: int, rng: np.random.Generator, p: float = 0.2) -> nx.DiGraph:
    """A directed ring (strongly connected by construction) plus random chords with chance ``p``."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for i in range(n):
        g.add_edge(i, (i + 1) % n)
        for j in range(n):
            if j != i and rng.random() < p:
                g.add_edge(i, j)
    assert nx.is_strongly_connected(g)
    return g


def exponential_graph(n: int, hops: Sequence[int] | None = None) -> nx.DiGraph:
    """i -> i + 2^k (mod n) for k = 0, 1, ...; ``hops`` picks which k."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    ks = range(max(1, (n - 1).bit_length())) if hops is None else hops
    for i in range(n):
        for k in ks:
            j = (i + (1 << k)) % n
            if j != i:
                g.add_edge(i, j)
    return g


def column_stochastic_weights(g: nx.DiGraph) -> Matrix:
    """Uniform out-weights: node i keeps and sends 1 / (out-degree + 1) of its mass to each."""
    n = g.number_of_nodes()
    w = np.zeros((n, n))
    for i in range(n):
        share = 1.0 / (g.out_degree[i] + 1)
        w[i, i] = share
        for j in g.successors(i):
            w[j, i] = share
    return w


def second_eigenvalue(w: Matrix) -> float:
    """The second largest eigenvalue modulus of a symmetric mixing matrix."""
    return float(np.sort(np.abs(np.linalg.eigvalsh(w)))[-2])


def neighbourhood(w: Matrix, i: int) -> Neighbourhood:
    n = w.shape[0]
    return Neighbourhood(
        self_weight=float(w[i, i]),
        in_weights={str(j): float(w[i, j]) for j in range(n) if j != i and w[i, j] > 0},
        out_shares={str(j): float(w[j, i]) for j in range(n) if j != i and w[j, i] > 0},
    )


def schedule(matrices: Sequence[Matrix], i: int) -> NeighbourhoodFn:
    """Node i's neighbourhood in round r: from ``matrices[r % len(matrices)]``."""
    hoods = [neighbourhood(w, i) for w in matrices]
    return lambda r: hoods[r % len(hoods)]


def sync_cores(w: Matrix, **kwargs: Any) -> list[SyncGossip]:
    return [SyncGossip(str(i), schedule([w], i), **kwargs) for i in range(w.shape[0])]


def choco_cores(w: Matrix, **kwargs: Any) -> list[ChocoGossip]:
    return [
        ChocoGossip(str(i), schedule([w], i), seed=1000 + i, **kwargs) for i in range(w.shape[0])
    ]


def pushsum_cores(matrices: Sequence[Matrix]) -> list[PushSumGossip]:
    n = matrices[0].shape[0]
    return [PushSumGossip(str(i), schedule(matrices, i)) for i in range(n)]


# --- the driver ----------------------------------------------------------------


@dataclass
class Envelope:
    src: int
    dst: int
    frame: bytes
    due: float


@dataclass
class Harness:
    """Cores, frames in flight and a virtual clock; ``delay()`` gives each frame's transit time."""

    cores: Sequence[GossipCore]
    choose: Chooser
    delay: Callable[[], float] = lambda: 0.0
    max_elements: int = 1 << 20
    now: float = 0.0
    queue: list[Envelope] = field(default_factory=list)
    events: list[list[Event]] = field(default_factory=list)
    latest: list[Any] = field(default_factory=list)  # the last mixed model per node
    mixed: list[dict[int, RoundMixed]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.cores)
        self.events = [[] for _ in range(n)]
        self.latest = [None] * n
        self.mixed = [{} for _ in range(n)]

    def _absorb(self, i: int, out: Output) -> Output:
        for peer, message in out.sends:
            frame = wire.encode(message)
            self.queue.append(Envelope(i, int(peer), frame, self.now + self.delay()))
        for event in out.events:
            self.events[i].append(event)
            if isinstance(event, RoundMixed):
                assert event.round not in self.mixed[i], "a round mixed twice"
                self.mixed[i][event.round] = event
                self.latest[i] = event.model
        return out

    def start(self, i: int, round: int, model: Vector) -> Output:
        return self._absorb(i, self.cores[i].start_round(round, model, self.now))

    def deliver(self, k: int) -> Output:
        """Take frame ``k`` out of the queue and hand it, decoded, to its receiver."""
        env = self.queue.pop(k)
        message = wire.decode(env.frame, max_elements=self.max_elements)
        return self._absorb(env.dst, self.cores[env.dst].receive(str(env.src), message, self.now))

    def due(self) -> list[int]:
        return [k for k, env in enumerate(self.queue) if env.due <= self.now]

    def deliver_due(self) -> None:
        """Deliver every frame whose time has come, in an order the chooser picks."""
        while due := self.due():
            self.deliver(due[self.choose(len(due))])

    def flush(self) -> None:
        """Deliver everything in flight, in an order the chooser picks."""
        while self.queue:
            self.deliver(self.choose(len(self.queue)))

    def advance(self, dt: float) -> None:
        """Move the clock and let every core look at it."""
        self.now += dt
        for i, core in enumerate(self.cores):
            self._absorb(i, core.poll(self.now))

    def in_flight(self) -> list[wire.GossipMessage]:
        return [wire.decode(env.frame, max_elements=self.max_elements) for env in self.queue]

    def of_type(self, i: int, kind: type) -> list[Any]:
        return [e for e in self.events[i] if isinstance(e, kind)]


LocalStep = Callable[[int, int, Vector], Vector]
"""``step(node, round, model)``: the local training before a round starts."""


def run_barrier(
    h: Harness,
    models: Sequence[Vector],
    rounds: int,
    step: LocalStep | None = None,
) -> list[list[Vector]]:
    """Run ``rounds`` rounds of a barrier mode (sync or choco) on every node.

    At each turn the chooser picks one action among: start the next round on
    an idle node that has rounds left, or deliver any frame in flight. So
    starts and deliveries interleave in every order the chooser can reach,
    including frames that arrive before their receiver started that round.
    Returns, per node, the model it was given and the one each round mixed.
    """
    n = len(h.cores)
    first = [core.next_round for core in h.cores]
    current = [np.array(m, copy=True) for m in models]
    history: list[list[Vector]] = [[m] for m in current]
    while True:
        starts = [
            i
            for i, core in enumerate(h.cores)
            if core.phase is Phase.IDLE and core.next_round < rounds
        ]
        actions = len(starts) + len(h.queue)
        if actions == 0:
            break
        pick = h.choose(actions)
        if pick < len(starts):
            i = starts[pick]
            r = h.cores[i].next_round
            model = current[i] if step is None else step(i, r, current[i])
            h.start(i, r, model)
        else:
            h.deliver(pick - len(starts))
        for i in range(n):
            done = h.mixed[i].get(first[i] + len(history[i]) - 1)
            if done is not None:
                current[i] = done.model
                history[i].append(done.model)
    for i, core in enumerate(h.cores):
        assert core.next_round == rounds, f"node {i} stopped at round {core.next_round}"
    return history


def pushsum_mass(h: Harness) -> tuple[Vector, float]:
    """Sum of numerators and of weights over the nodes and every frame in flight."""
    held = [np.asarray(c.numerator, dtype=np.float64) for c in h.cores if c.numerator is not None]
    total = np.sum(held, axis=0)
    weight = sum(c.weight for c in h.cores)
    for message in h.in_flight():
        total = total + np.asarray(message.payload.values, dtype=np.float64)
        weight += message.weight
    return total, weight


def run_pushsum(
    h: Harness,
    models: Sequence[Vector],
    steps: int,
    observe: Callable[[], None] | None = None,
) -> list[Vector]:
    """Every node takes ``steps`` steps with no training (zero displacement).

    Each tick, the nodes step in an order the chooser picks; each frame is held
    back ``h.delay()`` ticks; then the frames that are due are delivered in an
    order the chooser picks. ``observe()`` runs after every step and every
    delivery. Returns the models handed out last.
    """
    n = len(h.cores)
    current: list[Vector] = [np.array(m, copy=True) for m in models]
    look = observe or (lambda: None)
    for _ in range(steps):
        order = list(range(n))
        while order:
            i = order.pop(h.choose(len(order)))
            out = h.start(i, h.cores[i].next_round, current[i])
            current[i] = next(e for e in out.events if isinstance(e, RoundMixed)).model
            look()
        while due := h.due():
            h.deliver(due[h.choose(len(due))])
            look()
        h.now += 1.0
    return current

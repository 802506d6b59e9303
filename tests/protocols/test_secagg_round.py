"""Whole secure rounds on the protocol cores, every message through its byte encoding.

A deterministic in-memory network with a virtual clock drives one receiver and
its neighbours; dropouts are scheduled per neighbour and per phase.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from protocols.errors import LocalProtocolError
from protocols.secagg import (
    Abandon,
    Abandoned,
    Aggregated,
    AggregatingReceiver,
    DropoutsDeclared,
    Ignored,
    MaskedInput,
    MaskingSender,
    Output,
    PairKeys,
    Phase,
    RoundContext,
    SecAggConfig,
    Send,
    Timeouts,
    box_public_key,
    decode,
    decode_fixed,
    dropout_tolerance,
    encode_fixed,
    error_bound,
)

FED = b"federation-under-test"
RECEIVER = "receiver"


def keypair(name: str) -> tuple[bytes, bytes]:
    private = hashlib.sha256(b"test key " + name.encode()).digest()
    return private, box_public_key(private)


def seed_for(name: str, round: int) -> bytes:
    """Stands in for the runtime's os.urandom(32): distinct per node and round."""
    return hashlib.sha256(f"self seed {name} {round}".encode()).digest()


@dataclass
class Plan:
    """Who misbehaves how: never shares, vanishes before masking, is late, stays silent."""

    d: int
    cfg: SecAggConfig = field(default_factory=SecAggConfig)
    dim: int = 37
    round: int = 3
    no_share: frozenset[str] = frozenset()
    no_masked: frozenset[str] = frozenset()
    late_masked: frozenset[str] = frozenset()
    silent: frozenset[str] = frozenset()
    early_input: frozenset[str] = frozenset()
    seed: int = 0

    @property
    def names(self) -> list[str]:
        return [f"n{k:02d}" for k in range(self.d)]


@dataclass
class Result:
    events: list[Output]
    receiver: AggregatingReceiver
    senders: dict[str, MaskingSender]
    xs: dict[str, np.ndarray]
    weights: dict[str, float]
    wire_bytes: int

    def one(self, kind: type) -> object:
        found = [e for e in self.events if isinstance(e, kind)]
        assert len(found) == 1, (kind, self.events)
        return found[0]


def run_round(plan: Plan) -> Result:
    rng = np.random.default_rng(plan.seed)
    names = plan.names
    keys = {n: keypair(n) for n in names}
    public = {n: pub for n, (_, pub) in keys.items()}
    ctx = RoundContext(FED, plan.round, RECEIVER, tuple(names), plan.cfg)
    receiver = AggregatingReceiver(ctx, dim=plan.dim, timeouts=Timeouts(10, 10, 10))
    senders = {n: MaskingSender(ctx, keys=PairKeys(n, keys[n][0], public)) for n in names}
    xs = {n: rng.standard_normal(plan.dim).astype(np.float32) for n in names}
    weights = {n: float(rng.uniform(0.05, 0.5)) for n in names}
    dead = set(plan.no_share)
    queue: deque[tuple[str, str, bytes]] = deque()
    late: list[tuple[str, str, bytes]] = []
    events: list[Output] = []
    wire = 0
    now = 0.0

    def post(src: str, outputs: Iterable[Output]) -> None:
        nonlocal wire
        for out in outputs:
            if not isinstance(out, Send):
                events.append(out)
                continue
            data = out.message.encode()
            wire += len(data)
            if isinstance(out.message, MaskedInput) and src in plan.no_masked:
                dead.add(src)  # vanishes instead of sending its masked input
            elif isinstance(out.message, MaskedInput) and src in plan.late_masked:
                late.append((src, out.peer, data))
            elif src in plan.silent and out.message.__class__.__name__ == "Reveal":
                pass
            else:
                queue.append((src, out.peer, data))

    post(RECEIVER, receiver.start(now))
    for n in names:
        if n in dead:
            continue
        post(n, senders[n].share(seed_for(n, plan.round)))
        if n in plan.early_input:
            post(n, senders[n].set_input(xs[n], weights[n]))
    for _ in range(1000):
        while queue:
            src, dst, data = queue.popleft()
            message = decode(data)
            if dst == RECEIVER:
                post(RECEIVER, receiver.receive(src, message, now))
            elif dst not in dead:
                post(dst, senders[dst].receive(RECEIVER, message))
                if message.__class__.__name__ == "ShareRelay" and dst not in plan.early_input:
                    post(dst, senders[dst].set_input(xs[dst], weights[dst]))
            if late and receiver.phase is not Phase.MASKED:
                queue.extend(late)
                late.clear()
        if receiver.deadline is None:
            break
        now = receiver.deadline
        post(RECEIVER, receiver.tick(now))
    return Result(events, receiver, senders, xs, weights, wire)


def expected_codes(result: Result, contributors: Iterable[str], cfg: SecAggConfig) -> np.ndarray:
    total = np.zeros(len(next(iter(result.xs.values()))), dtype=cfg.dtype)
    for n in contributors:
        total += encode_fixed(result.xs[n], result.weights[n], cfg)
    return total


def check_exact(result: Result, plan: Plan) -> Aggregated:
    agg = result.one(Aggregated)
    assert isinstance(agg, Aggregated)
    alive = sorted(set(plan.names) - plan.no_share - plan.no_masked - plan.late_masked)
    assert list(agg.contributors) == alive
    assert sorted(agg.missing) == sorted(set(plan.names) - set(alive))
    # The masks cancel exactly: the unmasked sum is the sum of the plain codes.
    assert np.array_equal(agg.codes, expected_codes(result, alive, plan.cfg))
    plain = sum(np.float64(result.weights[n]) * result.xs[n].astype(np.float64) for n in alive)
    bound = error_bound(plan.cfg, len(alive))
    assert bound <= len(alive) * plan.cfg.step  # within the fixed-point step per neighbour
    exact = decode_fixed(agg.codes, plan.cfg, np.float64)
    assert np.max(np.abs(exact - plain)) <= bound
    # The float32 result adds only its own rounding.
    assert np.all(np.abs(agg.total - plain) <= bound + 2.0**-23 * np.abs(plain))
    assert result.receiver.phase is Phase.DONE
    return agg


def test_full_round_without_dropouts_equals_plain_weighted_sum() -> None:
    plan = Plan(d=5, early_input=frozenset({"n01", "n03"}))
    result = run_round(plan)
    agg = check_exact(result, plan)
    assert agg.total.dtype == np.float32
    declared = result.one(DropoutsDeclared)
    assert isinstance(declared, DropoutsDeclared) and declared.dropped == ()
    assert all(
        s.phase is Phase.DONE for s in result.senders.values() if s.phase is not Phase.UNMASK
    )


def test_masked_input_alone_is_not_the_plain_encoding() -> None:
    plan = Plan(d=3)
    result = run_round(plan)
    check_exact(result, plan)
    # Capture n00's masked input by replaying its sender deterministically.
    sent = replay_masked_input(plan, "n00")
    plain = encode_fixed(result.xs["n00"], result.weights["n00"], plan.cfg)
    assert not np.array_equal(sent, plain)


def replay_masked_input(plan: Plan, who: str, dim: int | None = None) -> np.ndarray:
    """The masked input ``who`` sends in ``plan`` (depends only on keys, seeds and input)."""
    dim = dim or plan.dim
    names = plan.names
    keys = {n: keypair(n) for n in names}
    public = {n: pub for n, (_, pub) in keys.items()}
    ctx = RoundContext(FED, plan.round, RECEIVER, tuple(names), plan.cfg)
    senders = {n: MaskingSender(ctx, keys=PairKeys(n, keys[n][0], public)) for n in names}
    receiver = AggregatingReceiver(ctx, dim=dim)
    receiver.start(0.0)
    relays: list[Output] = []
    for n in names:
        for out in senders[n].share(seed_for(n, plan.round)):
            relays += receiver.receive(n, out.message, 0.0)
    relay = next(o for o in relays if isinstance(o, Send) and o.peer == who)
    senders[who].receive(RECEIVER, relay.message)
    x = np.random.default_rng(99).standard_normal(dim).astype(np.float32)
    (out,) = senders[who].set_input(x, 0.25)
    assert isinstance(out.message, MaskedInput)
    return out.message.codes


def test_single_masked_share_is_indistinguishable_from_uniform_bytes() -> None:
    plan = Plan(d=4)
    words = 1 << 16
    masked = replay_masked_input(plan, "n02", dim=words).view(np.uint8).reshape(-1, 4)
    x = np.random.default_rng(99).standard_normal(words).astype(np.float32)
    plain = encode_fixed(x, 0.25, plan.cfg).view(np.uint8).reshape(-1, 4)
    for position in range(4):  # every byte of the word, including the high ones
        p_masked = chisquare(np.bincount(masked[:, position], minlength=256)).pvalue
        assert p_masked > 1e-4, (position, p_masked)
    assert chisquare(np.bincount(masked.ravel(), minlength=256)).pvalue > 1e-4
    # The same test sees through an unmasked encoding (its high bytes are 0x00 or 0xff).
    assert chisquare(np.bincount(plain[:, 3], minlength=256)).pvalue < 1e-12
    assert chisquare(np.bincount(plain.ravel(), minlength=256)).pvalue < 1e-12


def test_dropout_after_sharing_is_recovered() -> None:
    plan = Plan(d=6, no_masked=frozenset({"n02"}))
    result = run_round(plan)
    check_exact(result, plan)
    declared = result.one(DropoutsDeclared)
    assert isinstance(declared, DropoutsDeclared) and declared.dropped == ("n02",)


def test_absent_before_sharing_is_left_out_of_the_roster() -> None:
    plan = Plan(d=5, no_share=frozenset({"n04"}))
    result = run_round(plan)
    check_exact(result, plan)
    assert "n04" not in result.receiver.roster


def test_late_masked_input_is_ignored_not_used() -> None:
    plan = Plan(d=5, late_masked=frozenset({"n01"}))
    result = run_round(plan)
    check_exact(result, plan)
    assert any(isinstance(e, Ignored) and e.peer == "n01" for e in result.events)
    assert result.senders["n01"].phase is Phase.ABANDONED  # told it was declared dropped


def test_fewer_than_t_survivors_abandons_the_round_and_leaks_nothing() -> None:
    plan = Plan(d=4, no_masked=frozenset({"n00", "n03"}))  # t = 3, 2 survive
    result = run_round(plan)
    abandoned = result.one(Abandoned)
    assert isinstance(abandoned, Abandoned)
    assert abandoned.phase is Phase.MASKED and "threshold 3" in abandoned.reason
    assert not any(isinstance(e, Aggregated | DropoutsDeclared) for e in result.events)
    assert result.receiver.phase is Phase.ABANDONED
    for name in ("n01", "n02"):  # survivors were told, forgot their shares, revealed nothing
        assert result.senders[name].phase is Phase.ABANDONED
        assert result.senders[name].holder.revealed == {}


def test_too_few_sharers_abandons_before_any_input_is_sent() -> None:
    plan = Plan(d=3, no_share=frozenset({"n00", "n01"}))
    result = run_round(plan)
    abandoned = result.one(Abandoned)
    assert isinstance(abandoned, Abandoned) and abandoned.phase is Phase.SHARE


def test_missing_needed_reveal_abandons_at_the_unmask_deadline() -> None:
    plan = Plan(d=5, no_masked=frozenset({"n00"}), silent=frozenset({"n03"}))
    result = run_round(plan)
    abandoned = result.one(Abandoned)
    assert isinstance(abandoned, Abandoned)
    assert abandoned.phase is Phase.UNMASK and "n03" in abandoned.reason


def test_without_dropouts_t_reveals_suffice() -> None:
    plan = Plan(d=5, silent=frozenset({"n00", "n04"}))  # t = 3 of 5 reveal
    result = run_round(plan)
    check_exact(result, plan)


def test_sixty_four_bit_modulus() -> None:
    cfg = SecAggConfig(modulus_bits=64, scale=2.0**32, clip=1024.0)
    plan = Plan(d=4, cfg=cfg, no_masked=frozenset({"n01"}))
    check_exact(run_round(plan), plan)


def test_single_neighbour_is_refused_naming_node_and_degree() -> None:
    with pytest.raises(LocalProtocolError, match=r"'lonely'.*degree 1"):
        RoundContext(FED, 0, "lonely", ("only-friend",), SecAggConfig())


def test_abandon_message_reaches_everyone() -> None:
    plan = Plan(d=3, no_share=frozenset({"n00", "n01"}))
    result = run_round(plan)
    assert result.senders["n02"].phase is Phase.ABANDONED
    assert isinstance(Abandon.decode(Abandon(1, "r", "why").encode()), Abandon)


def test_wire_overhead_is_small_for_a_real_model_size() -> None:
    plan = Plan(d=4, dim=235_000)
    result = run_round(plan)
    check_exact(result, plan)
    plain = 4 * plan.dim * plan.d  # float32 models, one per neighbour
    assert result.wire_bytes / plain < 1.05


@st.composite
def dropout_plans(draw: st.DrawFn, sparse: bool) -> Plan:
    d = draw(st.integers(2, 7))
    k = draw(st.integers(2, 4)) if sparse else None
    bits = draw(st.sampled_from([32, 64]))
    cfg = SecAggConfig(modulus_bits=bits, sparse_k=k, graph_seed=b"plan-hash")
    tolerance = dropout_tolerance(cfg, {"r": d})["r"]
    names = [f"n{i:02d}" for i in range(d)]
    dropped = draw(st.lists(st.sampled_from(names), unique=True, max_size=tolerance))
    stage = draw(st.lists(st.sampled_from(["share", "masked", "late"]), min_size=len(dropped)))
    by = {s: frozenset(n for n, t in zip(dropped, stage, strict=False) if t == s) for s in stage}
    early = draw(st.sets(st.sampled_from(names)))
    return Plan(
        d=d,
        cfg=cfg,
        dim=draw(st.integers(1, 70)),
        round=draw(st.integers(0, 2**40)),
        no_share=by.get("share", frozenset()),
        no_masked=by.get("masked", frozenset()),
        late_masked=by.get("late", frozenset()),
        early_input=frozenset(early),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dropout_plans(sparse=False))
def test_masks_cancel_exactly_for_random_neighbourhoods_and_dropouts(plan: Plan) -> None:
    check_exact(run_round(plan), plan)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dropout_plans(sparse=True))
def test_sparse_masks_cancel_exactly_too(plan: Plan) -> None:
    check_exact(run_round(plan), plan)


def test_sparse_round_masks_with_k_partners_only() -> None:
    cfg = SecAggConfig(sparse_k=2, graph_seed=b"seed")
    plan = Plan(d=8, cfg=cfg, no_masked=frozenset({"n05"}))
    result = run_round(plan)
    check_exact(result, plan)
    for name, sender in result.senders.items():
        if name != "n05":
            assert len(sender.holder.my_partners) == 2


@pytest.mark.parametrize("d", [3, 5, 8])
def test_the_most_dropouts_the_report_promises_are_survived(d: int) -> None:
    cfg = SecAggConfig()
    tolerance = dropout_tolerance(cfg, {"r": d})["r"]
    dropped = frozenset(f"n{k:02d}" for k in range(tolerance))
    plan = Plan(d=d, cfg=cfg, no_masked=dropped)
    check_exact(run_round(plan), plan)
    one_more = Plan(d=d, cfg=cfg, no_masked=dropped | {f"n{d - 1:02d}"})
    assert isinstance(run_round(one_more).one(Abandoned), Abandoned)

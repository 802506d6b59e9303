"""The share holder: what it accepts, and the never-both rule on what it reveals."""

from __future__ import annotations

import hashlib

import pytest

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.secagg import (
    DropoutDeclaration,
    MaskingSender,
    PairKeys,
    RevealKind,
    RoundContext,
    SecAggConfig,
    ShareHolder,
    ShareKeys,
    ShareRelay,
    box_public_key,
    pair_seed,
)

FED = b"fed"
R = "recv"
NAMES = ("a", "b", "c", "d")


def keypair(name: str) -> tuple[bytes, bytes]:
    private = hashlib.sha256(b"holder test " + name.encode()).digest()
    return private, box_public_key(private)


KEYS = {n: keypair(n) for n in (*NAMES, "e", "f", "g", "h")}
PUBLIC = {n: pub for n, (_, pub) in KEYS.items()}


def dealt(ctx: RoundContext) -> dict[str, ShareKeys]:
    """Every neighbour's ShareKeys for ``ctx``."""
    out = {}
    for n in ctx.neighbourhood:
        sender = MaskingSender(ctx, keys=PairKeys(n, KEYS[n][0], PUBLIC))
        (send,) = sender.share(hashlib.sha256(n.encode()).digest())
        assert isinstance(send.message, ShareKeys)
        out[n] = send.message
    return out


def relay_for(ctx: RoundContext, holder: str, keys: dict[str, ShareKeys]) -> ShareRelay:
    roster = tuple(sorted(keys))
    shares = {dealer: keys[dealer].shares[holder] for dealer in roster}
    return ShareRelay(ctx.round, ctx.receiver, holder, roster, shares)


def holder_with_shares(
    me: str = "a", cfg: SecAggConfig | None = None, names: tuple[str, ...] = NAMES
) -> ShareHolder:
    ctx = RoundContext(FED, 7, R, names, cfg or SecAggConfig())
    holder = ShareHolder(ctx, keys=PairKeys(me, KEYS[me][0], PUBLIC))
    holder.accept(R, relay_for(ctx, me, dealt(ctx)))
    return holder


def test_reveal_gives_seeds_of_dropped_and_shares_of_survivors() -> None:
    holder = holder_with_shares()
    reveal = holder.reveal(R, DropoutDeclaration(7, R, ("a", "b", "c"), ("d",)))
    assert set(reveal.pair_seeds) == {"d"}
    assert set(reveal.self_shares) == {"a", "b", "c"}
    expected = pair_seed(
        KEYS["a"][0], PUBLIC["d"], federation_id=FED, round=7, receiver=R, me="a", peer="d"
    )
    assert reveal.pair_seeds["d"] == expected
    assert holder.revealed["d"] is RevealKind.PAIR_SEED
    assert holder.revealed["b"] is RevealKind.SELF_SHARE


def test_never_both_refuses_a_second_declaration_that_would_cross_the_line() -> None:
    holder = holder_with_shares()
    holder.reveal(R, DropoutDeclaration(7, R, ("a", "b", "c"), ("d",)))
    before = holder.revealed
    with pytest.raises(PeerProtocolError, match="never both") as info:
        holder.reveal(R, DropoutDeclaration(7, R, ("a", "b", "d"), ("c",)))
    assert info.value.peer == R
    assert holder.revealed == before  # nothing of the refused request was granted


def test_never_both_holds_the_other_way_round() -> None:
    holder = holder_with_shares()
    holder.reveal(R, DropoutDeclaration(7, R, ("a", "b", "c", "d"), ()))
    with pytest.raises(PeerProtocolError, match="self-mask share of 'd' was already revealed"):
        holder.reveal(R, DropoutDeclaration(7, R, ("a", "b", "c"), ("d",)))


def test_the_same_declaration_again_gets_the_same_answer() -> None:
    holder = holder_with_shares()
    declaration = DropoutDeclaration(7, R, ("a", "b", "c"), ("d",))
    assert holder.reveal(R, declaration) == holder.reveal(R, declaration)


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        (("a", "b"), ("c",), "cover the roster"),
        (("a", "b"), ("c", "d"), "below the threshold"),
        (("a", "b", "c", "d", "e"), (), "cover the roster"),
    ],
)
def test_unsafe_declarations_reveal_nothing(
    survivors: tuple[str, ...], dropped: tuple[str, ...], match: str
) -> None:
    holder = holder_with_shares()
    with pytest.raises(PeerProtocolError, match=match):
        holder.reveal(R, DropoutDeclaration(7, R, survivors, dropped))
    assert holder.revealed == {}


def test_a_holder_declared_dropped_reveals_nothing() -> None:
    holder = holder_with_shares()
    with pytest.raises(LocalProtocolError, match="declared dropped"):
        holder.reveal(R, DropoutDeclaration(7, R, ("b", "c", "d"), ("a",)))


def test_disconnected_sparse_survivors_are_refused() -> None:
    names = ("a", "b", "c", "d", "e", "f", "g", "h")
    cfg = SecAggConfig(sparse_k=2, threshold=3, graph_seed=b"s")
    holder = holder_with_shares("a", cfg, names)
    # On a ring, dropping both neighbours of the far side of 'a' cuts it in two.
    partners = holder.ctx.partners(names)
    ring = ["a"]
    while len(ring) < len(names):
        ring.append(next(p for p in sorted(partners[ring[-1]]) if p not in ring))
    cut = (ring[2], ring[6])
    survivors = tuple(n for n in names if n not in cut)
    with pytest.raises(PeerProtocolError, match="disconnected"):
        holder.reveal(R, DropoutDeclaration(7, R, survivors, cut))
    assert holder.revealed == {}


def test_only_the_receiver_may_ask() -> None:
    holder = holder_with_shares()
    with pytest.raises(PeerProtocolError) as info:
        holder.reveal("b", DropoutDeclaration(7, R, NAMES, ()))
    assert info.value.peer == "b"


def test_abandoned_holder_forgets_and_refuses() -> None:
    holder = holder_with_shares()
    holder.abandon()
    with pytest.raises(LocalProtocolError, match="abandoned"):
        holder.reveal(R, DropoutDeclaration(7, R, NAMES, ()))


def test_share_replayed_from_another_round_is_refused() -> None:
    old = RoundContext(FED, 6, R, NAMES, SecAggConfig())
    new = RoundContext(FED, 7, R, NAMES, SecAggConfig())
    stale = relay_for(old, "a", dealt(old))
    replay = ShareRelay(7, R, "a", stale.roster, stale.shares)
    holder = ShareHolder(new, keys=PairKeys("a", KEYS["a"][0], PUBLIC))
    with pytest.raises(PeerProtocolError, match="another context"):
        holder.accept(R, replay)


def test_share_sealed_to_another_holder_or_tampered_is_refused() -> None:
    ctx = RoundContext(FED, 7, R, NAMES, SecAggConfig())
    keys = dealt(ctx)
    relay = relay_for(ctx, "b", keys)
    holder = ShareHolder(ctx, keys=PairKeys("a", KEYS["a"][0], PUBLIC))
    with pytest.raises(PeerProtocolError):
        holder.accept(R, ShareRelay(7, R, "a", relay.roster, relay.shares))
    good = relay_for(ctx, "a", keys)
    flipped = dict(good.shares)
    flipped["c"] = flipped["c"][:-1] + bytes([flipped["c"][-1] ^ 1])
    with pytest.raises(PeerProtocolError, match="does not open"):
        holder.accept(R, ShareRelay(7, R, "a", good.roster, flipped))


def test_relay_must_list_every_roster_share_and_only_neighbours() -> None:
    ctx = RoundContext(FED, 7, R, NAMES, SecAggConfig())
    good = relay_for(ctx, "a", dealt(ctx))
    holder = ShareHolder(ctx, keys=PairKeys("a", KEYS["a"][0], PUBLIC))
    partial = {k: v for k, v in good.shares.items() if k != "d"}
    with pytest.raises(PeerProtocolError, match="exactly one share"):
        holder.accept(R, ShareRelay(7, R, "a", good.roster, partial))
    with pytest.raises(PeerProtocolError, match="non-neighbours"):
        holder.accept(R, ShareRelay(7, R, "a", (*good.roster, "zz"), good.shares))


def test_private_key_must_match_the_ledger_key() -> None:
    ctx = RoundContext(FED, 7, R, NAMES, SecAggConfig())
    with pytest.raises(LocalProtocolError, match="does not match"):
        ShareHolder(ctx, keys=PairKeys("a", KEYS["b"][0], PUBLIC))

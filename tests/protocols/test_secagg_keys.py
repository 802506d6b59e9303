"""Key agreement, per-round seeds, sealed shares and Shamir sharing of 256-bit seeds."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.secagg.keys import PairKeys, box_public_key, open_share, pair_seed, seal_share
from protocols.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    combine_seed,
    combine_seeds,
    split_seed,
    split_seeds,
)


def keypair(name: str) -> tuple[bytes, bytes]:
    private = hashlib.sha256(b"keys test " + name.encode()).digest()
    return private, box_public_key(private)


A, B, C = keypair("a"), keypair("b"), keypair("c")


def seed(
    me: tuple[bytes, bytes], peer: tuple[bytes, bytes], names: tuple[str, str], **kw: object
) -> bytes:
    args: dict[str, object] = {"federation_id": b"fed", "round": 5, "receiver": "r"}
    args.update(kw)
    return pair_seed(me[0], peer[1], me=names[0], peer=names[1], **args)


def test_pair_seed_is_symmetric_and_full_length() -> None:
    ab = seed(A, B, ("a", "b"))
    assert ab == seed(B, A, ("b", "a"))
    assert len(ab) == 32


@pytest.mark.parametrize(
    "change",
    [{"round": 6}, {"receiver": "r2"}, {"federation_id": b"other"}],
)
def test_pair_seed_is_bound_to_round_receiver_and_federation(change: dict[str, object]) -> None:
    assert seed(A, B, ("a", "b"), **change) != seed(A, B, ("a", "b"))


def test_pair_seeds_differ_between_pairs_and_ids() -> None:
    assert seed(A, B, ("a", "b")) != seed(A, C, ("a", "c"))
    assert seed(A, B, ("a", "b")) != seed(A, B, ("a", "x"))


def test_low_order_public_key_is_refused_naming_the_peer() -> None:
    with pytest.raises(PeerProtocolError) as info:
        pair_seed(A[0], bytes(32), federation_id=b"f", round=0, receiver="r", me="a", peer="evil")
    assert info.value.peer == "evil"


def test_no_seed_with_oneself_and_keys_must_be_32_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        seed(A, A, ("a", "a"))
    with pytest.raises(LocalProtocolError):
        pair_seed(b"short", B[1], federation_id=b"f", round=0, receiver="r", me="a", peer="b")


def context(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"federation_id": b"fed", "round": 1, "receiver": "r", "index": 2}
    base.update(kw)
    return base


def ring(name: str, pair: tuple[bytes, bytes]) -> PairKeys:
    return PairKeys(name, pair[0], {"a": A[1], "b": B[1], "c": C[1]})


def test_sealed_share_opens_only_in_its_context() -> None:
    share = split_seed(bytes(range(32)), 2, 3)[1]
    sealed = seal_share(ring("a", A), holder="b", share=share, **context())
    assert open_share(ring("b", B), sealed, dealer="a", relayed_by="r", **context()) == share
    for wrong in ({"round": 2}, {"receiver": "q"}, {"index": 3}, {"federation_id": b"x"}):
        with pytest.raises(PeerProtocolError, match="another context"):
            open_share(ring("b", B), sealed, dealer="a", relayed_by="r", **context(**wrong))
    with pytest.raises(PeerProtocolError, match="does not open"):
        open_share(ring("c", C), sealed, dealer="a", relayed_by="r", **context())


def test_a_sealed_value_that_is_no_share_is_refused_naming_the_relay() -> None:
    bad = bytes(range(SHARE_BYTES))[:-4] + b"\xff\xff\xff\xff"  # a word above the prime
    sealed = seal_share(ring("a", A), holder="b", share=bad, **context())
    with pytest.raises(PeerProtocolError, match="malformed") as info:
        open_share(ring("b", B), sealed, dealer="a", relayed_by="r", **context())
    assert info.value.peer == "r"


def test_key_ring_gives_the_same_seeds_as_the_uncached_derivation() -> None:
    a = ring("a", A)
    for round, receiver, peer, pair in [(5, "r", "b", B), (6, "r", "b", B), (5, "q", "c", C)]:
        expected = pair_seed(
            A[0], pair[1], federation_id=b"fed", round=round, receiver=receiver, me="a", peer=peer
        )
        assert a.pair_seed(peer, federation_id=b"fed", round=round, receiver=receiver) == expected
        # and the same again, now from the cached pair key
        assert a.pair_seed(peer, federation_id=b"fed", round=round, receiver=receiver) == expected


def test_a_cached_pair_key_still_gives_a_fresh_seed_per_round_receiver_and_pair() -> None:
    a, b = ring("a", A), ring("b", B)
    seeds = {
        (round, receiver, peer): a.pair_seed(
            peer, federation_id=b"fed", round=round, receiver=receiver
        )
        for round in range(20)
        for receiver in ("r", "q")
        for peer in ("b", "c")
    }
    assert len(set(seeds.values())) == len(seeds)  # never twice the same mask seed
    for (round, receiver, peer), value in seeds.items():
        if peer == "b":  # the partner's cached ring agrees on every one of them
            assert b.pair_seed("a", federation_id=b"fed", round=round, receiver=receiver) == value


def test_a_changed_public_key_gets_a_fresh_agreement_not_the_cached_one() -> None:
    a = ring("a", A)
    before = a.pair_seed("b", federation_id=b"fed", round=1, receiver="r")
    d = keypair("d")
    rotated = PairKeys("a", A[0], {"a": A[1], "b": d[1]})
    after = rotated.pair_seed("b", federation_id=b"fed", round=1, receiver="r")
    assert after != before
    expected = pair_seed(A[0], d[1], federation_id=b"fed", round=1, receiver="r", me="a", peer="b")
    assert after == expected


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(2, 7), st.data())
def test_any_t_shares_recover_the_seed(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    shares = split_seed(secret, t, n)
    assert len(shares) == n and all(len(s) == SHARE_BYTES for s in shares)
    chosen = data.draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    assert combine_seed({i: shares[i - 1] for i in chosen}, t) == secret


def test_fewer_than_t_shares_are_refused_and_t_minus_one_say_nothing_useful() -> None:
    secret = hashlib.sha256(b"s").digest()
    shares = split_seed(secret, 3, 5)
    with pytest.raises(LocalProtocolError, match="need 3 shares"):
        combine_seed({1: shares[0], 2: shares[1]}, 3)
    # Interpolating t-1 shares as if t were smaller gives some other value.
    assert combine_seed({1: shares[0], 2: shares[1]}, 2) != secret
    for subset in itertools.combinations(range(1, 6), 3):
        assert combine_seed({i: shares[i - 1] for i in subset}, 3) == secret


def test_split_refuses_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        split_seed(b"x" * 16, 2, 3)
    with pytest.raises(LocalProtocolError):
        split_seed(b"x" * 32, 4, 3)


def test_batched_split_and_combine_recover_every_seed() -> None:
    secrets = [hashlib.sha256(bytes([k])).digest() for k in range(9)] + [bytes(32), b"\xff" * 32]
    dealt = split_seeds(secrets, 4, 7)
    assert len(dealt) == len(secrets) and all(len(row) == 7 for row in dealt)
    for subset in itertools.combinations(range(1, 8), 4):
        by_holder = {i: [row[i - 1] for row in dealt] for i in subset}
        assert combine_seeds(by_holder, 4) == secrets


def test_shares_are_field_elements_and_fresh_for_every_split() -> None:
    secret = hashlib.sha256(b"s").digest()
    first, second = split_seed(secret, 2, 3), split_seed(secret, 2, 3)
    assert first != second  # new random coefficients every time, the same secret back
    assert combine_seed({1: first[0], 3: first[2]}, 2) == secret
    assert combine_seed({1: second[0], 2: second[1]}, 2) == secret
    for share in first + second:
        assert max(int.from_bytes(share[k : k + 4], "little") for k in range(0, 64, 4)) < PRIME


def test_one_share_below_the_threshold_is_uniform_whatever_the_seed() -> None:
    """With t = 2, holder 1's share word is s + a (mod p): a fixed coefficient stream shows it.

    The coefficients come from ``random_bytes``; with the same draws, two
    different seeds give shares that differ by exactly the seeds' difference,
    so over uniform draws a share is uniform for either seed.
    """
    draws = bytes(range(256)) * 2

    def fixed(count: int) -> bytes:
        return draws[:count]

    zero = split_seed(bytes(32), 2, 2, random_bytes=fixed)[0]
    other = split_seed(b"\x01\x00" * 16, 2, 2, random_bytes=fixed)[0]
    words = [int.from_bytes(zero[k : k + 4], "little") for k in range(0, 64, 4)]
    words_other = [int.from_bytes(other[k : k + 4], "little") for k in range(0, 64, 4)]
    assert [(w2 - w1) % PRIME for w1, w2 in zip(words, words_other, strict=True)] == [1] * 16


def test_combine_refuses_a_share_outside_the_field() -> None:
    shares = split_seed(bytes(32), 2, 3)
    with pytest.raises(LocalProtocolError, match="outside the field"):
        combine_seed({1: shares[0], 2: b"\xff" * SHARE_BYTES}, 2)

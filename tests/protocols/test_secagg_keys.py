"""Key agreement, per-round seeds, sealed shares and Shamir sharing of 256-bit seeds."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.secagg.keys import box_public_key, open_share, pair_seed, seal_share
from protocols.secagg.shamir import combine_seed, split_seed


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
    base: dict[str, object] = {
        "federation_id": b"fed",
        "round": 1,
        "receiver": "r",
        "dealer": "a",
        "holder": "b",
        "index": 2,
    }
    base.update(kw)
    return base


def test_sealed_share_opens_only_in_its_context() -> None:
    share = bytes(range(32))
    sealed = seal_share(A[0], B[1], share=share, **context())
    assert open_share(B[0], A[1], sealed, relayed_by="r", **context()) == share
    for wrong in ({"round": 2}, {"receiver": "q"}, {"index": 3}, {"federation_id": b"x"}):
        with pytest.raises(PeerProtocolError, match="another context"):
            open_share(B[0], A[1], sealed, relayed_by="r", **context(**wrong))
    with pytest.raises(PeerProtocolError, match="does not open"):
        open_share(C[0], A[1], sealed, relayed_by="r", **context())


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(2, 7), st.data())
def test_any_t_shares_recover_the_seed(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    shares = split_seed(secret, t, n)
    assert len(shares) == n and all(len(s) == 32 for s in shares)
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

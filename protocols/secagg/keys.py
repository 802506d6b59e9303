"""Key agreement, per-round seed derivation, and sealed shares; all from vetted libraries.

Pairwise seeds. Neighbours ``a`` and ``b`` of receiver ``i`` agree on a seed
without a link between them, in two steps:

1. the pair key, once per pair (it depends only on long-term keys): X25519
   (libsodium via PyNaCl) of one's private key and the other's public key from
   the ledger, then HKDF-SHA256 (``cryptography``) over the shared secret, with
   the federation id, both ids and both public keys in ``info``;
2. the seed of one (round, receiver): HKDF-Expand-SHA256 of the pair key with
   the round and the receiver in ``info``. The output is the full 256-bit AES
   key of the pair's mask stream for that one (round, receiver).

:class:`PairKeys` caches step 1 (and the NaCl boxes of step "sealed shares"
below) for the life of a node's round core: the agreement is the costly
part, and it is a function of the two public keys alone, so it is keyed by the
peer's id *and* public key (a key changed at an epoch boundary gets a fresh
agreement, never a stale one). Step 2 runs for every (round, receiver).

Why per (pair, round, receiver): when ``b`` drops out, the survivors reveal
their seed with ``b`` so the receiver can remove those masks. Because the seed
is an HKDF-Expand output bound to this round and receiver, under a pair key
that is itself never revealed, the revealed value says nothing about the
pair's seeds for any other round or receiver (HKDF-Expand is a PRF of its
key: outputs for distinct ``info`` are independent pseudo-random keys), and
the long-term X25519 secret stays secret. The design relies on that.

Sealed shares. A self-mask share travels from its dealer to its holder through
the receiver inside a NaCl box (X25519 + XSalsa20-Poly1305, authenticated
both ways). The plaintext repeats the context (federation, round, receiver,
dealer, holder, index) and the holder checks it, so a receiver cannot replay a
share from another round or receiver to unmask an old input.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.secagg.shamir import check_share

SEED_BYTES = 32
KEY_BYTES = 32
_PAIR_SALT = b"p2pfl secagg pair key v2"
_SHARE_TAG = "p2pfl-secagg-share-v2"


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _check_key(key: object, what: str) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise LocalProtocolError(f"{what} must be {KEY_BYTES} bytes")
    return key


def box_public_key(box_private: bytes) -> bytes:
    """The X25519 public key of a private key (to check a key pair is consistent)."""
    return bytes(nacl.bindings.crypto_scalarmult_base(_check_key(box_private, "private key")))


def shared_secret(my_box_private: bytes, peer_box_public: bytes, *, peer: str = "?") -> bytes:
    """Raw X25519 shared secret; refuses a low-order public key (all-zero output)."""
    _check_key(my_box_private, "private key")
    _check_key(peer_box_public, f"public key of {peer!r}")
    try:
        return bytes(nacl.bindings.crypto_scalarmult(my_box_private, peer_box_public))
    except nacl.exceptions.RuntimeError:
        raise PeerProtocolError(peer, "X25519 public key of low order (no shared secret)") from None


def _pair_key(
    secret: bytes, federation_id: bytes, me: str, my_public: bytes, peer: str, peer_public: bytes
) -> bytes:
    """Step 1 of the module doc: the pair's key, bound to the federation and both identities."""
    (lo_id, lo_pub), (hi_id, hi_pub) = sorted([(me, my_public), (peer, peer_public)])
    info = _frame(b"pair key", federation_id, lo_id.encode(), hi_id.encode(), lo_pub, hi_pub)
    kdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_PAIR_SALT, info=info)
    return kdf.derive(secret)


def round_seed(pair_key: bytes, *, round: int, receiver: str) -> bytes:
    """Step 2 of the module doc: the pair's mask seed for one (round, receiver)."""
    if type(round) is not int or not 0 <= round < 2**64:
        raise LocalProtocolError(f"round must be an integer in [0, 2^64), got {round!r}")
    info = _frame(b"pair seed", struct.pack("<Q", round), receiver.encode())
    return HKDFExpand(algorithm=hashes.SHA256(), length=SEED_BYTES, info=info).derive(pair_key)


def pair_seed(
    my_box_private: bytes,
    peer_box_public: bytes,
    *,
    federation_id: bytes,
    round: int,
    receiver: str,
    me: str,
    peer: str,
) -> bytes:
    """The 256-bit seed of the mask ``me`` and ``peer`` share for (round, receiver).

    Symmetric: ``pair_seed(a_priv, b_pub, me=a, peer=b) == pair_seed(b_priv,
    a_pub, me=b, peer=a)``. Revealing it reveals nothing about other rounds or
    receivers (see the module docstring). Nothing is cached here; a
    :class:`PairKeys` gives the same seeds with the agreement done once per pair.
    """
    if me == peer:
        raise LocalProtocolError("a node has no pairwise seed with itself")
    secret = shared_secret(my_box_private, peer_box_public, peer=peer)
    key = _pair_key(
        secret, federation_id, me, box_public_key(my_box_private), peer, peer_box_public
    )
    return round_seed(key, round=round, receiver=receiver)


class PairKeys:
    """One node's X25519 key with the members' public keys, and the agreements made with them.

    Pair keys and NaCl boxes are computed on first use and kept, keyed by the
    peer's id and public key (and the federation, for pair keys); every seed
    is still derived per (round, receiver) from the pair key. A ring holds
    secrets derived from the private key it holds: it lives as long as the
    round core that owns it, never longer than that key.
    """

    def __init__(self, me: str, box_private: bytes, public_keys: Mapping[str, bytes]) -> None:
        self.me = me
        self._private = _check_key(box_private, "private key")
        self.public = box_public_key(box_private)
        self.public_keys: Mapping[str, bytes] = dict(public_keys)
        self._pair_keys: dict[tuple[bytes, str, bytes], bytes] = {}
        self._boxes: dict[tuple[str, bytes], nacl.public.Box] = {}
        self._secret = nacl.public.PrivateKey(self._private)

    def public_key(self, node: str) -> bytes:
        try:
            return self.public_keys[node]
        except KeyError:
            raise LocalProtocolError(f"no ledger public key for {node!r}") from None

    def pair_seed(self, peer: str, *, federation_id: bytes, round: int, receiver: str) -> bytes:
        """Equal to :func:`pair_seed` for ``me`` and ``peer``; one agreement per pair."""
        if peer == self.me:
            raise LocalProtocolError("a node has no pairwise seed with itself")
        peer_public = self.public_key(peer)
        cache = (federation_id, peer, peer_public)
        key = self._pair_keys.get(cache)
        if key is None:
            secret = shared_secret(self._private, peer_public, peer=peer)
            key = _pair_key(secret, federation_id, self.me, self.public, peer, peer_public)
            self._pair_keys[cache] = key
        return round_seed(key, round=round, receiver=receiver)

    def box(self, peer: str) -> nacl.public.Box:
        """The NaCl box between ``me`` and ``peer`` (its X25519 agreement done once)."""
        peer_public = self.public_key(peer)
        box = self._boxes.get((peer, peer_public))
        if box is None:
            public = nacl.public.PublicKey(_check_key(peer_public, f"public key of {peer!r}"))
            box = nacl.public.Box(self._secret, public)
            self._boxes[(peer, peer_public)] = box
        return box


def seal_share(
    ring: PairKeys,
    *,
    federation_id: bytes,
    round: int,
    receiver: str,
    holder: str,
    index: int,
    share: bytes,
) -> bytes:
    """Encrypt one self-mask share from ``ring.me`` to its holder, bound to its context.

    The box nonce is drawn by libsodium's CSPRNG inside PyNaCl: the box keys
    are long-term, so nonces must never repeat, and a random 192-bit nonce is
    the library's safe default. It changes ciphertext bytes only, never results.
    """
    plaintext = msgpack.packb(
        [_SHARE_TAG, federation_id, round, receiver, ring.me, holder, index, share],
        use_bin_type=True,
    )
    return bytes(ring.box(holder).encrypt(plaintext))


def open_share(
    ring: PairKeys,
    sealed: bytes,
    *,
    federation_id: bytes,
    round: int,
    receiver: str,
    dealer: str,
    index: int,
    relayed_by: str,
) -> bytes:
    """Decrypt and check one share sealed to ``ring.me``.

    Raises :class:`PeerProtocolError` naming the relay if it does not open, is
    for another context, or is not a well-formed share.
    """
    try:
        plaintext = ring.box(dealer).decrypt(sealed)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise PeerProtocolError(
            relayed_by, f"sealed share from {dealer!r} does not open (tampered or misaddressed)"
        ) from None
    expected = [_SHARE_TAG, federation_id, round, receiver, dealer, ring.me, index]
    try:
        fields = msgpack.unpackb(plaintext, raw=False)
    except Exception:  # msgpack raises several types; all mean "not ours"
        fields = None
    if not (isinstance(fields, list) and len(fields) == 8 and fields[:7] == expected):
        raise PeerProtocolError(
            relayed_by, f"sealed share from {dealer!r} is for another context (replayed?)"
        )
    try:
        return check_share(fields[7])
    except LocalProtocolError:
        raise PeerProtocolError(relayed_by, f"sealed share from {dealer!r} is malformed") from None

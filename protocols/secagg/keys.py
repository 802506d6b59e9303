"""Key agreement, per-round seed derivation, and sealed shares; all from vetted libraries.

Pairwise seeds. Neighbours ``a`` and ``b`` of receiver ``i`` agree on a seed
without a link between them: X25519 (libsodium via PyNaCl) of one's private
key and the other's public key from the ledger, then HKDF-SHA256
(``cryptography``) over the shared secret with the federation id, the round,
the receiver, both ids and both public keys in ``info``. The output is the
full 256-bit AES key of the pair's mask stream for that one (round, receiver).

Why per (pair, round, receiver): when ``b`` drops out, the survivors reveal
their seed with ``b`` so the receiver can remove those masks. Because the seed
is an HKDF output bound to this round and receiver, the revealed value says
nothing about the pair's seeds for any other round or receiver (HKDF outputs
for distinct ``info`` are independent pseudo-random keys), and the long-term
X25519 secret stays secret. The design relies on that.

Sealed shares. A self-mask share travels from its dealer to its holder through
the receiver inside a NaCl box (X25519 + XSalsa20-Poly1305, authenticated
both ways). The plaintext repeats the context (federation, round, receiver,
dealer, holder, index) and the holder checks it, so a receiver cannot replay a
share from another round or receiver to unmask an old input.
"""

from __future__ import annotations

import struct

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import LocalProtocolError, PeerProtocolError

SEED_BYTES = 32
KEY_BYTES = 32
_PAIR_SALT = b"p2pfl secagg pair seed v1"
_SHARE_TAG = "p2pfl-secagg-share-v1"


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
    receivers (see the module docstring).
    """
    if me == peer:
        raise LocalProtocolError("a node has no pairwise seed with itself")
    secret = shared_secret(my_box_private, peer_box_public, peer=peer)
    my_public = box_public_key(my_box_private)
    (lo_id, lo_pub), (hi_id, hi_pub) = sorted([(me, my_public), (peer, peer_box_public)])
    info = _frame(
        b"pair",
        federation_id,
        struct.pack("<Q", round),
        receiver.encode(),
        lo_id.encode(),
        hi_id.encode(),
        lo_pub,
        hi_pub,
    )
    kdf = HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=_PAIR_SALT, info=info)
    return kdf.derive(secret)


def seal_share(
    my_box_private: bytes,
    holder_box_public: bytes,
    *,
    federation_id: bytes,
    round: int,
    receiver: str,
    dealer: str,
    holder: str,
    index: int,
    share: bytes,
) -> bytes:
    """Encrypt one self-mask share to its holder, bound to its context.

    The box nonce is drawn by libsodium's CSPRNG inside PyNaCl: the box keys
    are long-term, so nonces must never repeat, and a random 192-bit nonce is
    the library's safe default. It changes ciphertext bytes only, never results.
    """
    plaintext = msgpack.packb(
        [_SHARE_TAG, federation_id, round, receiver, dealer, holder, index, share],
        use_bin_type=True,
    )
    box = nacl.public.Box(
        nacl.public.PrivateKey(_check_key(my_box_private, "private key")),
        nacl.public.PublicKey(_check_key(holder_box_public, f"public key of {holder!r}")),
    )
    return bytes(box.encrypt(plaintext))


def open_share(
    my_box_private: bytes,
    dealer_box_public: bytes,
    sealed: bytes,
    *,
    federation_id: bytes,
    round: int,
    receiver: str,
    dealer: str,
    holder: str,
    index: int,
    relayed_by: str,
) -> bytes:
    """Decrypt and check one sealed share; raise :class:`PeerProtocolError` naming the relay."""
    box = nacl.public.Box(
        nacl.public.PrivateKey(_check_key(my_box_private, "private key")),
        nacl.public.PublicKey(_check_key(dealer_box_public, f"public key of {dealer!r}")),
    )
    try:
        plaintext = box.decrypt(sealed)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise PeerProtocolError(
            relayed_by, f"sealed share from {dealer!r} does not open (tampered or misaddressed)"
        ) from None
    expected = [_SHARE_TAG, federation_id, round, receiver, dealer, holder, index]
    try:
        fields = msgpack.unpackb(plaintext, raw=False)
    except Exception:  # msgpack raises several types; all mean "not ours"
        fields = None
    if not (isinstance(fields, list) and len(fields) == 8 and fields[:7] == expected):
        raise PeerProtocolError(
            relayed_by, f"sealed share from {dealer!r} is for another context (replayed?)"
        )
    share = fields[7]
    if not isinstance(share, bytes) or len(share) != SEED_BYTES:
        raise PeerProtocolError(relayed_by, f"sealed share from {dealer!r} has a bad length")
    return share

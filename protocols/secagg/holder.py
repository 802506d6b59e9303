"""A neighbour's custody of self-mask shares, and the never-both rule on what it reveals.

Each neighbour ``k`` of receiver ``i`` holds, for one (round, receiver), one
share of every roster member's self-mask seed ``b_j``, and can derive its
pairwise seed ``s_kj`` with any of them. For any peer ``j`` the receiver must
never obtain both ``b_j`` (from ``t`` shares) and ``j``'s pairwise seeds:
together with ``y_j`` they would unmask ``x_j``. So a holder reveals, per
peer, either its share of ``b_j`` (``j`` survived) or its seed ``s_kj``
(``j`` dropped), never both, across every request it ever answers for the
round, and refuses a request that would cross that line as a whole (nothing
of it is revealed).

It also checks, before revealing anything, what protects its peers from a
curious receiver: the declaration covers the roster exactly, at least ``t``
survivors remain, and the partner graph over the survivors is connected (else
the receiver would learn partial sums). The runtime must pass only the
declaration recorded, signed, in the ledger for (round, receiver), so that
every holder answers the same one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.secagg.config import RoundContext
from protocols.secagg.graph import is_connected
from protocols.secagg.keys import PairKeys, open_share
from protocols.secagg.messages import DropoutDeclaration, Reveal, ShareRelay


class RevealKind(enum.Enum):
    SELF_SHARE = "self-mask share"
    PAIR_SEED = "pairwise seed"


class ShareHolder:
    """Shares held by ``keys.me`` for one (round, receiver); answers dropout declarations."""

    def __init__(
        self,
        ctx: RoundContext,
        *,
        keys: PairKeys,
    ) -> None:
        me = keys.me
        ctx.index(me)  # raises unless me is in N(i)
        missing = [n for n in ctx.neighbourhood if n not in keys.public_keys]
        if missing:
            raise LocalProtocolError(f"no ledger public key for neighbours {missing}")
        if keys.public != keys.public_keys[me]:
            raise LocalProtocolError(f"the private key does not match {me!r}'s ledger public key")
        self.ctx = ctx
        self.me = me
        self._keys = keys
        self._roster: tuple[str, ...] | None = None
        self._partners: dict[str, frozenset[str]] = {}
        self._shares: dict[str, bytes] = {}
        self._seeds: dict[str, bytes] = {}
        self._revealed: dict[str, RevealKind] = {}
        self.abandoned = False

    @property
    def roster(self) -> tuple[str, ...]:
        if self._roster is None:
            raise LocalProtocolError("no share relay accepted yet: the roster is unknown")
        return self._roster

    @property
    def my_partners(self) -> frozenset[str]:
        return self._partners[self.me] if self._roster is not None else frozenset()

    @property
    def revealed(self) -> Mapping[str, RevealKind]:
        """What has been revealed so far, per peer (for audits and tests)."""
        return dict(self._revealed)

    def _check_context(self, peer: str, round: int, receiver: str) -> None:
        if peer != self.ctx.receiver:
            raise PeerProtocolError(peer, f"only receiver {self.ctx.receiver!r} may ask this")
        if (round, receiver) != (self.ctx.round, self.ctx.receiver):
            raise PeerProtocolError(peer, f"message for round {round} at {receiver!r} misrouted")

    def accept(self, peer: str, relay: ShareRelay) -> None:
        """Take the roster and open the shares sealed to ``me`` (end of ShareKeys)."""
        self._check_context(peer, relay.round, relay.receiver)
        if self.abandoned:
            raise LocalProtocolError("this round was abandoned")
        if self._roster is not None:
            raise PeerProtocolError(peer, "a second share relay for the same round")
        roster = relay.roster
        if relay.holder != self.me or self.me not in roster:
            raise PeerProtocolError(peer, f"relay addressed to {relay.holder!r}, not {self.me!r}")
        strangers = set(roster) - set(self.ctx.neighbourhood)
        if strangers:
            raise PeerProtocolError(peer, f"roster lists non-neighbours {sorted(strangers)}")
        if len(roster) < self.ctx.threshold:
            raise PeerProtocolError(
                peer, f"roster of {len(roster)} is below the threshold {self.ctx.threshold}"
            )
        if set(relay.shares) != set(roster):
            raise PeerProtocolError(peer, "relay must carry exactly one share per roster member")
        shares = {
            dealer: open_share(
                self._keys,
                sealed,
                federation_id=self.ctx.federation_id,
                round=self.ctx.round,
                receiver=self.ctx.receiver,
                dealer=dealer,
                index=self.ctx.index(self.me),
                relayed_by=peer,
            )
            for dealer, sealed in relay.shares.items()
        }
        self._roster = roster
        self._partners = self.ctx.partners(roster)
        self._shares = shares

    def pair_seed(self, peer: str) -> bytes:
        """``s_{me,peer}`` for this (round, receiver), derived once and cached."""
        seed = self._seeds.get(peer)
        if seed is None:
            if peer not in self.ctx.neighbourhood:
                raise LocalProtocolError(f"{peer!r} is not a neighbour of {self.ctx.receiver!r}")
            seed = self._keys.pair_seed(
                peer,
                federation_id=self.ctx.federation_id,
                round=self.ctx.round,
                receiver=self.ctx.receiver,
            )
            self._seeds[peer] = seed
        return seed

    def reveal(self, peer: str, declaration: DropoutDeclaration) -> Reveal:
        """Answer the receiver's declaration: seeds with dropped partners, shares of survivors.

        Raises :class:`PeerProtocolError` (naming the receiver) and reveals
        nothing if the declaration is inconsistent, unsafe, or would make this
        holder reveal both kinds of secret for one peer.
        """
        self._check_context(peer, declaration.round, declaration.receiver)
        if self.abandoned:
            raise LocalProtocolError("this round was abandoned; nothing is revealed")
        roster = self.roster
        survivors, dropped = declaration.survivors, declaration.dropped
        if set(survivors) | set(dropped) != set(roster):
            raise PeerProtocolError(peer, "declaration does not cover the roster exactly")
        if self.me not in survivors:
            raise LocalProtocolError(f"{self.me!r} is declared dropped: it reveals nothing")
        if len(survivors) < self.ctx.threshold:
            raise PeerProtocolError(
                peer, f"{len(survivors)} survivors is below the threshold {self.ctx.threshold}"
            )
        if not is_connected(self._partners, survivors):
            raise PeerProtocolError(
                peer, "survivors' partner graph is disconnected: unmasking would leak partial sums"
            )
        plan = {m: RevealKind.PAIR_SEED for m in dropped}
        plan.update({s: RevealKind.SELF_SHARE for s in survivors})
        self._grant(peer, plan)
        return Reveal(
            self.ctx.round,
            self.ctx.receiver,
            self.me,
            pair_seeds={m: self.pair_seed(m) for m in dropped if m in self.my_partners},
            self_shares={s: self._shares[s] for s in survivors},
        )

    def _grant(self, peer: str, plan: Mapping[str, RevealKind]) -> None:
        """Record ``plan`` unless it contradicts an earlier reveal (then record nothing)."""
        for node, kind in plan.items():
            earlier = self._revealed.get(node)
            if earlier is not None and earlier is not kind:
                raise PeerProtocolError(
                    peer,
                    f"never both: the {earlier.value} of {node!r} was already revealed, "
                    f"refusing to reveal its {kind.value} as well",
                )
        self._revealed.update(plan)

    def abandon(self) -> None:
        """Forget every share and seed: an abandoned round reveals nothing more."""
        self.abandoned = True
        self._shares.clear()
        self._seeds.clear()

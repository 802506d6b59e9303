"""Neighbour ``j``'s side of a secure round at receiver ``i``: share, mask, reveal.

One :class:`MaskingSender` per (round, receiver) that ``j`` is a neighbour of.
It is driven by three calls, in this order of phases::

    share(b_j)            ADVERTISE -> SHARE   sends ShareKeys (can run before training)
    receive(i, relay)     SHARE -> MASKED      holds its shares, learns the roster U2
    set_input(x, W_ij)    MASKED -> UNMASK     sends MaskedInput (as soon as both are in)
    receive(i, decl)      UNMASK -> DONE       sends Reveal (holder rules apply)

``set_input`` may come before the relay: the input is kept (not copied, so the
caller must not change it) until the roster is known. ``b_j`` must be fresh
for every (round, receiver), from a CSPRNG (the runtime uses ``os.urandom``):
the core takes it as an argument and never draws it. An ``Abandon`` from the
receiver, or a declaration naming ``j`` as dropped, ends the round here.
The relay accepted, received again unchanged (a reconnected link's replay),
is dropped quietly; a different second relay breaks the protocol.
"""

from __future__ import annotations

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.secagg.config import RoundContext
from protocols.secagg.events import Send
from protocols.secagg.fixedpoint import Floats, encode_and_mask
from protocols.secagg.graph import mask_sign
from protocols.secagg.holder import ShareHolder
from protocols.secagg.keys import PairKeys, seal_share
from protocols.secagg.messages import (
    Abandon,
    DropoutDeclaration,
    MaskedInput,
    Message,
    ShareKeys,
    ShareRelay,
)
from protocols.secagg.phases import Phase, advance
from protocols.secagg.prg import Codes, Stream
from protocols.secagg.shamir import SEED_BYTES, split_seed


class MaskingSender:
    """Neighbour ``keys.me`` sending ``W_ij x_j`` to ``ctx.receiver``, masked (see the module doc).

    ``keys`` is the node's :class:`~protocols.secagg.keys.PairKeys`, shared by
    all its senders so each pair's key agreement is done once.
    """

    def __init__(self, ctx: RoundContext, *, keys: PairKeys) -> None:
        self.ctx = ctx
        self.me = keys.me
        self.holder = ShareHolder(ctx, keys=keys)
        self._keys = keys
        self.phase = Phase.ADVERTISE
        self._self_seed: bytes | None = None
        self._input: tuple[Floats, float] | None = None
        self._relay: ShareRelay | None = None  # the relay accepted: a replay of it is no fault

    def _to(self, message: Message) -> list[Send]:
        return [Send(self.ctx.receiver, message)]

    def share(self, self_seed: bytes) -> list[Send]:
        """Deal ``t``-of-``d`` shares of the fresh seed ``b_j``, each sealed to its holder."""
        if not isinstance(self_seed, bytes) or len(self_seed) != SEED_BYTES:
            raise LocalProtocolError(f"the self-mask seed must be {SEED_BYTES} fresh random bytes")
        self.phase = advance(self.phase, Phase.SHARE)
        ctx = self.ctx
        shares = split_seed(self_seed, ctx.threshold, ctx.degree)
        sealed = {
            holder: seal_share(
                self._keys,
                federation_id=ctx.federation_id,
                round=ctx.round,
                receiver=ctx.receiver,
                holder=holder,
                index=ctx.index(holder),
                share=shares[ctx.index(holder) - 1],
            )
            for holder in ctx.neighbourhood
        }
        self._self_seed = self_seed
        return self._to(ShareKeys(ctx.round, ctx.receiver, self.me, sealed))

    def set_input(self, x: Floats, weight: float) -> list[Send]:
        """Give the flattened model ``x`` and the mixing weight ``W_ij``; masks when it can."""
        if self.phase is Phase.ABANDONED:
            return []
        if self._input is not None or self.phase not in (
            Phase.ADVERTISE,
            Phase.SHARE,
            Phase.MASKED,
        ):
            raise LocalProtocolError("the input of this round was already given")
        self._input = (x, weight)
        return self._emit() if self.phase is Phase.MASKED else []

    def _emit(self) -> list[Send]:
        assert self._input is not None and self._self_seed is not None
        x, weight = self._input
        streams: list[Stream] = [(self._self_seed, +1)]
        streams += [
            (self.holder.pair_seed(k), mask_sign(self.me, k))
            for k in sorted(self.holder.my_partners)
        ]
        codes: Codes = encode_and_mask(x, weight, self.ctx.cfg, streams)
        self._input = None
        self._self_seed = None
        self.phase = advance(self.phase, Phase.UNMASK)
        return self._to(MaskedInput(self.ctx.round, self.ctx.receiver, self.me, codes))

    def receive(self, peer: str, message: Message) -> list[Send]:
        """Handle a message from the receiver; returns what to send back."""
        if peer != self.ctx.receiver:
            raise PeerProtocolError(
                peer, f"only receiver {self.ctx.receiver!r} talks to this sender"
            )
        if self.phase is Phase.ABANDONED:
            return []
        if isinstance(message, Abandon):
            self._abandon()
            return []
        if isinstance(message, ShareRelay):
            if self.phase is not Phase.SHARE:
                if message == self._relay:  # a replay after a reconnection: nothing new
                    return []
                raise PeerProtocolError(peer, f"share relay unexpected in phase {self.phase.name}")
            self.holder.accept(peer, message)
            self._relay = message
            self.phase = advance(self.phase, Phase.MASKED)
            return self._emit() if self._input is not None else []
        if isinstance(message, DropoutDeclaration):
            return self._answer(peer, message)
        raise PeerProtocolError(peer, f"a sender does not accept {type(message).__name__}")

    def _answer(self, peer: str, declaration: DropoutDeclaration) -> list[Send]:
        if self.me in declaration.dropped:
            if self.phase is Phase.DONE:
                raise PeerProtocolError(peer, "declares dropped a survivor that already revealed")
            self._abandon()
            return []
        if self.phase not in (Phase.UNMASK, Phase.DONE):
            raise PeerProtocolError(peer, f"declared a survivor in phase {self.phase.name}")
        reveal = self.holder.reveal(peer, declaration)
        if self.phase is Phase.UNMASK:
            self.phase = advance(self.phase, Phase.DONE)
        return self._to(reveal)

    def _abandon(self) -> None:
        self.holder.abandon()
        self._input = None
        self._self_seed = None
        if self.phase is not Phase.DONE:  # a finished round has nothing left to abandon
            self.phase = advance(self.phase, Phase.ABANDONED)

"""The sections a run spec is made of, with the one set of defaults rehearsal and deployment share.

Each is a frozen dataclass read from a TOML table by ``p2pfl.tables.build``
(an unknown key is an error naming it). A scenario file and a plan file spell
these sections the same way, and mean the same by them: timeouts are seconds,
virtual ones on the protocol engine's clock, real ones in a daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.training import LR_SCHEDULES

MODES = ("sync", "choco", "async", "tracking", "qgm")
"""``sync``: D-PSGD; ``choco``: CHOCO-SGD with compression; ``async``: push-sum, no barrier;
``tracking``: gradient tracking (DSGT, two vectors a round); ``qgm``: quasi-global momentum
(QG-DSGDm). ``tracking`` and ``qgm`` mix as ``sync`` does, plainly or securely."""
SECURE_MODES = ("sync", "tracking", "qgm")
"""The modes whose mix is one weighted sum over the neighbourhood, which secure mode sums."""
COMPRESSIONS = ("none", "quantize", "topk")
ROBUST = ("none", "clipped", "trimmed", "bounded")
"""``clipped``: ClippedGossip; ``trimmed``: coordinate-wise trimmed mean (both plain sync
gossip); ``bounded``: secure mode's bound on how far one mix moves a node
(``protocols.mixing``, docs/threat-model.md)."""
ROBUST_DEFAULTS = {"robust": "none", "robust_byzantine": 1}
"""The robust keys a written spec leaves out at their default, so older plan hashes hold."""
QGM_DEFAULTS = {"qgm_beta": 0.9}
"""Quasi-global momentum's key, left out at its default as the robust keys are."""


@dataclass(frozen=True)
class ModelSection:
    """A built-in model (``p2pfl.models.MODELS``) or ``module:factory`` of the user's own,
    called with ``kwargs`` (docs/your-data.md). A plan that names one needs the module
    importable at every site."""

    name: str = "logreg"
    hidden: list[int] | None = None
    kwargs: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainingSection:
    """How each node trains per round.

    ``trainable`` (parameter-efficient training): the parameters that train, named
    as parameters (``"2.weight"``) or modules (``"2"``: every parameter under it);
    the others stay at the initial model, the same at every site, so only the
    trainable ones are sent, masked and mixed. Empty: the whole model trains.

    ``lr_schedule``: ``constant`` (``lr`` every round) or ``cosine`` (``lr`` decayed
    over the run's rounds, ``p2pfl.training.LocalSchedule.lr_at``), the same at every
    site and in the pooled and local-only baselines.
    """

    rounds: int = 20
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    trainable: list[str] = field(default_factory=list)
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError("training.rounds must be at least 1")
        if len(set(self.trainable)) != len(self.trainable) or any(not w for w in self.trainable):
            raise ConfigError(f"training.trainable must be distinct names, got {self.trainable}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"training.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                f"not {self.lr_schedule!r}"
            )


@dataclass(frozen=True)
class TopologySection:
    kind: str = "ring"
    weights: str = "metropolis"
    degree: int | None = None
    seed: int | None = None
    path: str | None = None
    p: float | None = None
    k: int | None = None
    m: int | None = None


@dataclass(frozen=True)
class GossipSection:
    """How a node averages with its neighbours.

    ``compression``, ``bits``, ``topk_fraction`` and ``gamma`` are CHOCO's (the other
    modes send exact models). ``round_timeout``: seconds a round waits for its
    in-neighbours before it closes over those that arrived (sync, choco); ``None``
    waits for all of them.

    ``robust`` guards a node against Byzantine neighbours (``ROBUST``):
    ``robust_byzantine`` is how many it expects among its neighbours; ``clip_radius``
    fixes clipped gossip's tau (adaptive when unset) and is the radius ``bounded``
    needs. Checked against the graph and the secure section by ``RunSpec.check``.

    ``qgm_beta`` is quasi-global momentum's beta (``mode = 'qgm'``; its buffer's mu
    is the same, as in the paper's experiments).
    """

    mode: str = "sync"
    compression: str = "none"
    bits: int = 4
    topk_fraction: float = 0.01
    gamma: float = 1.0
    round_timeout: float | None = 300.0
    robust: str = "none"
    robust_byzantine: int = 1
    clip_radius: float | None = None
    qgm_beta: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.qgm_beta < 1:
            raise ConfigError(f"gossip.qgm_beta must be in [0, 1), not {self.qgm_beta}")
        if self.robust not in ROBUST:
            raise ConfigError(
                f"gossip.robust must be one of {', '.join(ROBUST)}, not {self.robust!r}"
            )
        if self.robust_byzantine < 0:
            raise ConfigError(f"gossip.robust_byzantine must be >= 0, not {self.robust_byzantine}")
        if self.clip_radius is not None and not self.clip_radius > 0:
            raise ConfigError(f"gossip.clip_radius must be positive, not {self.clip_radius}")
        if self.mode not in MODES:
            raise ConfigError(f"gossip.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"gossip.compression must be one of {', '.join(COMPRESSIONS)}, "
                f"not {self.compression!r}"
            )
        if self.round_timeout is not None and not self.round_timeout > 0:
            raise ConfigError(f"gossip.round_timeout must be positive, not {self.round_timeout}")


@dataclass(frozen=True)
class SecureSection:
    """Secure aggregation over each neighbourhood.

    The fixed-point step is 1 / ``scale``; each contribution W_ij x_j is clipped
    to [-``clip``, ``clip``]. The defaults (step 2^-18, clip 8) keep the codes on
    the fast 32-bit path and neighbourhoods up to 1,023 without overflow; with
    step 2^-16 one of 230 hospital predictions flipped.

    The share phase opens when a node starts its round, before its neighbours
    (who may still be closing the previous round over a dropout) can deal, so
    its timeout is the longest.

    ``allow_no_dropout``: a plan whose neighbourhoods tolerate no dropout (a node
    with d neighbours and threshold t survives d - t) is refused for deployment
    (``Plan.check_for``, ``Plan.graph``) unless it says so here: one neighbour down
    or restarting then makes a node abandon that round's aggregation.
    """

    enabled: bool = False
    scale: float = 262144.0
    clip: float = 8.0
    modulus_bits: int = 32
    threshold: int | None = None
    sparse_k: int | None = None
    share_timeout: float = 600.0
    masked_timeout: float = 120.0
    unmask_timeout: float = 60.0
    allow_no_dropout: bool = False

    def __post_init__(self) -> None:
        for key in ("share_timeout", "masked_timeout", "unmask_timeout"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"secure.{key} must be positive")


PERSONALISE = ("none", "finetune", "partial")
"""``finetune``: each site fine-tunes the final gossip model on its own data, stopping
early on a validation split of it; ``partial``: FedRep-style partial sharing, the
``layers`` named stay personal and only the rest is gossiped (``protocols.partial``)."""


@dataclass(frozen=True)
class PersonaliseSection:
    """How each site personalises the federation's model (docs/node.md, the plan).

    ``finetune``: after the last round a site splits ``val_fraction`` of its training
    rows off as a validation split (drawn from the seed and the site; it never leaves
    the site), trains the gossip model on the rest ``eval_every`` steps at a time, at
    most ``max_steps``, and keeps the parameters of lowest validation loss, stopping
    once ``patience`` checks in a row bring no improvement.

    ``partial``: ``layers`` are parameter names (``"1.bias"``) or module names
    (``"3"``, every parameter under it) of the model, or ``"head"`` (the last module
    that has parameters); they are personal from round 0: never sent, never masked,
    never mixed. Runs over ``gossip.mode = 'sync'`` (plain or secure).
    """

    method: str = "none"
    layers: list[str] = field(default_factory=list)
    val_fraction: float = 0.2
    max_steps: int = 200
    eval_every: int = 5
    patience: int = 5

    def __post_init__(self) -> None:
        if self.method not in PERSONALISE:
            raise ConfigError(
                f"personalise.method must be one of {', '.join(PERSONALISE)}, not {self.method!r}"
            )
        if self.method == "partial" and not self.layers:
            raise ConfigError(
                "personalise.method = 'partial' needs personalise.layers: the parameters or "
                'modules that stay at each site (e.g. ["head"])'
            )
        if self.method != "partial" and self.layers:
            raise ConfigError(
                f"personalise.layers is partial sharing's, but personalise.method is "
                f"{self.method!r}"
            )
        if len(set(self.layers)) != len(self.layers) or any(not w for w in self.layers):
            raise ConfigError(f"personalise.layers must be distinct names, got {self.layers}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"personalise.val_fraction must be in (0, 1), not {self.val_fraction}"
            )
        for key in ("max_steps", "eval_every", "patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"personalise.{key} must be at least 1, not {getattr(self, key)}")

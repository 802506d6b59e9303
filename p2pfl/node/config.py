"""A node's configuration: one TOML file, every key known, paths relative to the file.

Sections (``p2pfl node init`` writes a commented template)::

    [node]    key, passphrase_file, ledger, data_dir, listen, advertise, reachable, name
    [tls]     cert, key, cafile
    [data]    entrypoint ("module:function"), args, kwargs
    [limits]  message sizes, timeouts, reconnect backoff, checkpoints kept, threads,
              faults a member may commit before it is disconnected (``p2pfl.node.faults``)
    [dashboard]  listen (off when empty), interval, token: the live page (``p2pfl.node.dashboard``)

An unknown key is an error naming it. Relative paths are read against the
directory of the config file, so a node directory can be moved as a whole.
``insecure`` (plain ws allowed) is deliberately not a file setting: only the
``--insecure`` flag of ``p2pfl node run`` or ``NodeConfig(insecure=True)`` in a
program turns it on, and the transport logs it loudly.

``check_safe_settings`` is what ``p2pfl node run`` checks before it starts
(safe people and settings): the key file, passphrase file and TLS key are
private to their owner (no group/other bits: ``chmod 600``), so is the data
directory holding the ledger, checkpoints and audit log (``chmod 700``; a
missing one is created so), and links are TLS (``[tls]`` cert and key,
``wss://``) unless ``--insecure`` was given.

A site that accepts no inbound connection (a firewall that lets nothing in)
says ``reachable = false`` or leaves ``listen`` empty: the node then starts no
listener and needs no ``[tls]`` pair (it only dials, and the peer's TLS
certificate proves nothing anyway: the handshake does). Its ledger record must
have no address; its neighbours learn from that record that they cannot dial
it, and it dials them, or a relay where they cannot be dialled either
(``p2pfl.node.relaying``).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfl.drift import DriftSection
from p2pfl.energy import EnergySection
from p2pfl.errors import ConfigError
from p2pfl.node.dashboard import DashboardSection
from p2pfl.tables import build


@dataclass(frozen=True)
class NodeSection:
    key: str = "node.key"
    passphrase_file: str = ""
    ledger: str = "ledger"
    data_dir: str = "."
    listen: str = "wss://0.0.0.0:7443"
    # Where peers reach this node when a proxy, NAT or port forward sits in front of
    # ``listen`` (the ledger records it); empty: they reach it at ``listen`` itself.
    advertise: str = ""
    # False (or an empty ``listen``): the site accepts no inbound connection, so no
    # listener is started; the node dials out to all its links (module docstring).
    reachable: bool = True
    name: str = ""


@dataclass(frozen=True)
class TlsSection:
    cert: str = ""
    key: str = ""
    cafile: str = ""


@dataclass(frozen=True)
class DataSection:
    entrypoint: str = ""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LimitsSection:
    """Bounds and timings (seconds, bytes)."""

    max_message_size: int = 256 << 20
    frame_size: int = 1 << 20
    handshake_timeout: float = 10.0
    start_timeout: float = 600.0
    rejoin_timeout: float = 30.0
    epoch_timeout: float = 60.0  # a round waits this long for a roster change's boundary
    linger_timeout: float = 60.0
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    keep_checkpoints: int = 5
    replay_buffer: int = 64 << 20
    anti_entropy_interval: float = 30.0
    status_interval: float = 2.0
    threads: int = 0
    peer_faults: int = 20
    peer_fault_window: float = 60.0
    peer_ban_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_message_size", "frame_size"):
            if getattr(self, name) < 1024:
                raise ConfigError(f"[limits] {name} must be at least 1024 bytes")
        for name in (
            "handshake_timeout",
            "start_timeout",
            "rejoin_timeout",
            "epoch_timeout",
            "backoff_initial",
            "backoff_max",
            "anti_entropy_interval",
            "status_interval",
            "peer_fault_window",
            "peer_ban_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[limits] {name} must be positive")
        if min(self.linger_timeout, self.keep_checkpoints, self.threads, self.replay_buffer) < 0:
            raise ConfigError(
                "[limits] linger_timeout, keep_checkpoints, replay_buffer, threads must be >= 0"
            )
        if self.peer_faults < 1:
            raise ConfigError("[limits] peer_faults must be at least 1")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("[limits] backoff_max must be at least backoff_initial")


@dataclass(frozen=True)
class NodePrivacySection:
    """This site's own choices; the federation's DP settings live in the plan."""

    share_metrics: bool = False  # publish this site's own accuracy and loss to the ledger


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to start; paths already resolved against ``base_dir``."""

    node: NodeSection = field(default_factory=NodeSection)
    tls: TlsSection = field(default_factory=TlsSection)
    data: DataSection = field(default_factory=DataSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    privacy: NodePrivacySection = field(default_factory=NodePrivacySection)
    drift: DriftSection = field(default_factory=DriftSection)
    energy: EnergySection = field(default_factory=EnergySection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    base_dir: str = "."
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.drift.inject:
            raise ConfigError("[drift] inject is for simulations; a node watches its real data")

    def path(self, value: str) -> Path:
        """A path of the file, resolved against the config file's directory."""
        expanded = Path(os.path.expanduser(value))
        return expanded if expanded.is_absolute() else Path(self.base_dir) / expanded

    @property
    def listens(self) -> bool:
        """Whether this node starts a listener: ``reachable`` and a ``listen`` address."""
        return self.node.reachable and bool(self.node.listen)

    @property
    def key_file(self) -> Path:
        return self.path(self.node.key)

    @property
    def ledger_file(self) -> Path:
        return self.path(self.node.ledger)

    @property
    def data_dir(self) -> Path:
        return self.path(self.node.data_dir)

    @property
    def passphrase_file(self) -> Path | None:
        return self.path(self.node.passphrase_file) if self.node.passphrase_file else None

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)


_PYTHON_ONLY = frozenset({"base_dir", "insecure"})


def config_from_table(
    table: dict[str, Any], base_dir: str | os.PathLike[str], where: str = "node config"
) -> NodeConfig:
    """A ``NodeConfig`` from a parsed TOML table; ``ConfigError`` naming any unknown key."""
    config = build(NodeConfig, table, where, skip=_PYTHON_ONLY)
    return dataclasses.replace(config, base_dir=str(Path(base_dir).resolve()))


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read a node config file (TOML)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such node config file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML node config: {exc}") from None
    return config_from_table(table, path.parent, str(path))


def check_safe_settings(config: NodeConfig, where: str = "node config") -> None:
    """Refuse to start with secrets or the data directory open to others, or without TLS."""
    for path, what in _secret_files(config):
        _check_private(path, what, "600")
    data_dir = config.data_dir
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True)
    _check_private(data_dir, "the data directory (ledger, checkpoints, audit log)", "700")
    if not config.insecure and config.listens:  # a node that only dials needs no TLS pair
        _check_tls(config, where)


def _secret_files(config: NodeConfig) -> list[tuple[Path, str]]:
    files = [(config.key_file, "the key file")]
    if config.passphrase_file is not None:
        files.append((config.passphrase_file, "the passphrase file"))
    if config.tls.key:
        files.append((config.path(config.tls.key), "the TLS private key"))
    return files


def _check_private(path: Path, what: str, fix: str) -> None:
    """``ConfigError`` naming the path, its mode and the chmod that fixes it (POSIX only)."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return  # loading it says it is missing, with its own message
    except OSError as exc:
        raise ConfigError(f"{path}: cannot check {what}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: {what} is readable or writable by group/others (mode {mode:o}); "
            f"run: chmod {fix} {path}"
        )


def _check_tls(config: NodeConfig, where: str) -> None:
    listen = config.node.listen
    if not (config.tls.cert and config.tls.key):
        raise ConfigError(
            f"{where}: [tls] cert and key are not set, and a node links institutions only "
            "over TLS (wss://); make a pair with `p2pfl tls init` (or `p2pfl node init --tls`) "
            "and name it in [tls], or pass --insecure to allow plain ws:// (unencrypted)"
        )
    if listen.startswith("ws://"):
        raise ConfigError(
            f"{where}: [node] listen = {listen!r} is plain ws://; use wss:// "
            "(the [tls] pair is set), or pass --insecure to allow plain ws://"
        )


TEMPLATE = """\
# p2pfl node configuration. Relative paths are read against this file's directory.
# Unknown keys are errors. Start with:  p2pfl node run --config {config_name}

[node]
key = "node.key"              # this node's identity (mode 0600): p2pfl keys init / node init
# passphrase_file = "pass"    # if the key is sealed with a passphrase
ledger = "ledger"             # the federation ledger: p2pfl federation create/join --out ledger
data_dir = "."                # checkpoints/, audit.jsonl, status.json live here
listen = "{listen}"   # where neighbours reach this node (the ledger has its address)
# advertise = "wss://host:port" # where they reach it instead, via a proxy / NAT / port forward
# reachable = false           # the site accepts no inbound connection: no listener, it
#                             # dials out (its ledger record has no address; see docs/node.md)
# name = "my hospital"        # a label for logs

[tls]                         # wss needs a certificate and key (p2pfl tls init, node init --tls)
cert = "{cert}"
key = "{tls_key}"
# cafile = "ca.pem"           # verify peers' certificates against an institution CA too

[data]
# A function returning this node's data, (x_train, y_train, x_test, y_test); see docs/node.md.
entrypoint = "p2pfl.node.examples:heart_site"
args = ["Cleveland"]          # positional arguments of the entrypoint
# kwargs = {{}}                 # keyword arguments of the entrypoint

[limits]
max_message_size = 268435456  # bytes: the largest model message accepted
frame_size = 1048576          # bytes: websocket fragments of large messages
handshake_timeout = 10.0      # seconds for the mutual challenge-response
start_timeout = 600.0         # seconds to wait for plan approvals and neighbours
rejoin_timeout = 30.0         # seconds to wait for neighbours' ledgers when resuming
epoch_timeout = 60.0          # seconds a round waits for a roster change's boundary
linger_timeout = 60.0         # after the last round, serve neighbours until they finish
backoff_initial = 0.2         # seconds before the first reconnection attempt
backoff_max = 5.0             # longest wait between reconnection attempts
keep_checkpoints = 5          # per-round checkpoints kept (0 keeps all)
replay_buffer = 67108864      # bytes per neighbour of this round's messages kept for resending
anti_entropy_interval = 30.0  # seconds between ledger state-vector exchanges
status_interval = 2.0         # seconds between status file refreshes
threads = 0                   # torch threads for training (0: torch's default)
peer_faults = 20              # protocol faults a member may commit within peer_fault_window
peer_fault_window = 60.0      # seconds; also one audit record per kind of fault per window
peer_ban_seconds = 300.0      # a member past peer_faults is disconnected and refused this long

[privacy]                     # the federation's DP settings are in the plan; this is yours
share_metrics = false         # also publish this site's own accuracy and loss to the ledger

[drift]                       # watch this site's data and loss for drift (events stay here)
enabled = false
alpha = 0.01                  # chance of any false alarm per detector over the whole run

[energy]                      # factors of the energy estimate in this node's run crate
joules_per_byte = 6.75e-6     # network transfer (an assumption: set your own)
watts_per_core = 12.0         # one busy core
cores = 1
pue = 1.0                     # data centre power usage effectiveness

[dashboard]                   # a live page of this node (or: p2pfl node run --dashboard ...)
# listen = "127.0.0.1:8080"   # serves it (off while unset); off loopback it requires a token
interval = 0.5                # seconds: at most one update per interval
token = false                 # also require the token on loopback (a shared machine)
"""


def template(
    *, listen: str = "wss://0.0.0.0:7443", tls: bool = True, config_name: str = "node.toml"
) -> str:
    """The commented config file ``p2pfl node init`` writes."""
    text = TEMPLATE.format(
        config_name=config_name,
        listen=listen,
        cert="tls-cert.pem" if tls else "",
        tls_key="tls-key.pem" if tls else "",
    )
    return text

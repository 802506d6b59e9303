"""Fuzz targets: one function per decoder of foreign or on-disk bytes, ``bytes -> None``.

Each target feeds its bytes to one decoder and returns when the decoder either
accepts them or raises its documented error. It raises ``Bug`` (``guard.py``; or lets the
unexpected exception through) for anything else: another exception, a Rust
panic from pycrdt (``pyo3_runtime.PanicException``, a ``BaseException``), a
call that takes more than ``MAX_SECONDS`` of CPU time (CPU, not wall time: the
machine is shared), a peak resident memory more than ``MAX_PEAK_BYTES`` above
where the call started (read from ``VmHWM``, reset per call through
``/proc/self/clear_refs``, so Rust's allocations count too), or a ledger left
changed by an update it refused.

``SEEDS`` maps each target's name to valid encodings built here, in code, so a
mutation-based fuzzer starts from inputs that reach deep into each decoder.
``tests/test_fuzz_targets.py`` runs every target under hypothesis with
mutations of those seeds; ``simulations/fuzz/run.py`` runs them for long
campaigns under atheris.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import msgpack
import nacl.signing
import numpy as np
from pycrdt import Doc, Map

from p2pfl.errors import ConfigError, KeyFileError, LedgerFileError
from p2pfl.identity import Identity, load_identity, save_identity
from p2pfl.ledger_file import MAGIC as LEDGER_MAGIC
from p2pfl.ledger_file import encode_ledger_file, ledger_from_bytes
from p2pfl.node.audit import AuditLog, verify_data
from p2pfl.node.checkpoint import read_checkpoint, write_checkpoint
from p2pfl.node.config import load_config, template
from p2pfl.node.errors import CheckpointError
from p2pfl.spec.errors import PlanError
from p2pfl.spec.plan import plan_from_table
from p2pfl.transport.errors import AuthenticationFailed
from p2pfl.transport.handshake import Handshake
from protocols import wire
from protocols.compression import QuantizeCompressor, TopKCompressor
from protocols.errors import DecodeError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync, SyncStep1, SyncStep2, Update
from protocols.records import node_id_for, open_record
from protocols.secagg import (
    Abandon,
    DropoutDeclaration,
    MaskedInput,
    Reveal,
    ShareKeys,
    ShareRelay,
)
from protocols.secagg import decode as decode_secagg

PLAN_FILE = Path(__file__).resolve().parents[1] / "plans" / "heart_disease.toml"

Target = Callable[[bytes], None]


def _sibling(name: str) -> ModuleType:
    """``guard.py`` beside this file, loaded by path as this file is (no package here)."""
    module = sys.modules.get(f"fuzz_{name}")
    if module is None:
        spec = importlib.util.spec_from_file_location(f"fuzz_{name}", HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


HERE = Path(__file__).resolve().parent
_guard = _sibling("guard")
Bug = _guard.Bug
guarded = _guard.guarded
_scratch, sweep = _guard.scratch, _guard.sweep
MAX_SECONDS, MAX_PEAK_BYTES = _guard.MAX_SECONDS, _guard.MAX_PEAK_BYTES


def _file(name: str, data: bytes, mode: int = 0o600) -> Path:
    path = _scratch() / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


# -- the ledger: updates, state vectors, sync messages, files -------------------------------


def _key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


@functools.cache
def _federation() -> tuple[Ledger, list[bytes]]:
    """A small federation written by two replicas, and every update they made."""
    founder, admin, member = _key(1), _key(2), _key(3)
    ledger = Ledger.found(founder, name="fuzz", nonce=b"n", address="wss://f:1", client_id=1)
    updates = [ledger.encode_state()]
    updates.append(ledger.admit(founder, bytes(admin.verify_key), clock=2, admin=True))
    updates.append(ledger.admit(admin, bytes(member.verify_key), clock=3, address="wss://b:1"))
    updates.append(ledger.set_plan(founder, {"model": "mlp", "rounds": 5}, clock=4))
    other = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()], client_id=2)
    for round_ in range(3):
        mine = ledger.report_progress(founder, round_, clock=ledger.next_clock())
        theirs = other.report_progress(member, round_, clock=other.next_clock())
        other.apply_update(mine)
        ledger.apply_update(theirs)
        updates += [mine, theirs]
    leave = other.leave(member, 2, clock=other.next_clock())
    ledger.apply_update(leave)
    leaving = {f"leave:{node_id_for(bytes(member.verify_key))}": 2}
    ack = ledger.ack(founder, leaving, clock=ledger.next_clock())
    assert ack is not None
    updates += [leave, ack]
    updates.append(ledger.publish_metrics(founder, 2, {"loss": 0.5}, clock=ledger.next_clock()))
    updates.append(ledger.encode_state())
    return ledger, updates


def _replica() -> Ledger:
    """A fresh replica holding the federation's first four updates.

    It starts knowing the verdicts on the federation's genuine records (parsing and
    signature checks are pure functions of an entry's bytes, cached per entry by
    every replica): checking them again cost two thirds of a taken update's time.
    Any entry an input adds or changes has other bytes, and is checked in full.
    """
    replica = Ledger.from_updates(_federation()[0].federation_id, [_base()], client_id=7)
    replica._cache._known = dict(_verified())
    return replica


@functools.cache
def _verified() -> dict[tuple[str, str, bytes], object]:
    """The verdicts of a replica that holds every update of the federation."""
    ledger, updates = _federation()
    whole = Ledger.from_updates(ledger.federation_id, updates, client_id=8)
    with _closing(whole):
        whole.view()
        return dict(whole._cache._known)


@functools.cache
def _base_state() -> bytes:
    """A fresh replica's encoding (every fresh replica encodes the same)."""
    replica = _replica()
    with _closing(replica):
        return replica.encode_state()


@functools.cache
def _base() -> bytes:
    ledger, updates = _federation()
    first = Ledger.from_updates(ledger.federation_id, updates[:4], client_id=7)
    with _closing(first):
        return first.encode_state()


def ledger_update(data: bytes) -> None:
    """``Ledger.apply_update``: ``DecodeError``, and then the replica is as it was.

    An update it takes in must leave a replica that still reads and still takes
    the federation's later updates.
    """
    replica = _replica()
    with guarded(()), _closing(replica):
        try:
            replica.apply_update(data)
        except DecodeError:
            if replica.encode_state() != _base_state():
                raise Bug("a refused update changed the document") from None
            return
        for update in _federation()[1][4:]:
            replica.apply_update(update)
        replica.view()


@contextmanager
def _closing(ledger: Ledger) -> Iterator[None]:
    """Close the replica's document at the end, so that a long campaign does not grow."""
    try:
        yield
    finally:
        ledger.store.close()


def ledger_member_update(data: bytes) -> None:
    """A member's update to a replica that verified the whole federation: ``DecodeError`` or
    applied; either way every record the view showed, it still shows (the view is monotone)."""
    ledger = _federation()[0]
    replica = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()], client_id=8)
    with _closing(replica):
        before = _shown(replica)
        with guarded((DecodeError,)):
            replica.apply_update(data, origin="peer")
        if not before <= _shown(replica):
            raise Bug(f"a verified record left the view: {sorted(before - _shown(replica))}")


def _shown(ledger: Ledger) -> set[tuple[str, str, bytes]]:
    return {(n, s, r.value) for n, slots in ledger.view().current.items() for s, r in slots.items()}


def _member_edits() -> list[bytes]:
    """Updates a member makes on its own copy: deleting, overwriting, re-setting old records."""
    ledger, updates = _federation()
    edits = []
    for edit in ("delete", "overwrite", "old"):
        doc: Doc = Doc(client_id=66)
        doc.apply_update(ledger.encode_state())
        before = doc.get_state()
        for name in ("members", "progress", "plan", "left", "acks"):
            entries = doc.get(name, type=Map)
            for key in list(entries.keys()):
                if edit == "delete":
                    del entries[key]
                elif edit == "overwrite":
                    entries[key] = b"\x93" + bytes(entries[key])[1:]
        if edit == "old":
            doc.get("progress", type=Map)["x@1"] = updates[4]
        edits.append(bytes(doc.get_update(before)))
    return edits


def ledger_state_vector(data: bytes) -> None:
    """``Ledger.diff`` of a peer's state vector: ``DecodeError``."""
    ledger = _federation()[0]
    with guarded((DecodeError,)):
        ledger.diff(data)


def ledger_sync(data: bytes) -> None:
    """``LedgerSync.receive`` of a peer's message: ``PeerProtocolError``."""
    sync = LedgerSync(_replica())
    sync.connect("peer")
    with guarded((PeerProtocolError,)), _closing(sync.ledger):
        sync.receive("peer", data)
        sync.ledger.view()


def ledger_file(data: bytes) -> None:
    """A whole ledger file's bytes: ``LedgerFileError``."""
    with guarded((LedgerFileError,)):
        ledger = ledger_from_bytes(data, "fuzz.ledger", client_id=7)
        with _closing(ledger):
            ledger.view()


def ledger_file_content(data: bytes) -> None:
    """A ledger file's msgpack content, sealed with a valid checksum: ``LedgerFileError``.

    The checksum stops plain mutations at the first check; sealing them here
    sends them on to the msgpack and Yjs decoders, as a file written by a
    careless or hostile tool would.
    """
    body = LEDGER_MAGIC + data
    sealed = body + hashlib.blake2b(body, digest_size=32).digest()
    ledger_file(sealed)


# -- other protocol messages ----------------------------------------------------------------


def wire_frame(data: bytes) -> None:
    """``protocols.wire.decode`` of a gossip frame: ``DecodeError``."""
    with guarded((DecodeError,)):
        wire.decode(data)


def secagg_message(data: bytes) -> None:
    """``protocols.secagg.decode`` of a secure-aggregation frame: ``DecodeError``."""
    with guarded((DecodeError,)):
        decode_secagg(data)


def ledger_record(data: bytes) -> None:
    """``protocols.records.open_record`` of a stored value: ``DecodeError``."""
    key = _record()[0]
    with guarded((DecodeError,)):
        open_record("progress", key, data)


@functools.cache
def _record() -> tuple[str, bytes]:
    """One progress record of the federation: its key and its stored value."""
    key, value = sorted(_federation()[0].entries("progress").items())[0]
    assert isinstance(value, bytes | bytearray)
    return key, bytes(value)


def _handshake(initiator: bool) -> Handshake:
    """The founder's end; the member of ``_handshake_peer`` is the one peer it knows."""
    member = bytes(_key(3).verify_key)
    known = {node_id_for(member): member}
    return Handshake(_key(1), known.get, initiator=initiator, nonce=b"\1" * 32)


def handshake(data: bytes) -> None:
    """A handshake hello, then a proof after a valid hello: ``AuthenticationFailed``."""
    with guarded((AuthenticationFailed,)):
        _handshake(True).receive_hello(data)
    peer = _handshake_peer()
    end = _handshake(True)
    end.receive_hello(peer.hello())
    with guarded((AuthenticationFailed,)):
        end.receive_proof(data)


def _handshake_peer() -> Handshake:
    founder = bytes(_key(1).verify_key)
    return Handshake(_key(3), lambda _: founder, initiator=False, nonce=b"\2" * 32)


# -- files: key files, audit logs, checkpoints, configs and plans ---------------------------


def key_file(data: bytes) -> None:
    """``load_identity`` of a key file (no passphrase: sealed ones stop before Argon2id)."""
    path = _file("fuzz.key", data)
    with guarded((KeyFileError,)):
        load_identity(path)


def audit_log(data: bytes) -> None:
    """``verify_data`` of an audit log: it explains every break and raises nothing."""
    with guarded(()):
        verify_data(data, expect_head="0" * 64)


def checkpoint(data: bytes) -> None:
    """``read_checkpoint`` of a checkpoint file, kept and streamed: ``CheckpointError``."""
    path = _file("round-000001.ckpt", data)
    for keep in (True, False):
        with guarded((CheckpointError,)):
            read_checkpoint(path, model=keep)


def node_config(data: bytes) -> None:
    """``load_config`` of a node config file: ``ConfigError``."""
    path = _file("node.toml", data)
    with guarded((ConfigError,)):
        load_config(path)


def plan_file(data: bytes) -> None:
    """A plan file (TOML, as ``federation create --plan`` reads it): ``PlanError``."""
    with guarded((PlanError,)):
        try:
            table = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            return
        plan_from_table(table, "fuzz plan")


def plan_record(data: bytes) -> None:
    """A plan as the ledger hands it over (msgpack of the plan table): ``PlanError``."""
    with guarded((PlanError,)):
        try:
            table = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException):
            return
        if isinstance(table, dict):
            plan_from_table(table, "fuzz plan")


TARGETS: dict[str, Target] = {
    "ledger_update": ledger_update,
    "ledger_member_update": ledger_member_update,
    "ledger_state_vector": ledger_state_vector,
    "ledger_sync": ledger_sync,
    "ledger_file": ledger_file,
    "ledger_file_content": ledger_file_content,
    "wire_frame": wire_frame,
    "secagg_message": secagg_message,
    "ledger_record": ledger_record,
    "handshake": handshake,
    "key_file": key_file,
    "audit_log": audit_log,
    "checkpoint": checkpoint,
    "node_config": node_config,
    "plan_file": plan_file,
    "plan_record": plan_record,
}


# -- seed corpora: valid encodings, built here ----------------------------------------------


def _ledger_seeds() -> dict[str, list[bytes]]:
    ledger, updates = _federation()
    vectors = [ledger.state_vector(), _replica().state_vector(), b"\0"]
    fid = ledger.federation_id
    sync = [SyncStep1(fid, v).encode() for v in vectors]
    sync += [SyncStep2(ledger.diff(vectors[1])).encode(), Update(updates[-2]).encode()]
    sync.append(SyncStep2(ledger.diff(vectors[1]), vectors[0]).encode())  # a reply: its vector
    content = [msgpack.packb([fid, [u]], use_bin_type=True) for u in (updates[-1], updates[0])]
    files = [encode_ledger_file(fid, [updates[-1]]), encode_ledger_file(fid, updates[:3])]
    return {
        "ledger_update": [*updates, ledger.diff(vectors[1])],
        "ledger_member_update": [*_member_edits(), *updates[-3:]],
        "ledger_state_vector": vectors,
        "ledger_sync": sync,
        "ledger_file": files,
        "ledger_file_content": content,
        "ledger_record": [_record()[1]],
    }


def _message_seeds() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(64).astype(np.float32)
    frames = [
        wire.encode(wire.GossipMessage("a", 3, wire.dense(v), 0.5)),
        wire.encode(wire.GossipMessage("b", 0, wire.dense(v.astype(np.float64)))),
        wire.encode(wire.GossipMessage("c", 1, QuantizeCompressor(4).compress(v, rng))),
        wire.encode(wire.GossipMessage("d", 2, TopKCompressor(0.1).compress(v, rng), 0.25)),
    ]
    codes = np.arange(16, dtype="<u4")
    secagg = [
        ShareKeys(1, "r", "s", {"x": b"\1" * 40, "y": b"\2" * 40}).encode(),
        ShareRelay(1, "r", "s", ("s", "x", "y"), {"x": b"\3" * 40}).encode(),
        MaskedInput(1, "r", "s", codes).encode(),
        MaskedInput(2, "r", "s", codes.astype("<u8")).encode(),
        DropoutDeclaration(1, "r", ("s", "x"), ("y",)).encode(),
        Reveal(1, "r", "s", {"x": b"\4" * 32}, {"y": b"\5" * 64}).encode(),
        Abandon(1, "r", "too few neighbours").encode(),
    ]
    peer = _handshake_peer()
    end = _handshake(True)
    proof = peer.receive_hello(end.hello())
    hello = peer.hello()
    refused = msgpack.packb({"t": "refused", "code": "not-member", "reason": "no"})
    return {"wire_frame": frames, "secagg_message": secagg, "handshake": [hello, proof, refused]}


def _file_seeds() -> dict[str, list[bytes]]:
    directory = Path(tempfile.mkdtemp(prefix="p2pfl-fuzz-seeds-", dir=_scratch()))
    identity = Identity.from_seed(b"\7" * 32)
    save_identity(identity, directory / "plain.key")
    save_identity(identity, directory / "sealed.key", b"pw", opslimit=1, memlimit=8192)
    log = AuditLog(directory / "audit.log", clock=lambda: "2026-01-01T00:00:00Z")
    log.record("start", address="wss://127.0.0.1:1")
    log.record("auth-failed", peer="x", reason="bad-signature")
    log.close()
    model = np.arange(8, dtype=np.float32)
    state = {"momentum": np.ones(8, dtype=np.float32)}
    write_checkpoint(directory, 1, model, {"federation": "f"}, state)
    write_checkpoint(directory / "plain", 2, model)
    plan = PLAN_FILE.read_bytes()
    table = tomllib.loads(plan.decode())
    return {
        "key_file": [(directory / n).read_bytes() for n in ("plain.key", "sealed.key")],
        "audit_log": [(directory / "audit.log").read_bytes()],
        "checkpoint": [
            (directory / "round-000001.ckpt").read_bytes(),
            (directory / "plain" / "round-000002.ckpt").read_bytes(),
        ],
        "node_config": [template().encode(), template(tls=False).encode()],
        "plan_file": [plan],
        "plan_record": [msgpack.packb(table, use_bin_type=True)],
    }


@functools.cache
def seeds() -> dict[str, list[bytes]]:
    """Valid encodings for every target (built on first use: they sign and write files)."""
    corpus = {**_ledger_seeds(), **_message_seeds(), **_file_seeds()}
    assert set(corpus) == set(TARGETS), set(TARGETS) ^ set(corpus)
    return corpus

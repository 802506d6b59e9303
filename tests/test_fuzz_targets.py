"""Every decoder under mutations of its valid encodings: it decodes or raises its documented error.

The targets (``simulations/fuzz/targets.py``, loaded by path) fail on anything
else: another exception, a pycrdt panic, a call over a few seconds, a peak
memory jump. The strategies below start from each target's seed corpus and
mutate it the ways decoders break: bit flips, truncation, extension, huge
length fields, deep nesting, bytes of another type, random bytes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
# Inputs that once broke a target (a campaign's ``crashes/TARGET/SHA1``), replayed for good.
KEPT = sorted(p for p in (ROOT / "tests" / "fuzz_cases").glob("*/*") if p.suffix != ".txt")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fuzz_targets", ROOT / "simulations/fuzz/targets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


targets = _load()

# Length prefixes and counts at their extremes: lib0 varints, msgpack str/bin/array/map heads.
HUGE = [
    b"\xff\xff\xff\xff\x0f",
    b"\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x08",
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\x7f\xff\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xff\xff\xff\xff",
]
# Openers of nested containers: msgpack arrays and maps, lib0 Any arrays, JSON and TOML.
NESTING = [b"\x91", b"\x81\xa1k", b"\x75\x01", b"[", b'{"a":', b"a = [", b"[a."]
# Single bytes that switch a value to another type (msgpack nil/bool/float/str/bin/array/map/ext).
TYPE_BYTES = [0xC0, 0xC2, 0xC3, 0xCA, 0xCB, 0xA0, 0xC4, 0x90, 0x80, 0xD4, 0x7F, 0x00, 0xFF]


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A seed with one to four mutations applied."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 6))
        at = draw(st.integers(0, len(data)))
        if kind == 0 and data:  # flip a bit
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == 1:  # truncate
            del data[at:]
        elif kind == 2:  # extend, inside or at the end
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == 3:  # a huge length field
            data[at : at + draw(st.integers(0, 5))] = draw(st.sampled_from(HUGE))
        elif kind == 4:  # nested containers
            data[at:at] = draw(st.sampled_from(NESTING)) * draw(st.integers(2, 2000))
        elif kind == 5 and data:  # a byte of another type
            data[min(at, len(data) - 1)] = draw(st.sampled_from(TYPE_BYTES))
        elif kind == 6 and data:  # a slice of the seed copied elsewhere
            start = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 32))]
    return bytes(data)


def inputs(name: str) -> st.SearchStrategy[bytes]:
    corpus = targets.seeds()[name]
    return st.one_of(st.sampled_from(corpus), mutated(corpus), st.binary(max_size=64))


FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_the_seeds_are_valid_and_pass(name: str) -> None:
    assert targets.seeds()[name]
    for seed in targets.seeds()[name]:
        targets.TARGETS[name](seed)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_mutated_encodings_decode_or_raise_the_documented_error(name: str) -> None:
    target = targets.TARGETS[name]

    @FUZZ
    @given(inputs(name))
    def run(data: bytes) -> None:
        target(data)

    run()


@pytest.mark.parametrize("path", KEPT, ids=lambda p: f"{p.parent.name}/{p.name[:12]}")
def test_kept_inputs_decode_or_raise_the_documented_error(path: Path) -> None:
    assert path.parent.name in targets.TARGETS, f"{path}: no target of that name"
    targets.TARGETS[path.parent.name](path.read_bytes())


def test_the_guard_reports_a_memory_blow_up_and_other_errors() -> None:
    with pytest.raises(targets.Bug, match="peak resident memory"), targets.guarded(()):
        block = bytearray(200 << 20)
        block[::4096] = b"\1" * len(block[::4096])
    with pytest.raises(KeyError), targets.guarded((ValueError,)):
        raise KeyError("not the documented error")


def test_the_member_update_target_fails_where_the_view_forgets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the guard, a member's deletion takes verified records out of the view."""
    import protocols.ledger

    monkeypatch.setattr(protocols.ledger, "losses", lambda *args: ({}, []))
    monkeypatch.setattr(protocols.ledger, "restorable", lambda *args: {})
    deletion = targets.seeds()["ledger_member_update"][0]
    with pytest.raises(targets.Bug, match="left the view"):
        targets.ledger_member_update(deletion)

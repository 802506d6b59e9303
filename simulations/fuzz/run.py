"""Run one fuzz target for a long campaign under atheris (coverage-guided libFuzzer).

    python simulations/fuzz/run.py TARGET --seconds S
    python simulations/fuzz/run.py TARGET --runs N [--seconds S]
    python simulations/fuzz/run.py --list

TARGET is a name from ``simulations/fuzz/targets.py`` (``--list`` prints them).
The corpus directory (``runs/fuzz/corpus/TARGET`` unless ``--corpus``) is
seeded with the target's valid encodings and keeps every input that reached new
code, so a later campaign starts where this one stopped. An input that breaks
the target's contract is saved as a file under ``runs/fuzz/crashes/TARGET/``
(``--crashes``) and ends the run with a non-zero status; replay it with
``--replay FILE``. libFuzzer's last line gives the number of runs and seconds
(``Done N runs in S second(s)``). atheris is an optional extra: ``pip install
".[fuzz]"``.

The p2pfl and protocols modules are instrumented for coverage; pycrdt's Rust
core is not, so its coverage guides nothing, but its panics, hangs and memory
blow-ups are still caught by the target's guard (a libFuzzer RSS limit and
timeout back it up).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _load_targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_targets", HERE / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="a target name (see --list)")
    parser.add_argument("--seconds", type=int, help="stop after this many seconds")
    parser.add_argument("--runs", type=int, help="stop after this many inputs (first limit wins)")
    parser.add_argument("--replay", type=Path, help="run the target once on this file")
    parser.add_argument("--list", action="store_true", help="print the target names and exit")
    parser.add_argument("--corpus", type=Path, help="corpus directory (runs/fuzz/corpus/TARGET)")
    parser.add_argument("--crashes", type=Path, help="where failing inputs go")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input tried")
    return parser.parse_args(argv)


def _seed_corpus(directory: Path, seeds: list[bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds):
        (directory / f"seed-{n:03d}").write_bytes(seed)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install '.[fuzz]'", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["p2pfl", "protocols"]):
        targets = _load_targets()
    if args.list:
        print("\n".join(sorted(targets.TARGETS)))
        return 0
    if args.target not in targets.TARGETS:
        print(f"unknown target {args.target!r}; --list names them", file=sys.stderr)
        return 2
    target = targets.TARGETS[args.target]
    if args.replay is not None:
        target(args.replay.read_bytes())
        print(f"{args.replay}: no bug")
        return 0
    corpus = args.corpus or ROOT / "runs" / "fuzz" / "corpus" / args.target
    crashes = args.crashes or ROOT / "runs" / "fuzz" / "crashes" / args.target
    _seed_corpus(corpus, targets.seeds()[args.target])
    crashes.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-artifact_prefix={crashes}/",
        f"-max_len={args.max_len}",
        "-rss_limit_mb=4096",
        "-timeout=30",
        "-print_final_stats=1",
    ]
    if args.seconds is not None:
        flags.append(f"-max_total_time={args.seconds}")
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    atheris.Setup([sys.argv[0], *flags, str(corpus)], _saving(target, crashes))
    atheris.Fuzz()
    return 0


def _saving(target: Callable[[bytes], None], crashes: Path) -> Callable[[bytes], None]:
    """The target, saving any input it fails on before libFuzzer sees the failure.

    libFuzzer writes the input too, but not when a signal ends the process
    while it reports (seen with an exception raised near a timeout).
    """

    def run(data: bytes) -> None:
        try:
            target(data)
        except BaseException:
            name = hashlib.sha1(data).hexdigest()
            (crashes / f"failed-{name}").write_bytes(data)
            raise

    return run


if __name__ == "__main__":
    sys.exit(main())

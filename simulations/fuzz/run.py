"""Fuzz campaigns under atheris (coverage-guided libFuzzer): every target, or one.

    python simulations/fuzz/run.py --jobs N --cases C [--max-seconds S] [--out FILE.json]
    python simulations/fuzz/run.py TARGET --seconds S
    python simulations/fuzz/run.py TARGET --runs N [--seconds S]
    python simulations/fuzz/run.py TARGET --replay FILE
    python simulations/fuzz/run.py --list

Without TARGET it runs a campaign (``campaign.py``): ``--jobs`` worker processes
share out every target (or those of ``--targets``) until each has run
``--cases`` inputs or ``--max-seconds`` have passed, printing progress, then
write the report (per target: cases, exec/s per core, CPU seconds, peak RSS,
crashes with their inputs) to ``--out`` and print it as a table. It exits 0 when
every target reached its cases without a crash, 1 when some input broke a
target, 3 when time ran out first.

TARGET is a name from ``simulations/fuzz/targets.py`` (``--list`` prints them).
The corpus directory (``runs/fuzz/corpus/TARGET`` unless ``--corpus``) is
seeded with the target's valid encodings and keeps every input that reached new
code, so a later campaign starts where this one stopped. An input that breaks
the target's contract is saved under ``runs/fuzz/crashes/TARGET/`` (``--crashes``;
named by its SHA-1, so the directory can be copied into ``tests/fuzz_cases/``
as regression cases) and ends that worker; replay it with ``--replay FILE``.
atheris is an optional extra: ``pip install ".[fuzz]"``; the repository root
needs no install (this script puts it on ``sys.path``).

The p2pfl and protocols modules are instrumented for coverage; pycrdt's Rust
core is not, so its coverage guides nothing, but its panics, hangs and memory
blow-ups are still caught by the target's guard (a libFuzzer RSS limit and
timeout back it up).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = ROOT / "runs" / "fuzz"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import campaign  # noqa: E402 (beside this file)

# What the targets import, by module and by the name pip installs it under.
NEEDED = {
    "atheris": "atheris",
    "msgpack": "msgpack",
    "numpy": "numpy",
    "torch": "torch",
    "scipy": "scipy",
    "pycrdt": "pycrdt",
    "nacl": "pynacl",
    "cryptography": "cryptography",
    "Crypto": "pycryptodome",
    "websockets": "websockets",
    "array_api_compat": "array-api-compat",
}


def _load_targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_targets", HERE / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="one target (see --list); none: a campaign")
    parser.add_argument("--seconds", type=int, help="one target: stop after this many seconds")
    parser.add_argument("--runs", type=int, help="one target: stop after this many inputs")
    parser.add_argument("--replay", type=Path, help="run the target once on this file")
    parser.add_argument("--list", action="store_true", help="print the target names and exit")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--cases", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--max-seconds", type=float, default=420.0, help="the campaign's wall")
    parser.add_argument("--targets", help="comma-separated names (default: all)")
    parser.add_argument("--out", type=Path, default=RUNS / "campaign.json", help="the report")
    parser.add_argument("--corpus", type=Path, help="corpus directory (runs/fuzz/corpus[/TARGET])")
    parser.add_argument("--crashes", type=Path, help="failing inputs (runs/fuzz/crashes[/TARGET])")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input tried")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a campaign's counter
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
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
    if args.target is None and not args.list:
        return _campaign(args)
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
    corpus = args.corpus or RUNS / "corpus" / args.target
    crashes = args.crashes or RUNS / "crashes" / args.target
    artifacts = args.artifacts or crashes
    if args.worker is None:
        _seed_corpus(corpus, targets.seeds()[args.target])
    else:
        targets.seeds()  # the worker's set-up, done before the first case is counted
    crashes.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-artifact_prefix={artifacts}/",
        f"-max_len={args.max_len}",
        "-rss_limit_mb=4096",
        "-timeout=30",
        "-print_final_stats=1",
    ]
    if args.seconds is not None:
        flags.append(f"-max_total_time={args.seconds}")
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    run = _saving(target, crashes)
    if args.worker is not None:
        run = _counting(run, campaign.Counter(args.worker))
    atheris.Setup([sys.argv[0], *flags, str(corpus)], run)
    atheris.Fuzz()
    return 0


def _saving(target: Callable[[bytes], None], crashes: Path) -> Callable[[bytes], None]:
    """The target, saving any input it fails on before libFuzzer sees the failure.

    The input is kept as ``crashes/SHA1`` (the name a regression case has), the
    traceback beside it as ``SHA1.txt``. libFuzzer writes the input too, but not
    when a signal ends the process while it reports (seen with an exception
    raised near a timeout).
    """

    def run(data: bytes) -> None:
        try:
            target(data)
        except BaseException:
            name = hashlib.sha1(data).hexdigest()
            (crashes / name).write_bytes(data)
            (crashes / f"{name}.txt").write_text(traceback.format_exc())
            raise

    return run


def _counting(
    target: Callable[[bytes], None], counter: campaign.Counter
) -> Callable[[bytes], None]:
    """The target as a campaign's worker runs it: counted, and ended when the campaign says."""
    cases = 0

    def run(data: bytes) -> None:
        nonlocal cases
        if counter.stopped:
            os._exit(0)  # libFuzzer has written every new corpus input already
        try:
            target(data)
        finally:
            cases += 1
            counter.tick(cases)

    return run


def _campaign(args: argparse.Namespace) -> int:
    """Check that every target loads, seed the corpora once, and run the workers."""
    missing = [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"missing packages: {' '.join(missing)} (pip install them)", file=sys.stderr)
        return 2
    try:
        targets = _load_targets()
        seeds = targets.seeds()
    except ImportError as exc:
        print(f"a target cannot load: {exc} (install it beside atheris)", file=sys.stderr)
        return 2
    names = sorted(targets.TARGETS) if args.targets is None else args.targets.split(",")
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown:
        print(f"unknown targets {unknown}; --list names them", file=sys.stderr)
        return 2
    corpus = args.corpus or RUNS / "corpus"
    crashes = args.crashes or RUNS / "crashes"
    for name in names:
        _seed_corpus(corpus / name, seeds[name])
        (crashes / name).mkdir(parents=True, exist_ok=True)
    work = RUNS / "work" / time.strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    plan = campaign.Plan(
        names, args.cases, args.jobs, args.max_seconds, corpus, crashes, work, args.max_len
    )
    print(
        f"{len(names)} targets x {args.cases:,} cases on {args.jobs} jobs, "
        f"at most {args.max_seconds:.0f} s; logs in {work}",
        flush=True,
    )
    report = campaign.Campaign(plan, Path(__file__).resolve()).run()
    targets.sweep()  # the workers' scratch files (libFuzzer ends them without atexit)
    campaign.write(report, args.out)
    print(campaign.table(report))
    print(f"report: {args.out}")
    if report["crashes"]:
        return 1
    return 0 if report["all_reached"] else 3


if __name__ == "__main__":
    sys.exit(main())

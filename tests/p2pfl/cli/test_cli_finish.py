"""The command's finish: ``--version``, a closed pipe, a taken port, errors that name real
paths and the source of a bad key, tables that show every value, and a light ``--help``."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import p2pfl
from p2pfl import report as report_module
from p2pfl.cli import EXIT_BROKEN_PIPE, main
from p2pfl.cli.tls import DEFAULT_HOSTS_HELP
from p2pfl.report import print_tables
from p2pfl.runcrate import METADATA_FILE
from p2pfl.transport.tls import DEFAULT_HOSTS

ROOT = Path(__file__).resolve().parents[3]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def python(code: str, cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return interpreter("-c", code, cwd=cwd, **kwargs)


def interpreter(*args: str, cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """This Python with ``args``, in ``cwd``, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=120,
        check=False,
        **kwargs,
    )


# -- --version and --help ---------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli("--version")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"p2pfl {p2pfl.__version__}"


HEAVY = ("torch", "scipy", "matplotlib", "numpy", "networkx", "pycrdt", "nacl", "cryptography")


def test_help_imports_none_of_the_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from p2pfl.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert "usage: p2pfl" in done.stdout
    assert done.stdout.strip().endswith("LOADED []"), done.stdout[-300:]


def test_drift_settings_load_without_torch_or_scipy() -> None:
    done = python(
        "import sys\n"
        "from p2pfl.drift import DriftSection\n"
        "DriftSection()\n"
        "print(sorted(m for m in ('torch', 'scipy.stats') if m in sys.modules))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tls_help_names_the_transport_default_hosts() -> None:
    assert DEFAULT_HOSTS_HELP.split() == list(DEFAULT_HOSTS)


# -- a closed pipe ----------------------------------------------------------------------


def run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """``p2pfl ARGV`` with a standard output whose reader is already gone (``| head``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, whenever it happens
    try:
        return subprocess.run(
            [sys.executable, "-m", "p2pfl", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=ENV,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_node_status_quietly(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nkey = "node.key"\n')
    status = {"node_id": "abc", "federation": "f", "phase": "finished", "pid": 0, "round": 2}
    (tmp_path / "status.json").write_text(json.dumps(status))
    done = run_into_closed_pipe("node", "status", "--config", str(config))
    assert done.returncode == EXIT_BROKEN_PIPE
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_closed_pipe_ends_simulate_json_quietly(tmp_path: Path) -> None:
    argv = ["simulate", "tiny", "--json", "--out", str(tmp_path), "--set", "training.rounds=1"]
    done = run_into_closed_pipe(*argv)
    assert done.returncode == EXIT_BROKEN_PIPE
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-2000:]


# -- a listen port already taken --------------------------------------------------------

PLAN = """\
seed = 0
[data]
input_shape = [37]
num_classes = 2
[model]
name = "logreg"
[training]
rounds = 1
[topology]
kind = "complete"
"""


def test_node_run_on_a_taken_port_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        address = f"ws://127.0.0.1:{port}"
        site = tmp_path / "a"
        assert cli("node", "init", site, "--listen", address) == 0
        (tmp_path / "plan.toml").write_text(PLAN)
        assert (
            cli(
                "federation", "create", "--key", site / "node.key", "--name", "one",
                "--plan", tmp_path / "plan.toml", "--out", site / "ledger", "--address", address,
            )
            == 0
        )  # fmt: skip
        capsys.readouterr()
        assert cli("node", "run", "--config", site / "node.toml", "--insecure") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("p2pfl: error:")]
    assert len(errors) == 1, err
    assert f"port {port} is in use" in errors[0] and "[node] listen" in errors[0]
    assert "Traceback" not in err


# -- scenario paths and --set -----------------------------------------------------------


def simulate_error(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    assert cli("simulate", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pfl: error: ") and err.count("\n") == 1, err
    return err


def test_a_missing_scenario_suggests_files_that_exist(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    err = simulate_error(capsys, "simulations/nothere.toml")
    assert "simulations/simulations" not in err and ".toml.toml" not in err
    named = [word.strip(",;?") for word in err.split() if word.endswith((".toml", ".toml,"))]
    suggested = [name for name in named if name != "'simulations/nothere.toml'"]
    assert suggested and all((ROOT / name).is_file() for name in suggested), err
    err = simulate_error(capsys, "hospitls")
    assert "did you mean simulations/hospitals.toml" in err  # (or hospitals_personal.toml)
    err = simulate_error(capsys, "simulations/tinny.toml")
    assert "did you mean simulations/tiny.toml?" in err


def test_a_bad_set_key_is_blamed_on_set_not_the_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    scenario = "simulations/tiny.toml"
    err = simulate_error(capsys, scenario, "--set", "training.rounds=2", "--set", "training.x=1")
    assert "--set training.x=1" in err and "unknown key 'x'" in err
    assert scenario not in err
    err = simulate_error(capsys, scenario, "--set", "trainng.rounds=2")
    assert "--set trainng.rounds=2" in err and "unknown key 'trainng'" in err
    err = simulate_error(capsys, scenario, "--set", "training.rounds=many")
    assert "--set training.rounds=many" in err and "'rounds'" in err


def test_a_bad_key_in_the_file_is_still_blamed_on_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "simulations" / "tiny.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[training]", "[training]\nspeed = 3"))
    err = simulate_error(capsys, bad, "--set", "training.rounds=2")
    assert str(bad) in err and "unknown key 'speed'" in err and "--set" not in err


# -- tables -----------------------------------------------------------------------------


def a_report(labels: list[str]) -> dict[str, Any]:
    """A report of the shape ``simulate`` returns, with values that need their full width."""
    runs = []
    for i, label in enumerate(labels):
        runs.append(
            {
                "label": label,
                "engine": "vectorized",
                "final": {
                    "acc_mean": 0.8123 + i / 100,
                    "acc_min": 0.75,
                    "acc_max": 0.9,
                    "consensus": 1.7734e-3 * (i + 1),
                },
                "bytes_per_node": 12_345_678 * (i + 1),
                "energy": {"total_j": 1234.5},
                "wall": {"total": 12.25},
                "baselines": {"pooled": 0.85, "local": [0.7, 0.8]},
                "sites": [],
                "drift": None,
            }
        )
    return {"scenario": "table-check", "runs": runs}


LABELS = ["topology.kind=ring, gossip.mode=choco", "topology.kind=exponential, gossip.mode=sync"]
VALUES = ["1.77e-03", "3.55e-03", "12.35", "24.69", "1.23e+03", "81.2", "82.2", "ring, choco"]
HEADERS = ["consensus", "MB sent/node", "energy J", "wall s", "kind, mode"]


def test_a_piped_table_shows_every_value_and_header_whole() -> None:
    out = io.StringIO()
    print_tables(a_report(LABELS), Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    assert "…" not in text
    for needle in VALUES + HEADERS:
        assert needle in text, (needle, text)


@pytest.mark.parametrize("width", [100, 80, 60, 30])
def test_a_terminal_table_fits_its_width_and_cuts_nothing(width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    print_tables(a_report(LABELS), console)
    text = out.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    words = set(text.split())
    for value in VALUES + HEADERS:
        assert set(value.split()) <= words, (value, text)


def test_plots_are_written_after_the_report_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    order: list[str] = []
    real_print, real_plots = report_module.print_tables, report_module.write_plots

    def printing(*args: Any, **kwargs: Any) -> None:
        order.append("report")
        real_print(*args, **kwargs)

    def plotting(*args: Any, **kwargs: Any) -> None:
        order.append("plots")
        real_plots(*args, **kwargs)

    monkeypatch.setattr(report_module, "print_tables", printing)
    monkeypatch.setattr(report_module, "write_plots", plotting)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert cli("simulate", "tiny", "--out", out, "--set", "training.rounds=1") == 0
    assert order == ["report", "plots"]
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "consensus.png").is_file()
    assert "Wrote" in capsys.readouterr().out


# -- the exit: handlers run, output flushed, teardown skipped -----------------------------


def end_with(status: int, before: str, where: Path) -> subprocess.CompletedProcess[str]:
    """Run ``before`` in ``where``, then the command's end with ``main`` returning ``status``."""
    done = python(
        f"{before}\nimport p2pfl.cli as cli\ncli.main = lambda argv=None: {status}\ncli.run()\n"
        "open('after.txt', 'w').write('run() returned')\n",
        cwd=where,
    )
    assert done.returncode == status, done.stderr
    assert not (where / "after.txt").exists()
    return done


def test_the_command_exits_with_main_status_after_its_exit_handlers_and_buffered_output(
    tmp_path: Path,
) -> None:
    # A status of 2 (bad input), an ``atexit`` handler that writes a file, buffered output
    # not yet flushed, and a file logging handler: all reach their ends before the exit.
    before = (
        "import atexit, logging, sys\n"
        "from pathlib import Path\n"
        "logging.getLogger('t').addHandler(logging.FileHandler('log.txt', delay=True))\n"
        "logging.getLogger('t').warning('logged')\n"
        "atexit.register(lambda: Path('handler.txt').write_text('ran'))\n"
        "sys.stdout.write('buffered, no newline')"
    )
    assert end_with(2, before, tmp_path).stdout == "buffered, no newline"
    assert (tmp_path / "handler.txt").read_text() == "ran"
    assert (tmp_path / "log.txt").read_text() == "logged\n"


def test_the_exit_waits_for_a_thread_that_is_not_a_daemon(tmp_path: Path) -> None:
    before = (
        "import threading, time\n"
        "from pathlib import Path\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    Path('thread.txt').write_text('done')\n"
        "threading.Thread(target=late).start()"
    )
    end_with(0, before, tmp_path)
    assert (tmp_path / "thread.txt").read_text() == "done"


def test_a_profiled_command_still_writes_its_profile(tmp_path: Path) -> None:
    # A bad argument ends through ``main``'s status (2), so through ``exit_now``.
    command = ["-m", "cProfile", "-o", "p2pfl.prof", "-m", "p2pfl", "topology", "show", "ring"]
    done = interpreter(*command, "--nodes", "1", cwd=tmp_path)
    assert "p2pfl: error:" in done.stderr
    assert (tmp_path / "p2pfl.prof").stat().st_size > 0


def test_python_m_p2pfl_and_the_installed_command_end_through_run() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["p2pfl"] == "p2pfl.cli:run"
    assert "run()" in (ROOT / "p2pfl" / "__main__.py").read_text()
    done = interpreter("-m", "p2pfl", "topology", "show", "ring", "--nodes", "1")
    assert done.returncode == 2 and done.stderr.startswith("p2pfl: error:"), done.stderr


def test_a_simulation_reports_before_loading_rocrate_and_still_writes_its_crate(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    code = (
        "import sys\n"
        "import p2pfl.report as report\n"
        "seen = []\n"
        "real = report.print_tables\n"
        "def spy(*args, **kwargs):\n"
        "    seen.append('rocrate' in sys.modules)\n"
        "    return real(*args, **kwargs)\n"
        "report.print_tables = spy\n"
        "from p2pfl.cli import main\n"
        f"status = main(['simulate', 'simulations/tiny.toml', '--out', {str(out)!r}])\n"
        "print('AT REPORT', seen, 'STATUS', status)\n"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("AT REPORT [False] STATUS 0"), done.stdout[-500:]
    crate = json.loads((out / METADATA_FILE).read_text())
    assert any(item.get("@type") == "CreateAction" for item in crate["@graph"])


def test_the_metadata_file_is_rocrates() -> None:
    from rocrate.model.metadata import BASENAME  # type: ignore[import-untyped]

    assert METADATA_FILE == BASENAME


def test_a_node_loads_rocrate_only_to_write_its_crate() -> None:
    done = python(
        "import sys\n"
        "import p2pfl.cli.node, p2pfl.node.node, p2pfl.node.rounds, p2pfl.node.crate\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rocrate'))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

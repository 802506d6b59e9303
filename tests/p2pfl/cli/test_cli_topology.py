"""``p2pfl topology``: list, show (table, JSON, plot) and compare, through ``p2pfl.cli.main``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from p2pfl.cli import main

EXAMPLES = Path(__file__).resolve().parents[3] / "simulations" / "graphs"
KEYS = {
    "kind",
    "nodes",
    "edges",
    "connected",
    "degree_min",
    "degree_max",
    "diameter",
    "spectral_gap",
    "doubly_stochastic",
    "exact_averaging_steps",
}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert main(["topology", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_list_names_every_family_and_its_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ring", "base-k", "random-regular-per-round", "--degree", "--k", "--file"):
        assert name in out
    assert main(["topology", "list", "--json"]) == 0
    catalogue = json.loads(capsys.readouterr().out)
    by_kind = {entry["kind"]: entry for entry in catalogue}
    assert len(by_kind) == 16
    assert [p["name"] for p in by_kind["watts-strogatz"]["parameters"]] == ["degree", "p"]
    assert by_kind["one-peer-exponential"]["directed"] is True


def test_show_json_has_the_agreed_keys(capsys: pytest.CaptureFixture[str]) -> None:
    s = run_json(capsys, "show", "ring", "--nodes", "16")
    assert set(s) >= KEYS
    assert s["spectral_gap"] == pytest.approx(0.0507469783, abs=1e-6)
    assert s["exact_averaging_steps"] is None and s["connected"] is True


def test_show_json_of_a_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    s = run_json(capsys, "show", "base-k", "--nodes", "24", "--k", "2")
    assert s["exact_averaging_steps"] is not None and s["degree_max"] <= 2
    s = run_json(capsys, "show", "one-peer-exponential", "-n", "16")
    assert s["exact_averaging_steps"] == 4


def test_show_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["topology", "show", "regular", "--nodes", "20", "--degree", "3", "--seed", "4"]) == 0
    )
    out = capsys.readouterr().out
    assert "regular on 20 nodes" in out and "spectral gap" in out and "degree=3" in out


def test_show_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "ring.png"
    s = run_json(capsys, "show", "barabasi-albert", "--nodes", "30", "--plot", str(target))
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 300
    assert s["plot"] == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["ring.png"]  # no temporary file left


def test_plot_of_a_schedule(tmp_path: Path) -> None:
    target = tmp_path / "exp.png"
    assert main(["topology", "show", "one-peer-exponential", "-n", "8", "--plot", str(target)]) == 0
    assert target.read_bytes()[:4] == b"\x89PNG"


def test_plot_needs_a_png_in_an_existing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topology", "show", "ring", "-n", "8", "--plot", str(tmp_path / "a.svg")]) == 2
    assert "plot: must name a .png file" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "a.png"
    assert main(["topology", "show", "ring", "-n", "8", "--plot", str(missing)]) == 2


def test_show_file(capsys: pytest.CaptureFixture[str]) -> None:
    s = run_json(capsys, "show", "file", "--file", str(EXAMPLES / "petersen.edgelist"))
    assert (s["nodes"], s["edges"], s["diameter"]) == (10, 15, 2)


def test_bad_parameters_exit_2_with_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "show", "hypercube", "--nodes", "12"]) == 2
    assert "nodes: a hypercube needs a power of two" in capsys.readouterr().err
    assert main(["topology", "show", "regular", "--nodes", "7", "--degree", "3"]) == 2
    assert "degree:" in capsys.readouterr().err
    assert main(["topology", "show", "ring", "--nodes", "8", "--p", "0.5"]) == 2
    assert "p: is not a parameter of ring" in capsys.readouterr().err
    assert main(["topology", "show", "ring"]) == 2
    assert "nodes: --nodes is required" in capsys.readouterr().err


def test_compare_is_sorted_by_gap_and_skips_what_cannot_be_built(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_json(capsys, "compare", "--nodes", "24")
    gaps = [row["spectral_gap"] for row in out["rows"]]
    assert gaps == sorted(gaps, reverse=True)
    kinds = [row["kind"] for row in out["rows"]]
    assert kinds[0] == "complete" and kinds[-1] == "path"
    skipped = {s["kind"]: s["reason"] for s in out["skipped"]}
    assert set(skipped) == {"torus", "hypercube", "one-peer-exponential"}
    assert "power of two" in skipped["hypercube"] and "square" in skipped["torus"]
    base = next(row for row in out["rows"] if row["kind"] == "base-k")
    assert base["steps_to_1000x"] == base["exact_averaging_steps"] is not None
    ring = next(row for row in out["rows"] if row["kind"] == "ring")
    assert ring["steps_to_1000x"] > 100


def test_compare_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["topology", "compare", "-n", "16", "--kinds", "ring,torus", "hypercube", "file"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.index("hypercube") < out.index("torus") < out.index("ring")
    assert "skipped file" in out


def test_compare_passes_degree_where_it_fits(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(
        capsys, "compare", "-n", "16", "--degree", "6", "--kinds", "regular", "ring", "base-k"
    )
    params = {row["kind"]: row["parameters"] for row in out["rows"]}
    assert params["regular"] == {"degree": 6, "seed": 0} and params["base-k"] == {"k": 6}
    assert params["ring"] == {}


def test_compare_rejects_unknown_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "compare", "-n", "8", "--kinds", "donut"]) == 2
    assert "kinds: unknown family 'donut'" in capsys.readouterr().err

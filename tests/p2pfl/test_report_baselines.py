"""The report's console table shows each distinct set of baselines, named by its runs."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from p2pfl.report import baseline_groups, print_tables


def run(label: str, pooled: float, minibatch: float) -> dict[str, Any]:
    return {
        "label": label,
        "engine": "vectorized",
        "final": {"acc_mean": 0.7, "acc_min": 0.6, "acc_max": 0.8, "consensus": 1e-3},
        "bytes_per_node": 1_000_000,
        "energy": None,
        "wall": {"total": 1.0},
        "baselines": {"pooled": pooled, "minibatch": minibatch, "local": None},
        "sites": [],
        "drift": None,
    }


def sweep() -> list[dict[str, Any]]:
    """A sweep over alpha and the mode: the data, so the baselines, change with alpha."""
    runs = []
    for alpha, pooled, minibatch in (("0.1", 0.873, 0.831), ("0.5", 0.877, 0.836)):
        for mode in ("sync", "qgm"):
            runs.append(run(f"data.alpha={alpha}, gossip.mode={mode}", pooled, minibatch))
    return runs


def printed(runs: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    print_tables({"scenario": "s", "runs": runs}, Console(file=out, width=200))
    return out.getvalue()


def test_a_sweep_over_the_data_shows_the_baselines_of_each_value() -> None:
    groups = baseline_groups(sweep())
    assert [suffix for suffix, _ in groups] == [" (alpha=0.1)", " (alpha=0.5)"]
    assert [base["pooled"] for _, base in groups] == [0.873, 0.877]
    text = printed(sweep())
    for name, value in (
        ("pooled (alpha=0.1)", "87.3"),
        ("pooled (alpha=0.5)", "87.7"),
        ("mini-batch (alpha=0.1)", "83.1"),
        ("mini-batch (alpha=0.5)", "83.6"),
    ):
        (line,) = [line for line in text.splitlines() if name in line]
        assert value in line, line


def test_runs_on_the_same_data_show_one_set_unnamed() -> None:
    runs = [run(f"gossip.mode={m}", 0.873, 0.831) for m in ("sync", "qgm")]
    assert [suffix for suffix, _ in baseline_groups(runs)] == [""]
    lines = printed(runs).splitlines()
    assert len([line for line in lines if "pooled" in line and "87.3" in line]) == 1
    assert not [line for line in lines if "(" in line and "pooled" in line]


def test_sets_no_sweep_key_tells_apart_are_named_by_their_runs() -> None:
    runs = [run("a", 0.8, 0.7), run("b", 0.9, 0.7), run("c", 0.8, 0.7)]
    assert [suffix for suffix, _ in baseline_groups(runs)] == [" (runs 1, 3)", " (runs 2)"]

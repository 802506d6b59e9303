"""The non-IID sweep scenario and the script that writes its table into the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pfl.scenario import expand_sweep, load_scenario
from simulations.non_iid_table import (
    BEGIN,
    END,
    against_minibatch,
    main,
    markdown,
    rows,
    targets,
)

ROOT = Path(__file__).resolve().parents[1]


def run(
    alpha: float,
    graph: str,
    mode: str,
    acc: float,
    sent: float,
    pooled: float = 0.8,
    minibatch: float | None = 0.75,
) -> dict:
    return {
        "label": f"data.alpha={alpha}, topology.kind={graph}, gossip.mode={mode}",
        "topology": graph,
        "mode": mode,
        "nodes": 64,
        "final": {"acc_mean": acc, "acc_min": acc - 0.1},
        "rounds": [{"round": 1, "bytes_per_node": sent}, {"round": 2, "bytes_per_node": sent}],
        "baselines": {"pooled": pooled, "minibatch": minibatch},
    }


REPORT = {
    "scenario": "non_iid",
    "engine": "vectorized",
    "seed": 0,
    "runs": [
        run(0.1, "ring", "tracking", 0.7, 2000.0),
        run(0.1, "ring", "sync", 0.5, 1000.0),
        run(0.1, "ring", "qgm", 0.6, 1000.0),
    ],
}


def test_rows_carry_the_gaps_to_pooled_and_to_dpsgd_in_mode_order() -> None:
    table = rows(REPORT, 0.5)
    assert [r["mode"] for r in table] == ["sync", "tracking", "qgm"]
    tracking = table[1]
    assert tracking["gap_to_pooled"] == pytest.approx(-0.1)
    assert tracking["gap_to_dpsgd"] == pytest.approx(0.2)
    assert tracking["gap_to_minibatch"] == pytest.approx(-0.05)
    assert tracking["bytes_per_node_round"] == 2000.0 and tracking["alpha"] == 0.1


def test_the_script_writes_csv_markdown_and_the_readme_between_its_markers(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(REPORT))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{BEGIN}\nold table\n{END}\nafter\n")
    assert main([str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert markdown(REPORT, rows(REPORT, 0.1)) in text
    row = (
        "| 0.1 | ring | gradient tracking | 70.0 | 60.0 | 2 | 80.0 | -10.0 | 75.0 | -5.0 | +20.0 |"
    )
    assert row in text
    csv = (tmp_path / "non_iid.csv").read_text().splitlines()
    assert csv[0].startswith("alpha,graph,mode,acc_mean") and len(csv) == 4


def test_each_target_is_judged_on_the_figure_that_decides_it() -> None:
    report = {
        **REPORT,
        "runs": [
            run(0.1, "exponential", "sync", 0.70, 1.0),
            run(0.1, "exponential", "qgm", 0.78, 1.0),  # 2 points below pooled: met
            run(0.1, "regular", "sync", 0.70, 1.0),
            run(0.1, "regular", "tracking", 0.74, 1.0),  # 6 points below: not met
            run(0.5, "ring", "sync", 0.60, 1.0),
            run(0.5, "ring", "qgm", 0.585, 1.0),  # 1.5 points below D-PSGD: not met
        ],
    }
    lines = targets(rows(report, 0.1))
    assert lines[0].startswith("- exponential") and ": met (QG-DSGDm, -2.0)" in lines[0]
    assert lines[1].startswith("- regular") and ": NOT met (gradient tracking, -6.0)" in lines[1]
    assert ": NOT met (worst QG-DSGDm on ring at 0.5, -1.5)" in lines[2]
    assert "exponential, Dirichlet 0.1: not in this run" in targets(rows(REPORT, 0.1))[0]


def test_the_best_modes_are_also_set_against_minibatch_sgd_but_not_judged_on_it() -> None:
    report = {
        **REPORT,
        "runs": [
            run(0.1, "exponential", "sync", 0.70, 1.0),
            run(0.1, "exponential", "qgm", 0.74, 1.0, pooled=0.85, minibatch=0.76),
        ],
    }
    table = rows(report, 0.1)
    assert against_minibatch(table) == [
        "- exponential, Dirichlet 0.1, best mode against mini-batch SGD: QG-DSGDm, -2.0 "
        "(mini-batch SGD 76.0, pooled 85.0)"
    ]
    text = markdown(report, table)
    assert "NOT met (QG-DSGDm, -11.0)" in text  # the target stays against pooled
    assert "For reference, not a target:" in text
    older = {**report, "runs": [run(0.1, "exponential", "qgm", 0.74, 1.0, minibatch=None)]}
    assert "For reference" not in markdown(older, rows(older, 0.1))


def test_the_readme_table_is_the_scripts_output() -> None:
    text = (ROOT / "README.md").read_text()
    start, end = text.index(BEGIN), text.index(END)
    table = text[start + len(BEGIN) : end]
    assert table.lstrip().startswith("Scenario `non_iid`")  # what ``markdown`` writes first
    assert "| Dirichlet alpha | graph | mode |" in table


def test_the_sweep_runs_every_mode_on_every_graph_at_both_alphas_with_pooled() -> None:
    scenario = load_scenario(ROOT / "simulations" / "non_iid.toml")
    runs = expand_sweep(scenario)
    cells = {(sc.data.alpha, sc.topology.kind, sc.gossip.mode) for _, sc in runs}
    assert len(runs) == len(cells) == 2 * 4 * 3
    assert {m for _, _, m in cells} == {"sync", "tracking", "qgm"}
    assert all(sc.baselines.pooled and sc.baselines.minibatch for _, sc in runs)
    assert all(sc.data.nodes == 64 for _, sc in runs)

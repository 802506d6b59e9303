"""A scenario on the user's own data and model: docs/your-data.md's example run as a user runs
it, and one test per error a loader or a factory of theirs can meet."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfl.errors import ConfigError
from p2pfl.scenario import load_data, load_scenario, scenario_from_table, user_code
from p2pfl.spec import plan_from_table

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "your-data.md"
_BLOCK = re.compile(r"^```\w*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_NAMED = re.compile(r"# (\S+\.(?:py|toml))\n")


def doc_files() -> dict[str, str]:
    """The files of the docs' example: each fenced block that starts with ``# NAME``."""
    files = {}
    for block in _BLOCK.findall(DOC.read_text()):
        named = _NAMED.match(block)
        if named:
            files[named.group(1)] = block
    return files


def copy_example(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in doc_files().items():
        (folder / name).write_text(text)
    return folder


def p2pfl_command() -> list[str]:
    """``p2pfl`` as installed; else the module with ``-P``, which (like the installed
    command) does not put the current directory on ``sys.path``."""
    script = Path(sys.executable).with_name("p2pfl")
    return [str(script)] if script.is_file() else [sys.executable, "-P", "-m", "p2pfl"]


def simulate(cwd: Path, scenario: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``p2pfl simulate`` as a user runs it: PYTHONPATH holds p2pfl's sources only."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [*p2pfl_command(), "simulate", scenario, "--threads", "1", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


PER_SITE = ("--set", "data.dataset=mydata:load_sites", "--set", "data.partition=natural")


def test_the_docs_example_is_complete() -> None:
    files = doc_files()
    assert set(files) == {"mydata.py", "scenario.toml"}
    assert 'dataset = "mydata:load"' in files["scenario.toml"]
    assert 'name = "mydata:factory"' in files["scenario.toml"]
    assert "def load_sites(" in files["mydata.py"]


@pytest.mark.parametrize("engine", ["vectorized", "protocol"])
@pytest.mark.parametrize("shape", ["pooled", "per-site"])
def test_the_docs_example_runs_as_a_user_would(tmp_path: Path, engine: str, shape: str) -> None:
    folder = copy_example(tmp_path / "mine")
    extra = PER_SITE if shape == "per-site" else ()
    done = simulate(
        folder, "scenario.toml", "--engine", engine, "--set", "training.rounds=2", "--out", "out",
        *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((folder / "out" / "metrics.json").read_text())
    (run,) = report["runs"]
    assert run["engine"] == engine and run["nodes"] == 4 and len(run["rounds"]) == 2
    digest = hashlib.sha256((folder / "mydata.py").read_bytes()).hexdigest()
    reference = "mydata:load_sites" if shape == "per-site" else "mydata:load"
    assert run["user_code"] == {
        "dataset": {"reference": reference, "file": str(folder / "mydata.py"), "sha256": digest},
        "model": {
            "reference": "mydata:factory",
            "file": str(folder / "mydata.py"),
            "sha256": digest,
        },
    }
    assert run["parameters"] == (30 * 16 + 16) + (16 * 2 + 2)  # the factory's MLP, width 16
    assert run["final"]["acc_mean"] > 0.6  # breast cancer: far above the 63% majority share
    sites = run["sites"]
    assert [s["site"] for s in sites] == [f"node-{i}" for i in range(4)]
    held = sum(s["train_samples"] + s["test_samples"] for s in sites)
    # One dataset: the nodes share its 455 training rows (its 114 test rows are the global
    # test set). Per site: each keeps its own train and test rows, all 569 of them.
    assert held == (569 if shape == "per-site" else 455)
    crate = (folder / "out" / "ro-crate-metadata.json").read_text()
    assert (folder / "out" / "inputs" / "mydata.py").read_bytes() == (
        folder / "mydata.py"
    ).read_bytes()
    assert digest in crate


def test_the_module_is_found_in_the_scenario_folder_from_elsewhere(tmp_path: Path) -> None:
    folder = copy_example(tmp_path / "mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    scenario = str(folder / "scenario.toml")
    done = simulate(elsewhere, scenario, "--set", "training.rounds=1", "--out", "out")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((elsewhere / "out" / "metrics.json").read_text())
    assert report["runs"][0]["user_code"]["model"]["file"] == str(folder / "mydata.py")


def test_a_missing_module_names_where_it_was_looked_for(tmp_path: Path) -> None:
    folder = copy_example(tmp_path / "mine")
    (folder / "mydata.py").unlink()
    done = simulate(folder, "scenario.toml", "--set", "training.rounds=1")
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert "scenario.toml [data] dataset 'mydata:load': no module 'mydata'" in message
    assert "PYTHONPATH" in message and str(folder.resolve()) in message


# -- in-process: the loader's contract and its errors ------------------------------------


@pytest.fixture
def own(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A folder for modules of the test's own; the modules it imported are forgotten after."""
    names: list[str] = []
    yield tmp_path, names
    for name in names:
        sys.modules.pop(name, None)


def write_module(own: tuple[Path, list[str]], name: str, source: str) -> None:
    folder, names = own
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    names.append(name)


def scenario_in(folder: Path, data: dict[str, object], **tables: object) -> object:
    table = {"data": {"nodes": 4, **data}, "training": {"rounds": 1}, **tables}
    return scenario_from_table(table, "sc.toml", source_file=folder / "sc.toml")


TABULAR = """
    import numpy as np

    def arrays(n, d=3, seed=0, classes=2):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, d)).astype(np.float32)
        return x, np.arange(n) % classes

    def load(n=80, seed=0):
        x, y = arrays(n, seed=seed)
        xt, yt = arrays(20, seed=seed + 1)
        return x, y, xt, yt

    def sites(count=4):
        return [load(20 + 5 * i, seed=i) for i in range(count)]

    def named(count=4):
        return {f"site-{chr(97 + i)}": load(20, seed=i) for i in range(count)}
"""


def test_one_dataset_is_partitioned_and_its_test_set_is_the_global_one(own) -> None:
    write_module(own, "own_pooled", TABULAR)
    sc = scenario_in(
        own[0], {"dataset": "own_pooled:load", "partition": "iid", "kwargs": {"n": 80}}
    )
    before = list(sys.path)
    data = load_data(sc)
    assert sys.path == before  # the folders searched are taken off again
    assert sum(nd.x_train.shape[0] + nd.x_test.shape[0] for nd in data.nodes) == 80
    assert data.x_global_test.shape == (20, 3) and data.num_classes == 2
    assert (
        data.nodes[0].x_train.dtype == torch.float32 and data.nodes[0].y_train.dtype == torch.int64
    )
    _, _, xt, yt = sys.modules["own_pooled"].load(80)
    assert torch.equal(data.x_global_test, torch.from_numpy(xt))  # used as given
    assert torch.equal(data.y_global_test, torch.from_numpy(yt))


def test_per_site_data_keep_their_split_and_names(own) -> None:
    write_module(own, "own_sites", TABULAR)
    data = load_data(scenario_in(own[0], {"dataset": "own_sites:sites"}))
    assert [nd.x_train.shape[0] for nd in data.nodes] == [20, 25, 30, 35]
    assert data.x_global_test.shape[0] == 4 * 20
    named = load_data(scenario_in(own[0], {"dataset": "own_sites:named", "num_classes": 3}))
    assert [nd.name for nd in named.nodes] == ["site-a", "site-b", "site-c", "site-d"]
    assert named.num_classes == 3


def test_user_code_names_the_file_and_its_hash(own) -> None:
    write_module(own, "own_code", TABULAR)
    sc = scenario_in(own[0], {"dataset": "own_code:load", "partition": "iid"})
    file = own[0] / "own_code.py"
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert user_code(sc) == {
        "dataset": {"reference": "own_code:load", "file": str(file), "sha256": digest}
    }


ERRORS = {
    "not importable": (
        "nowhere_xyz:load",
        {},
        r"no module 'nowhere_xyz'; it must be on PYTHONPATH",
    ),
    "import fails": ("own_err:load", {}, r"importing 'own_err' failed: .*no_such_dependency_xyz"),
    "no attribute": (
        "own_err:lode",
        {},
        r"'lode' is not callable: module 'own_err' .* no attribute",
    ),
    "not callable": ("own_err:CONSTANT", {}, r"'CONSTANT' is not callable \(it is a int\)"),
    "not a form": ("own_err:", {}, "is not of the form module:function"),
    "raises": ("own_err:raises", {}, r"raised ValueError\('no data today'\)"),
    "wrong shape": (
        "own_err:three",
        {},
        r"must return \(x_train, y_train, x_test, y_test\) or a list",
    ),
    "not arrays": ("own_err:strings", {}, "x_train holds|x_train is not an array"),
    "nan": ("own_err:nan", {}, r"x_train holds 2 NaN or infinite value\(s\)"),
    "lengths": (
        "own_err:lengths",
        {},
        r"y_train has shape \(9,\); it needs one label per sample of x_train \(10,\)",
    ),
    "flat x": (
        "own_err:flat",
        {},
        r"x_train has shape \(10,\); it needs \(samples, \*input_shape\)",
    ),
    "float labels": ("own_err:halves", {}, "y_train holds non-integer labels"),
    "labels too big": (
        "own_err:load",
        {"num_classes": 2},
        r"labels go up to 4, but \[data\] num_classes = 2",
    ),
    "one class": ("own_err:zeros", {}, "every label is 0"),
    "sites count": ("own_err:three_sites", {}, r"returned 3 sites, but \[data\] nodes = 4"),
    "sites shapes": ("own_err:mixed_sites", {}, "the sites' samples differ in shape"),
    "bad site": ("own_err:bad_site", {}, "site node-1 is a str, not"),
    "empty test": ("own_err:no_test", {}, "no test samples"),
}

ERROR_MODULE = """
    import numpy as np
    import no_such_dependency_xyz
"""

ERR_SOURCE = """
    import numpy as np

    CONSTANT = 3

    def _xy(n=10, d=2):
        return np.ones((n, d), dtype=np.float32), np.arange(n) % 5

    def load():
        x, y = _xy()
        return x, y, x, y

    def raises():
        raise ValueError("no data today")

    def three():
        x, y = _xy()
        return x, y, x

    def strings():
        return np.array([["a", "b"]] * 4), np.zeros(4), np.array([["a", "b"]]), np.zeros(1)

    def nan():
        x, y = _xy()
        x = x.copy()
        x[0, 0] = np.nan
        x[3, 1] = np.inf
        return x, y, x[:2] * 0, y[:2]

    def lengths():
        x, y = _xy()
        return x, y[:9], x, y

    def flat():
        x, y = _xy()
        return x[:, 0], y, x, y

    def halves():
        x, y = _xy()
        return x, y / 2, x, y

    def zeros():
        x, y = _xy()
        return x, y * 0, x, y * 0

    def three_sites():
        return [load() for _ in range(3)]

    def mixed_sites():
        x, y = _xy()
        return [load(), load(), load(), (x[:, :1], y, x[:, :1], y)]

    def bad_site():
        return [load(), "nope", load(), load()]

    def no_test():
        x, y = _xy()
        return x, y, x[:0], y[:0]
"""


@pytest.mark.parametrize("case", list(ERRORS))
def test_a_bad_loader_is_one_line_naming_the_scenario_key(own, case: str) -> None:
    folder, _ = own
    if case == "import fails":
        write_module(own, "own_err", ERROR_MODULE)
    else:
        write_module(own, "own_err", ERR_SOURCE)
    reference, extra, pattern = ERRORS[case]
    sc = scenario_in(folder, {"dataset": reference, "partition": "iid", **extra})
    with pytest.raises(ConfigError, match=pattern) as caught:
        load_data(sc)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'sc.toml'} [data] dataset {reference!r}")
    assert "\n" not in message


def test_a_missing_module_names_both_folders_searched(own, monkeypatch) -> None:
    folder, _ = own
    scenario_dir = folder / "scenarios"
    scenario_dir.mkdir()
    monkeypatch.chdir(folder)
    sc = scenario_from_table(
        {"data": {"dataset": "nowhere_xyz:load", "partition": "iid"}},
        "sc.toml",
        source_file=scenario_dir / "sc.toml",
    )
    with pytest.raises(ConfigError) as caught:
        load_data(sc)
    assert f"{scenario_dir.resolve()}, {folder.resolve()}" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (
            {"dataset": "own_mix:sites", "partition": "iid"},
            "partition must be 'natural', not 'iid'",
        ),
        (
            {"dataset": "own_mix:load"},
            "returned one dataset to partition: set \\[data\\] partition",
        ),
        ({"dataset": "own_mix:sites", "max_train_samples": 10}, "max_train_samples only applies"),
        ({"dataset": "own_mix:load", "partition": "iid", "data_dir": "x"}, "data_dir applies"),
        ({"dataset": "heart", "kwargs": {"n": 3}}, "kwargs applies to a dataset of your own"),
    ],
)
def test_settings_that_do_not_fit_the_data_shape_are_refused(own, data, pattern) -> None:
    write_module(own, "own_mix", TABULAR)
    with pytest.raises(ConfigError, match=pattern):
        load_data(scenario_in(own[0], data))


def test_a_loader_that_imports_a_sibling_when_called_finds_it(own) -> None:
    write_module(own, "own_sibling_helper", TABULAR)
    write_module(
        own,
        "own_lazy",
        """
        def load():
            import own_sibling_helper  # imported only when the loader runs

            return own_sibling_helper.load(40)
        """,
    )
    data = load_data(scenario_in(own[0], {"dataset": "own_lazy:load", "partition": "iid"}))
    assert data.x_global_test.shape == (20, 3)


# -- the model ---------------------------------------------------------------------------

MODELS_SOURCE = """
    import torch
    from torch import nn

    def small(input_shape, num_classes, width=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.ReLU(),
                             nn.Linear(width, num_classes))

    class Branchy(nn.Module):
        def __init__(self, d, k):
            super().__init__()
            self.linear = nn.Linear(d, k)

        def forward(self, x):
            if x.sum() > 0:  # a Python decision on a tensor's value: vmap cannot batch it
                return self.linear(x)
            return -self.linear(x)

    def branchy(input_shape, num_classes):
        return Branchy(input_shape[0], num_classes)

    def one_logit(input_shape, num_classes):
        return nn.Linear(input_shape[0], 1)

    def no_parameters(input_shape, num_classes):
        return nn.Flatten()

    def fails(input_shape, num_classes):
        raise RuntimeError("out of ideas")
"""


def test_the_model_factory_gets_its_kwargs_and_lands_in_the_plan(own, tmp_path) -> None:
    from p2pfl.engines import prepare
    from p2pfl.simulate import write_plan_file

    write_module(own, "own_models", MODELS_SOURCE + TABULAR)
    sc = scenario_in(
        own[0],
        {"dataset": "own_models:load", "partition": "iid"},
        model={"name": "own_models:small", "kwargs": {"width": 7}},
    )
    setup = prepare(sc)
    assert setup.dim == (3 * 7 + 7) + (7 * 2 + 2)
    path = tmp_path / "plan.toml"
    write_plan_file(setup, path)
    import tomllib

    table = tomllib.loads(path.read_text())
    assert table["model"] == {"name": "own_models:small", "kwargs": {"width": 7}}
    assert plan_from_table(table).model.kwargs == {"width": 7}
    assert "every site must be able" in path.read_text()


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("own_models:branchy", None, "does not run under torch.func.vmap of functional_call"),
        (
            "own_models:one_logit",
            None,
            r"returns shape \(2, 1\); it must return logits of shape \(2, 2\)",
        ),
        ("own_models:no_parameters", None, "no parameters to train"),
        ("own_models:fails", None, r"raised RuntimeError\('out of ideas'\)"),
        ("own_models:small", {"depth": 2}, "raised TypeError"),
        ("own_models:nothing", None, "'nothing' is not callable"),
        ("logreg", {"width": 2}, "kwargs apply to a model of your own"),
    ],
)
def test_a_bad_model_factory_is_refused_before_training(own, name, kwargs, pattern) -> None:
    from p2pfl.engines import prepare

    write_module(own, "own_models", MODELS_SOURCE + TABULAR)
    model: dict[str, object] = {"name": name}
    if kwargs is not None:
        model["kwargs"] = kwargs
    sc = scenario_in(own[0], {"dataset": "own_models:load", "partition": "iid"}, model=model)
    with pytest.raises(ConfigError, match=pattern) as caught:
        prepare(sc)
    assert "\n" not in str(caught.value)


def test_load_scenario_keeps_the_file_out_of_the_table(tmp_path) -> None:
    from p2pfl.scenario import to_table

    path = tmp_path / "s.toml"
    path.write_text('[data]\ndataset = "breast-cancer"\npartition = "iid"\n')
    sc = load_scenario(path)
    assert sc.source_file == str(path) and "source_file" not in to_table(sc)
    with pytest.raises(ConfigError, match="unknown key 'source_file'"):
        scenario_from_table({"source_file": "elsewhere.toml"})


def test_arrays_may_be_numpy_or_torch(own) -> None:
    write_module(
        own,
        "own_torch",
        """
        import torch

        def load():
            x = torch.arange(24, dtype=torch.float64).reshape(12, 2)
            y = torch.arange(12) % 2
            return x, y, x[:4], y[:4]
        """,
    )
    data = load_data(scenario_in(own[0], {"dataset": "own_torch:load", "partition": "iid"}))
    assert data.x_global_test.dtype == torch.float32
    np.testing.assert_array_equal(data.x_global_test.numpy(), np.arange(8).reshape(4, 2))


def test_the_processes_engine_gives_its_daemons_the_folders_searched(own, monkeypatch) -> None:
    """Daemons import the scenario's own modules as the simulator did: those folders lead
    their PYTHONPATH (the daemon itself is not started here)."""
    from p2pfl.engines import prepare, processes

    write_module(own, "own_procs", TABULAR)
    folder = own[0]
    sc = scenario_in(folder, {"dataset": "own_procs:load", "partition": "iid"})
    federation = processes.prepare_federation(prepare(sc), folder / "fed")
    started: list[dict[str, str]] = []

    class Started:
        def __init__(self, *args: object, env: dict[str, str], **kwargs: object) -> None:
            started.append(env)

    monkeypatch.setattr(processes.subprocess, "Popen", Started)
    federation.start(0)
    path = started[0]["PYTHONPATH"].split(os.pathsep)
    assert path[:2] == [str(folder.resolve()), str(Path.cwd().resolve())]


def test_every_run_of_a_sweep_looks_in_the_scenario_folder(own) -> None:
    from p2pfl.scenario import expand_sweep

    write_module(own, "own_sweep", TABULAR)
    path = own[0] / "sweep.toml"
    path.write_text(
        '[data]\ndataset = "own_sweep:load"\npartition = "iid"\n'
        '[sweep]\n"data.kwargs" = [{ n = 40 }, { n = 60 }]\n'
    )
    runs = expand_sweep(load_scenario(path))
    sizes = [
        sum(nd.x_train.shape[0] + nd.x_test.shape[0] for nd in load_data(sc).nodes)
        for _, sc in runs
    ]
    assert sizes == [40, 60]
    assert {sc.source_file for _, sc in runs} == {str(path)}

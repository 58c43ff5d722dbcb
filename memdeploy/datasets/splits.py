"""Train, validation and test splits, and the seeded stratified partition behind them.

Every loader returns its examples as numpy arrays in a :class:`RawDataset`;
:func:`build_splits` partitions them with a seed and converts each split to float32
tensors in [0, 1]. The partition depends only on the labels, the seed and the
fractions, so a run manifest that records those three reproduces the same splits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from memdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

# Stream ids mixed into the seed, so each stage draws from its own generator and the
# test split does not change when the validation fraction or the limit changes.
_TEST_STREAM = 0
_VALIDATION_STREAM = 1
_ORDER_STREAM = 2


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset.

    ``eq=False`` keeps identity comparison, because ``==`` on tensors is elementwise.
    """

    images: torch.Tensor
    """Float32 images of shape (N, C, H, W) with values in [0, 1]."""
    labels: torch.Tensor
    """Int64 class indices of shape (N,)."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset partitioned into disjoint train, validation and test splits."""

    name: str
    """Dataset name, one of ``DATASET_NAMES``."""
    train: Split
    validation: Split
    test: Split
    num_classes: int
    image_shape: tuple[int, int, int]
    """Shape of one image as (C, H, W)."""
    source: str
    """Folder the files were read from, or ``"scikit-learn"``."""
    seed: int = 0
    """Seed of the partition."""
    validation_fraction: float = 0.15
    """Share of the non-test examples held out for validation."""
    limit: int | None = None
    """Maximum number of examples per split, or None for all of them."""

    def describe(self) -> dict:
        """Return sizes, source and split settings as plain values for a manifest."""
        return {
            "name": self.name,
            "source": self.source,
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "limit": self.limit,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "sizes": {
                "train": len(self.train),
                "validation": len(self.validation),
                "test": len(self.test),
            },
        }


class LabelledArrays(NamedTuple):
    """Images of shape (N, C, H, W) in any numeric dtype with int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class RawDataset:
    """Examples as read from disk, before the partition into splits."""

    train: LabelledArrays
    test: LabelledArrays | None
    """The official test set, or None when the source has none."""
    num_classes: int
    pixel_max: float
    """Pixel value that maps to 1.0: 255 for uint8 files, 16 for scikit-learn digits."""
    source: str
    test_fraction: float = 0.0
    """Share of all examples held out for test when ``test`` is None."""


def stratified_holdout(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out), holding out ``fraction`` of every class.

    Each class contributes ``round(fraction * class_size)`` examples, with halves
    rounded up, chosen at random with ``rng``. Both index arrays are sorted.

    >>> kept, held = stratified_holdout(np.array([0, 0, 0, 0, 1, 1]), 0.5,
    ...                                 np.random.default_rng(0))
    >>> len(kept), len(held), sorted(set(kept) | set(held)) == list(range(6))
    (3, 3, True)
    """
    kept, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_count = int(np.floor(fraction * members.size + 0.5))
        held.append(members[:held_count])
        kept.append(members[held_count:])

    empty = np.empty(0, dtype=np.int64)
    kept_indices = np.sort(np.concatenate(kept or [empty]))
    held_indices = np.sort(np.concatenate(held or [empty]))
    return kept_indices, held_indices


def stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return a shuffled order of ``labels`` in which every prefix keeps class shares.

    Each example gets the key ``(rank within its class + 0.5) / class size`` after a
    random permutation, and sorting by that key interleaves the classes in
    proportion. Taking the first ``limit`` entries then yields a stratified subset.

    >>> order = stratified_order(np.array([0, 0, 1, 1]), np.random.default_rng(0))
    >>> sorted(np.array([0, 0, 1, 1])[order[:2]].tolist())
    [0, 1]
    """
    permutation = rng.permutation(labels.size)
    shuffled = labels[permutation]
    keys = np.empty(labels.size, dtype=np.float64)
    for label in np.unique(shuffled):
        members = np.flatnonzero(shuffled == label)
        keys[members] = (np.arange(members.size) + 0.5) / members.size
    return permutation[np.argsort(keys, kind="stable")]


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _to_split(
    arrays: LabelledArrays,
    indices: np.ndarray,
    pixel_max: float,
    seed: int,
    limit: int | None,
) -> Split:
    rng = _stream(seed, _ORDER_STREAM)
    order = indices[stratified_order(arrays.labels[indices], rng)]
    if limit is not None:
        order = order[:limit]

    images = np.ascontiguousarray(arrays.images[order], dtype=np.float32)
    images /= np.float32(pixel_max)
    labels = arrays.labels[order].astype(np.int64)
    return Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels))


def build_splits(
    name: str,
    raw: RawDataset,
    *,
    seed: int,
    validation_fraction: float,
    limit: int | None,
) -> DatasetSplits:
    """Partition ``raw`` into stratified train, validation and test splits.

    Without an official test set, ``raw.test_fraction`` of every class goes to test
    first, and ``validation_fraction`` of the rest goes to validation. With one, only
    the training file is partitioned. Each split is then shuffled with a
    stratified order and cut to ``limit`` examples.
    """
    train_arrays, test_arrays = raw.train, raw.test
    pool = np.arange(train_arrays.labels.size)
    if test_arrays is None:
        pool, test_indices = stratified_holdout(
            train_arrays.labels, raw.test_fraction, _stream(seed, _TEST_STREAM)
        )
        test_arrays = train_arrays
    else:
        test_indices = np.arange(test_arrays.labels.size)

    kept, held = stratified_holdout(
        train_arrays.labels[pool],
        validation_fraction,
        _stream(seed, _VALIDATION_STREAM),
    )
    train_indices, validation_indices = pool[kept], pool[held]
    if train_indices.size == 0 or test_indices.size == 0:
        raise DatasetError(
            f"{name} in {raw.source} has {train_arrays.labels.size} training examples, "
            "too few for non-empty train and test splits: add examples or lower the "
            "fractions"
        )

    image_shape = tuple(int(size) for size in train_arrays.images.shape[1:])
    return DatasetSplits(
        name=name,
        train=_to_split(train_arrays, train_indices, raw.pixel_max, seed, limit),
        validation=_to_split(
            train_arrays, validation_indices, raw.pixel_max, seed, limit
        ),
        test=_to_split(test_arrays, test_indices, raw.pixel_max, seed, limit),
        num_classes=raw.num_classes,
        image_shape=image_shape,
        source=raw.source,
        seed=seed,
        validation_fraction=validation_fraction,
        limit=limit,
    )

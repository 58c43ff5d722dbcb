import numpy as np
import pytest
import torch

from memdeploy.datasets.splits import (
    LabelledArrays,
    RawDataset,
    build_splits,
    stratified_holdout,
    stratified_order,
)
from memdeploy.errors import DatasetError

COUNT = 400


def indexed_dataset(with_test: bool) -> RawDataset:
    """Return a dataset whose single pixel stores each example's index."""
    labels = np.repeat(np.arange(4), [40, 80, 120, 160])
    images = np.arange(COUNT, dtype=np.float64).reshape(COUNT, 1, 1, 1)
    test = LabelledArrays(images[:100] + COUNT, labels[:100]) if with_test else None
    return RawDataset(
        train=LabelledArrays(images, labels),
        test=test,
        num_classes=4,
        pixel_max=2 * COUNT,
        source="memory",
        test_fraction=0.2,
    )


def example_ids(split) -> set[int]:
    return set(torch.round(split.images.flatten() * 2 * COUNT).long().tolist())


def split_all(seed=0, validation_fraction=0.25, limit=None, with_test=False):
    return build_splits(
        "indexed",
        indexed_dataset(with_test),
        seed=seed,
        validation_fraction=validation_fraction,
        limit=limit,
    )


def test_holdout_partitions_every_index_once():
    labels = np.repeat(np.arange(3), [10, 20, 30])

    kept, held = stratified_holdout(labels, 0.3, np.random.default_rng(1))

    assert np.intersect1d(kept, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(60))


def test_holdout_keeps_class_shares():
    labels = np.repeat(np.arange(3), [10, 20, 30])

    _, held = stratified_holdout(labels, 0.3, np.random.default_rng(1))

    assert np.bincount(labels[held]).tolist() == [3, 6, 9]


def test_order_prefix_keeps_class_shares():
    labels = np.repeat(np.arange(2), [100, 300])

    order = stratified_order(labels, np.random.default_rng(2))

    assert np.bincount(labels[order[:40]]).tolist() == [10, 30]
    assert np.array_equal(np.sort(order), np.arange(400))


def test_splits_are_disjoint_without_test_file():
    splits = split_all()
    train, validation, test = (
        example_ids(s) for s in (splits.train, splits.validation, splits.test)
    )

    assert train.isdisjoint(validation)
    assert train.isdisjoint(test)
    assert validation.isdisjoint(test)
    assert len(train | validation | test) == COUNT


def test_splits_hold_out_stated_fractions():
    splits = split_all()

    assert len(splits.test) == 80
    assert len(splits.validation) == 80
    assert len(splits.train) == 240
    assert torch.bincount(splits.test.labels).tolist() == [8, 16, 24, 32]


def test_splits_with_test_file_keep_it_whole():
    splits = split_all(with_test=True)

    assert example_ids(splits.test) == set(range(COUNT, COUNT + 100))
    assert len(splits.train) + len(splits.validation) == COUNT


def test_splits_repeat_for_same_seed():
    first, second = split_all(seed=7), split_all(seed=7)

    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.validation.labels, second.validation.labels)
    assert torch.equal(first.test.images, second.test.images)


def test_splits_differ_for_other_seed():
    assert example_ids(split_all(seed=1).test) != example_ids(split_all(seed=2).test)


def test_test_split_ignores_validation_fraction():
    assert example_ids(split_all(validation_fraction=0.1).test) == example_ids(
        split_all(validation_fraction=0.4).test
    )


def test_limit_caps_each_split_with_class_shares():
    splits = split_all(limit=20)

    assert (len(splits.train), len(splits.validation), len(splits.test)) == (20, 20, 20)
    assert torch.bincount(splits.train.labels).tolist() == [2, 4, 6, 8]


def test_split_tensor_dtypes_and_range():
    splits = split_all()

    assert splits.train.images.dtype == torch.float32
    assert float(splits.train.images.min()) >= 0.0
    assert float(splits.train.images.max()) <= 1.0
    assert splits.train.labels.dtype == torch.int64
    assert splits.image_shape == (1, 1, 1)


def test_describe_reports_sizes_and_settings():
    description = split_all(seed=3, limit=50).describe()

    assert description["sizes"] == {"train": 50, "validation": 50, "test": 50}
    assert description["seed"] == 3
    assert description["limit"] == 50
    assert description["source"] == "memory"
    assert description["image_shape"] == [1, 1, 1]


def test_tiny_dataset_is_rejected():
    raw = RawDataset(
        train=LabelledArrays(np.zeros((1, 1, 1, 1)), np.zeros(1, dtype=np.int64)),
        test=None,
        num_classes=1,
        pixel_max=1.0,
        source="tiny",
        test_fraction=0.5,
    )

    with pytest.raises(DatasetError, match="tiny has 1 training examples, too few"):
        build_splits("tiny", raw, seed=0, validation_fraction=0.0, limit=None)

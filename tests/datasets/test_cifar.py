import numpy as np
import pytest

from memdeploy.datasets import load_dataset
from memdeploy.datasets.cifar import (
    CIFAR_LAYOUTS,
    load_cifar,
    read_binary_batch,
    read_python_batch,
)
from memdeploy.errors import DatasetError

CIFAR10 = CIFAR_LAYOUTS["cifar10"]
CIFAR100 = CIFAR_LAYOUTS["cifar100"]


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
def test_cifar10_folder_loads_train_and_test(tmp_path, dataset_files, binary):
    dataset_files.write_cifar_folder(tmp_path, "cifar10", binary, per_file=20)

    raw = load_cifar("cifar10", tmp_path)

    assert raw.train.images.shape == (100, 3, 32, 32)
    assert raw.test.images.shape == (20, 3, 32, 32)
    assert raw.num_classes == 10
    assert np.array_equal(
        raw.test.images, dataset_files.make_images(20, (3, 32, 32), 5)
    )


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
def test_cifar100_folder_uses_fine_labels(tmp_path, dataset_files, binary):
    dataset_files.write_cifar_folder(tmp_path, "cifar100", binary, per_file=150)

    raw = load_cifar("cifar100", tmp_path)

    assert raw.num_classes == 100
    assert raw.train.labels.max() == 99
    assert raw.train.labels[:3].tolist() == [0, 1, 2]


def test_cifar_pixel_layout_is_channel_first(tmp_path, dataset_files):
    image = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    image[0, 1, 2, 3] = 200
    path = dataset_files.write_binary_batch(tmp_path / "test_batch.bin", image, [4], 1)

    batch = read_binary_batch(path, CIFAR10)

    assert batch.images[0, 1, 2, 3] == 200
    assert batch.images.sum() == 200
    assert batch.labels.tolist() == [4]


def test_cifar_binary_preferred_over_python(tmp_path, dataset_files):
    dataset_files.write_cifar_folder(tmp_path, "cifar10", binary=False, per_file=10)
    dataset_files.write_cifar_folder(tmp_path, "cifar10", binary=True, per_file=12)

    raw = load_cifar("cifar10", tmp_path)

    assert raw.test.images.shape[0] == 12


def test_cifar_subfolder_of_data_dir_found(tmp_path, dataset_files):
    folder = tmp_path / "cifar-10-batches-py"
    dataset_files.write_cifar_folder(folder, "cifar10", binary=False, per_file=10)

    raw = load_cifar("cifar10", tmp_path)

    assert raw.source == str(folder)


def test_cifar_env_folder_is_searched(
    monkeypatch, no_data_env, tmp_path, dataset_files
):
    folder = tmp_path / "store" / "cifar-100-binary"
    dataset_files.write_cifar_folder(folder, "cifar100", binary=True, per_file=100)
    monkeypatch.setenv("MEMDEPLOY_DATA", str(tmp_path / "store"))

    raw = load_cifar("cifar100", None)

    assert raw.source == str(folder)


def test_cifar_missing_folder_names_both_versions(no_data_env):
    with pytest.raises(
        DatasetError,
        match="CIFAR-10 not found in .*: download .* or cifar-10-batches-bin/",
    ):
        load_cifar("cifar10", None)


def test_cifar_incomplete_folder_is_not_found(tmp_path, dataset_files):
    dataset_files.write_cifar_folder(tmp_path, "cifar10", binary=False, per_file=10)
    (tmp_path / "data_batch_3").unlink()

    with pytest.raises(DatasetError, match="CIFAR-10 not found"):
        load_cifar("cifar10", tmp_path)


def test_cifar_truncated_binary_file_is_rejected(tmp_path, dataset_files):
    images = dataset_files.make_images(2, (3, 32, 32))
    path = dataset_files.write_binary_batch(tmp_path / "train.bin", images, [1, 2], 2)
    path.write_bytes(path.read_bytes()[:-1])

    with pytest.raises(
        DatasetError, match="has 6147 bytes, expected a non-zero multiple of 3074"
    ):
        read_binary_batch(path, CIFAR100)


def test_cifar_binary_bad_label_rejected(tmp_path, dataset_files):
    images = dataset_files.make_images(1, (3, 32, 32))
    path = dataset_files.write_binary_batch(
        tmp_path / "test_batch.bin", images, [10], 1
    )

    with pytest.raises(DatasetError, match=r"labels from 10 to 10, expected 0\.\.9"):
        read_binary_batch(path, CIFAR10)


def test_cifar_batch_without_labels_rejected(tmp_path, dataset_files):
    images = dataset_files.make_images(2, (3, 32, 32))
    path = dataset_files.write_python_batch(tmp_path / "test", images, [1, 2], "labels")

    with pytest.raises(DatasetError, match=r"lacks the keys \['fine_labels'\]"):
        read_python_batch(path, CIFAR100)


def test_cifar_batch_wrong_row_size_rejected(tmp_path, dataset_files):
    images = dataset_files.make_images(2, (3, 16, 16))
    path = dataset_files.write_python_batch(tmp_path / "test", images, [1, 2], "labels")

    with pytest.raises(
        DatasetError, match=r"'data' of shape \(2, 768\), expected \(N, 3072\)"
    ):
        read_python_batch(path, CIFAR10)


def test_cifar_batch_short_labels_rejected(tmp_path, dataset_files):
    images = dataset_files.make_images(3, (3, 32, 32))
    path = dataset_files.write_python_batch(tmp_path / "test", images, [1, 2], "labels")

    with pytest.raises(
        DatasetError, match=r"'labels' of shape \(2,\) .*expected 3 integers"
    ):
        read_python_batch(path, CIFAR10)


def test_cifar_batch_bad_label_rejected(tmp_path, dataset_files):
    images = dataset_files.make_images(1, (3, 32, 32))
    path = dataset_files.write_python_batch(
        tmp_path / "test", images, [100], "fine_labels"
    )

    with pytest.raises(DatasetError, match=r"labels from 100 to 100, expected 0\.\.99"):
        read_python_batch(path, CIFAR100)


def test_cifar10_load_dataset_normalizes_images(tmp_path, dataset_files):
    dataset_files.write_cifar_folder(tmp_path, "cifar10", binary=True, per_file=40)

    splits = load_dataset("cifar10", tmp_path, validation_fraction=0.25)

    assert splits.image_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (
        150,
        50,
        40,
    )
    assert splits.train.images.dtype.is_floating_point
    assert float(splits.train.images.max()) <= 1.0
    assert float(splits.train.images.min()) >= 0.0

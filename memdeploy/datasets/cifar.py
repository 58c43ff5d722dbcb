"""Loaders for CIFAR-10 and CIFAR-100 in their python or binary versions.

The python version is a folder of pickled dicts (``cifar-10-batches-py/data_batch_1``
to ``data_batch_5`` and ``test_batch``, or ``cifar-100-python/train`` and ``test``),
each with ``b"data"``, a uint8 array (N, 3072), and ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` (CIFAR-100). The binary version stores fixed-size records: one
label byte (CIFAR-10) or a coarse and a fine label byte (CIFAR-100), then 3072 pixel
bytes. In both, the pixels are the 1024 red, then green, then blue values of a 32x32
image in row-major order, which is (3, 32, 32) in C order.

The binary version is preferred when both are present, because it needs no
unpickling. The pickles are read with :mod:`memdeploy.datasets.safe_pickle`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memdeploy.datasets.locations import candidate_folders, find_folder
from memdeploy.datasets.safe_pickle import load_array_pickle
from memdeploy.datasets.splits import LabelledArrays, RawDataset
from memdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (3, 32, 32)
PIXELS_PER_IMAGE = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """File names and label placement of one CIFAR variant."""

    title: str
    num_classes: int
    python_folder: str
    python_train: tuple[str, ...]
    python_test: str
    label_key: str
    binary_folder: str
    binary_train: tuple[str, ...]
    binary_test: str
    label_bytes: int
    """Label bytes before the pixels of each binary record."""


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        title="CIFAR-10",
        num_classes=10,
        python_folder="cifar-10-batches-py",
        python_train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        python_test="test_batch",
        label_key="labels",
        binary_folder="cifar-10-batches-bin",
        binary_train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        binary_test="test_batch.bin",
        label_bytes=1,
    ),
    "cifar100": CifarLayout(
        title="CIFAR-100",
        num_classes=100,
        python_folder="cifar-100-python",
        python_train=("train",),
        python_test="test",
        label_key="fine_labels",
        binary_folder="cifar-100-binary",
        binary_train=("train.bin",),
        binary_test="test.bin",
        label_bytes=2,
    ),
}


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path} contains labels from {labels.min()} to {labels.max()}, expected "
            f"0..{num_classes - 1}"
        )
    return labels.astype(np.int64)


def read_binary_batch(path: Path, layout: CifarLayout) -> LabelledArrays:
    """Read a binary-version file; the fine label is the last label byte of a record.

    Raises:
        DatasetError: The file cannot be read, its size is not a whole number of
            records or a label is out of range.
    """
    record_size = layout.label_bytes + PIXELS_PER_IMAGE
    try:
        content = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"cannot read CIFAR file {path}: {err}") from err
    if content.size == 0 or content.size % record_size:
        raise DatasetError(
            f"{path} has {content.size} bytes, expected a non-zero multiple of "
            f"{record_size} ({layout.title} binary records): the file is truncated"
        )

    records = content.reshape(-1, record_size)
    labels = _check_labels(records[:, layout.label_bytes - 1], layout.num_classes, path)
    images = records[:, layout.label_bytes :].reshape(-1, *IMAGE_SHAPE)
    return LabelledArrays(images, labels)


def _string_keys(batch: object, path: Path) -> dict:
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} contains a {type(batch).__name__}, expected a dict")
    return {
        key.decode("latin-1") if isinstance(key, bytes) else key: value
        for key, value in batch.items()
    }


def read_python_batch(path: Path, layout: CifarLayout) -> LabelledArrays:
    """Read a python-version batch with the restricted unpickler and validate it.

    Raises:
        DatasetError: The file is not a dict with a uint8 ``data`` array (N, 3072)
            and ``layout.label_key`` labels of length N in range.
    """
    batch = _string_keys(load_array_pickle(path), path)
    missing = {"data", layout.label_key} - batch.keys()
    if missing:
        raise DatasetError(
            f"{path} lacks the keys {sorted(missing)}, found {sorted(batch)}: expected "
            f"a {layout.title} python batch"
        )

    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        found = getattr(data, "dtype", type(data).__name__)
        raise DatasetError(
            f"{path} has 'data' of {found}, expected a uint8 (N, 3072) array"
        )
    if data.shape[1] != PIXELS_PER_IMAGE:
        raise DatasetError(
            f"{path} has 'data' of shape {data.shape}, expected (N, 3072)"
        )

    labels = np.asarray(batch[layout.label_key])
    if (
        labels.ndim != 1
        or labels.dtype.kind not in "iu"
        or labels.size != data.shape[0]
    ):
        raise DatasetError(
            f"{path} has '{layout.label_key}' of shape {labels.shape} and dtype "
            f"{labels.dtype}, expected {data.shape[0]} integers"
        )
    labels = _check_labels(labels, layout.num_classes, path)
    return LabelledArrays(data.reshape(-1, *IMAGE_SHAPE), labels)


def _concatenate(parts: list[LabelledArrays]) -> LabelledArrays:
    return LabelledArrays(
        np.concatenate([part.images for part in parts]),
        np.concatenate([part.labels for part in parts]),
    )


def _has_all(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in names)


def load_cifar(name: str, data_dir: str | Path | None) -> RawDataset:
    """Find and read CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``).

    Raises:
        DatasetError: Neither version is found, or a file is malformed.
    """
    layout = CIFAR_LAYOUTS[name]
    binary_files = (*layout.binary_train, layout.binary_test)
    python_files = (*layout.python_train, layout.python_test)
    folders = candidate_folders(data_dir, [layout.binary_folder, layout.python_folder])

    folder = find_folder(
        folders,
        lambda path: _has_all(path, binary_files) or _has_all(path, python_files),
        dataset=layout.title,
        advice=(
            f"download it yourself and pass --data-dir with {layout.python_folder}/ "
            f"({', '.join(python_files)}) or {layout.binary_folder}/ "
            f"({', '.join(binary_files)})"
        ),
    )

    binary = _has_all(folder, binary_files)
    read = read_binary_batch if binary else read_python_batch
    train_names = layout.binary_train if binary else layout.python_train
    test_name = layout.binary_test if binary else layout.python_test
    logger.info("reading %s with %s from %s", layout.title, read.__name__, folder)

    train = _concatenate(
        [read(folder / file_name, layout) for file_name in train_names]
    )
    test = read(folder / test_name, layout)
    return RawDataset(
        train=train,
        test=test,
        num_classes=layout.num_classes,
        pixel_max=255.0,
        source=str(folder),
    )

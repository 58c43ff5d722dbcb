"""Reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file starts with a 4-byte magic number: two zero bytes, a type code and the
number of dimensions. The size of each dimension follows as a big-endian uint32, then
the values in C order, big-endian. Files may be gzip-compressed, as in Debian's
dataset-fashion-mnist package.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from memdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code to numpy dtype (big-endian where the width is over one byte)."""


MAX_IDX_BYTES = 1 << 30
"""Largest uncompressed IDX file read, in bytes. MNIST's largest file has 47 MB, so
this only stops a damaged or hostile gzip stream from filling the memory."""


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC
            handle.seek(0)
            stream = gzip.GzipFile(fileobj=handle) if compressed else handle
            content = stream.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"cannot read IDX file {path}: {err}") from err
    if len(content) > MAX_IDX_BYTES:
        raise DatasetError(
            f"{path} contains more than {MAX_IDX_BYTES} bytes uncompressed, expected an "
            "IDX file of an MNIST-sized set: check that it is the right file"
        )
    return content


def parse_idx(content: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file into an array.

    Args:
        content: The whole file.
        path: Name used in error messages.

    Raises:
        DatasetError: The magic number, dimensions or data length is invalid.

    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
    [7, 8, 9]
    """
    if len(content) < 4 or content[:2] != b"\x00\x00":
        raise DatasetError(
            f"{path} is not an IDX file: expected the magic number to start with two "
            f"zero bytes, found {content[:4].hex() or 'an empty file'}"
        )

    type_code, ndim = content[2], content[3]
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{code:02x}" for code in IDX_TYPES)
        raise DatasetError(
            f"{path} has IDX type code 0x{type_code:02x}, expected one of {known}"
        )

    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DatasetError(
            f"{path} is truncated: {len(content)} bytes, expected a header of "
            f"{header_size} bytes for {ndim} dimensions"
        )
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", ndim, offset=4))

    dtype = IDX_TYPES[type_code]
    # Python integers, because a forged header can overflow int64.
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        shown = shape if ndim <= 4 else f"of {ndim} dimensions"
        size = expected if expected < 2**63 else "more than 2**63"
        raise DatasetError(
            f"{path} has {len(content)} bytes, expected {size} for shape {shown} "
            f"of {dtype.name}: the file is truncated or not the file its name says; "
            "download it again"
        )
    return np.frombuffer(content, dtype, offset=header_size).reshape(shape)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not, and check its number of dimensions.

    Raises:
        DatasetError: The file cannot be read, is malformed or has another rank.
    """
    array = parse_idx(_read_bytes(path), path)
    if array.ndim != ndim:
        raise DatasetError(
            f"{path} has {array.ndim} dimensions {array.shape}, expected {ndim}"
        )
    logger.debug("read IDX file %s with shape %s", path, array.shape)
    return array


def read_idx_pair(
    images_path: Path, labels_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image (N, H, W) and label (N,) IDX files as (N, 1, H, W) uint8.

    Raises:
        DatasetError: A file is malformed, the counts differ or a label is out of range.
    """
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DatasetError(
            f"{images_path} and {labels_path} hold {images.dtype.name} and "
            f"{labels.dtype.name} values, expected uint8 (IDX type code 0x08)"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels, expected the same count: the files come from "
            "different sets"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetError(
            f"{labels_path} contains label {int(labels.max())}, expected labels in "
            f"0..{num_classes - 1}"
        )
    return images[:, np.newaxis], labels.astype(np.int64)

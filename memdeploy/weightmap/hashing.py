"""Content hashes that tie a weight map to its model, its weights and its files.

Every hash is a SHA-256 hex digest. State dictionaries are hashed in a canonical
order (entries sorted by name), each entry as its name, dtype, shape and raw bytes, so
the hash does not depend on insertion order or on the file format the tensors came
from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # NOTE: raw bytes in the machine's byte order; every platform memdeploy runs on
    # (x86-64, ARM64) is little-endian.
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _entry_header(name: str, tensor: torch.Tensor) -> bytes:
    header = {"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
    return json.dumps(header, sort_keys=True).encode("utf-8")


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash a state dictionary's names, dtypes, shapes and values.

    >>> a = weights_sha256({"w": torch.zeros(2), "b": torch.ones(1)})
    >>> a == weights_sha256({"b": torch.ones(1), "w": torch.zeros(2)})
    True
    >>> a == weights_sha256({"w": torch.zeros(2), "b": torch.zeros(1)})
    False
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        digest.update(_entry_header(name, tensor))
        digest.update(b"\0")
        digest.update(_tensor_bytes(tensor))
        digest.update(b"\0")
    return digest.hexdigest()


def architecture_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash a state dictionary's names, dtypes and shapes, not its values.

    Two models have the same architecture hash when one's weights load into the other.

    >>> architecture_sha256({"w": torch.zeros(2)}) == architecture_sha256({"w": torch.ones(2)})
    True
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(_entry_header(name, state[name]))
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Hash a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

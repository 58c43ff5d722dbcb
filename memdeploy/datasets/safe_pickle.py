"""Restricted unpickling for the CIFAR python batches.

The CIFAR "python version" batches are pickles written by Python 2, and a pickle can
call any importable function while it loads. :class:`ArrayOnlyUnpickler` resolves only
the globals that numpy needs to rebuild an array, so a batch file can produce dicts,
lists, numbers, strings and numpy arrays but cannot run other code.
"""

from __future__ import annotations

import importlib
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from memdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

# numpy 2 moved numpy.core to numpy._core; importing the old path warns.
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_reconstruct = importlib.import_module(f"{_NUMPY_CORE}.multiarray")._reconstruct
_frombuffer = importlib.import_module(f"{_NUMPY_CORE}.numeric")._frombuffer

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # Python 2 and numpy 1 write the numpy.core path, numpy 2 writes numpy._core.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    # Pickle protocol 5 rebuilds arrays from a buffer instead.
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""(module, name) pairs a batch file may reference, mapped to the object they load."""


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that loads builtin containers and numpy arrays and nothing else.

    Args:
        file: Binary file object positioned at the pickle.
        path: Name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase, path: Path | str) -> None:
        # encoding="bytes" keeps Python 2 str values as bytes, which is what numpy's
        # array reconstruction expects for the raw pixel buffer.
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global, or raise for any other global."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self._path} references {module}.{name}, expected only numpy array "
                "globals: it is not a CIFAR python batch and was not loaded, because "
                "unpickling it could run code"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Raise, because CIFAR batches contain no persistent ids."""
        raise DatasetError(
            f"{self._path} contains a persistent id, not allowed in CIFAR batches"
        )


def load_array_pickle(path: Path) -> Any:
    """Load a pickle that may contain only builtin values and numpy arrays.

    Raises:
        DatasetError: The file cannot be read, is not a pickle or references a global
            outside ``ALLOWED_GLOBALS``.
    """
    try:
        with path.open("rb") as handle:
            return ArrayOnlyUnpickler(handle, path).load()
    except DatasetError:
        raise
    except Exception as err:
        # The pickle docs list AttributeError, EOFError, ImportError and IndexError
        # among the errors a malformed pickle raises "but not necessarily limited
        # to" them, so any error while loading means a malformed file.
        raise DatasetError(f"cannot unpickle CIFAR batch {path}: {err!r}") from err

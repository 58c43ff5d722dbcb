"""Folders searched for dataset files.

With ``data_dir`` given, only that folder and its dataset subfolders are searched.
Without it, the search covers ``$MEMDEPLOY_DATA/<subfolder>``, then
``./data/<subfolder>`` relative to the working directory (where
``tools/fetch_data.sh`` puts the files when run from the repository root), then any
system folder a distribution package installs into.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from memdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "MEMDEPLOY_DATA"
DEFAULT_DATA_DIR = Path("data")


def candidate_folders(
    data_dir: str | Path | None,
    subfolders: Sequence[str],
    system_folders: Sequence[Path] = (),
) -> list[Path]:
    """Return the folders to search, most specific first.

    >>> [str(p) for p in candidate_folders("/x", ["mnist"])]
    ['/x', '/x/mnist']
    """
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        return [base, *(base / name for name in subfolders)]

    bases = [DEFAULT_DATA_DIR.absolute()]
    env_dir = os.environ.get(DATA_ENV_VAR)
    if env_dir:
        bases.insert(0, Path(env_dir).expanduser())
    folders = [base / name for base in bases for name in subfolders]
    return [*folders, *system_folders]


def find_folder(
    folders: Sequence[Path],
    contains_dataset: Callable[[Path], bool],
    *,
    dataset: str,
    advice: str,
) -> Path:
    """Return the first folder for which ``contains_dataset`` is true.

    Raises:
        DatasetError: No folder contains the dataset. The message lists the folders
            searched and ends with ``advice``.
    """
    for folder in folders:
        if folder.is_dir() and contains_dataset(folder):
            logger.debug("found %s in %s", dataset, folder)
            return folder

    searched = ", ".join(str(folder) for folder in folders)
    raise DatasetError(f"{dataset} not found in {searched}: {advice}")

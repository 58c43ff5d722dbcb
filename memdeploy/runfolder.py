"""The run folder: every file a run writes, each written atomically.

Files: `manifest.json` (settings, versions, profile), `history.csv` (one row per
generation), `candidates.csv` (one row per scored candidate), `summary.json`,
`float.safetensors`, `baseline.safetensors`, `best.safetensors` and `best.pt`
(state dictionaries), `fitness.png`, and `checkpoint.npz` (the GA state after the
last finished generation). A file is written to a temporary name in the same folder
and renamed into place, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from memdeploy.errors import RunFolderError
from memdeploy.ga import GAState

HISTORY_FIELDS = [
    "generation", "best_fitness", "mean_fitness", "min_fitness", "elapsed_s",
    "cells_programmed", "pulses", "bytes_on_link", "link_time_s",
    "finetune_s", "program_s", "inference_s",
]
CANDIDATE_FIELDS = [
    "generation", "candidate", "fitness", "cells_written", "stuck_cells", "pulses",
    "verify_rounds", "verify_failures", "bytes_sent", "bytes_received", "link_time_s",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that a killed writer left behind; return their paths.

    The file each belonged to is intact: the rename that replaces it never happened.
    """
    removed = []
    for path in Path(folder).glob(".*.*"):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data) -> None:
    """Write JSON atomically, indented, with a final newline."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict:
    """Read a JSON object, naming the file in any error."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RunFolderError(f"{path} not found: is this a memdeploy run folder?") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Write rows as CSV atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict]:
    """Read CSV rows as dictionaries of strings ([] when the file is absent)."""
    if not Path(path).exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a state dictionary as safetensors (or torch's format for a `.pt` name)."""
    tensors = {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}
    if Path(path).suffix == ".pt":
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return
    descriptor, temporary = tempfile.mkstemp(
        dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp"
    )
    os.close(descriptor)
    try:
        save_file(tensors, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dictionary from safetensors or a torch file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch raise assorted types on bad files
        raise RunFolderError(f"{path}: cannot read weights ({err})") from err
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise RunFolderError(f"{path}: expected a dictionary of tensors")
    return state


def save_checkpoint(path: Path, state: GAState) -> None:
    """Save the GA state as an NPZ file (no pickled objects) atomically."""
    _, keys, position, has_gauss, cached = state.numpy_state
    version, python_internal, gauss_next = state.python_state
    arrays = {
        "generation": np.array(state.generation),
        "population": state.population,
        "fitness": state.fitness,
        "numpy_keys": np.asarray(keys, dtype=np.uint32),
        "numpy_scalars": np.array([position, has_gauss], dtype=np.int64),
        "numpy_cached": np.array(cached, dtype=np.float64),
        "python_state": np.asarray(python_internal, dtype=np.int64),
        "python_version": np.array(version),
        "python_gauss": np.array(np.nan if gauss_next is None else gauss_next),
        "hall_of_fame": np.stack(state.hall_of_fame).astype(np.float32),
        "hall_of_fame_fitness": np.asarray(state.hall_of_fame_fitness),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> GAState:
    """Load a GA state written by `save_checkpoint`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError as err:
        raise RunFolderError(f"{path} not found: the run has no finished generation") from err
    except (ValueError, OSError, KeyError) as err:
        raise RunFolderError(f"{path}: not a readable checkpoint ({err})") from err
    try:
        gauss = float(arrays["python_gauss"])
        return GAState(
            generation=int(arrays["generation"]),
            population=arrays["population"],
            fitness=arrays["fitness"],
            numpy_state=(
                "MT19937", arrays["numpy_keys"], int(arrays["numpy_scalars"][0]),
                int(arrays["numpy_scalars"][1]), float(arrays["numpy_cached"]),
            ),
            python_state=(
                int(arrays["python_version"]),
                tuple(int(value) for value in arrays["python_state"]),
                None if np.isnan(gauss) else gauss,
            ),
            hall_of_fame=list(arrays["hall_of_fame"]),
            hall_of_fame_fitness=[float(v) for v in arrays["hall_of_fame_fitness"]],
        )
    except KeyError as err:
        raise RunFolderError(f"{path}: checkpoint lacks the array {err}") from err

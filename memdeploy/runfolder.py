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
import pickle
import random
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from memdeploy.errors import RunFolderError, WeightsError
from memdeploy.ga import GAState

HISTORY_FIELDS = [
    "generation", "best_fitness", "mean_fitness", "min_fitness", "elapsed_s",
    "cells_programmed", "pulses", "bytes_on_link", "link_time_s",
    "finetune_s", "program_s", "inference_s", "generation_s", "overhead_s",
]
CANDIDATE_FIELDS = [
    "generation", "candidate", "fitness", "cells_written", "stuck_cells", "pulses",
    "verify_rounds", "verify_failures", "bytes_sent", "bytes_received", "link_time_s",
]


RUN_FILES = (
    "manifest.json", "history.csv", "candidates.csv", "summary.json",
    "float.safetensors", "baseline.safetensors", "best.safetensors", "best.pt",
    "fitness.png", "checkpoint.npz",
)  # fmt: skip
"""Every file a run folder holds."""

CSV_NUMBER_FIELDS = {
    "history.csv": {
        "generation": int, "best_fitness": float, "mean_fitness": float,
        "min_fitness": float, "elapsed_s": float,
    },
    "candidates.csv": {"generation": int},
}  # fmt: skip
"""Numeric columns of a run's CSV files that a resume or the plot reads, checked
when the file is read."""


def _default_mode() -> int:
    """Return the mode a newly created file gets under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_file(path: Path) -> tuple[int, str]:
    """Create a temporary file next to `path` with the mode a plain create gives.

    `tempfile.mkstemp` creates files readable by their owner only, and the rename
    would carry that mode over to the run folder's files.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(descriptor, _default_mode())
    return descriptor, temporary


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    descriptor, temporary = temporary_file(path)
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
    Only the temporaries of the run's own files (`.NAME.XXXX`) are removed.
    """
    removed = []
    for name in RUN_FILES:
        for path in Path(folder).glob(f".{name}.*"):
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
    except IsADirectoryError as err:
        raise RunFolderError(
            f"{path} is a folder, expected a JSON file: is this a memdeploy run folder?"
        ) from err
    except OSError as err:
        raise RunFolderError(f"cannot read {path}: {err}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise RunFolderError(
            f"{path} is not valid JSON for memdeploy: it is nested too deeply"
        ) from err
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
    """Read CSV rows as dictionaries of strings ([] when the file is absent).

    For the run's own CSV files the columns of `CSV_NUMBER_FIELDS` are checked, so
    that a damaged file is reported here rather than deep inside a resume.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RunFolderError(f"cannot read {path}: {err}") from err
    for field, kind in CSV_NUMBER_FIELDS.get(path.name, {}).items():
        for number, row in enumerate(rows, start=2):
            value = row.get(field)
            try:
                kind(value)
            except (TypeError, ValueError):
                expected = "a generation number" if kind is int else "a number"
                raise RunFolderError(
                    f"{path} line {number}: column {field!r} is {value!r}, expected "
                    f"{expected}: the file is damaged; restore it, or delete it to "
                    "resume without the rows of earlier generations"
                ) from None
    return rows


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a state dictionary as safetensors (or torch's format for a `.pt` name)."""
    tensors = {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}
    if Path(path).suffix == ".pt":
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return
    # Serialized in memory, because safetensors' own writer makes the file
    # readable by its owner only.
    atomic_write_bytes(path, save(tensors))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dictionary from safetensors or a torch file, never unpickling code.

    Raises:
        RunFolderError: The file is missing or is not a dictionary of tensors.
        WeightsError: A floating-point tensor contains NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = _torch_load(path)
    except RunFolderError:
        raise
    except Exception as err:  # safetensors and torch raise assorted types on bad files
        raise RunFolderError(
            f"{path}: cannot read weights ({_first_line(err)}): expected a "
            "safetensors file or a torch state dictionary saved with torch.save"
        ) from err
    if not isinstance(state, dict) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor)
        for name, value in state.items()
    ):
        raise RunFolderError(
            f"{path}: expected a dictionary of tensors keyed by name, found "
            f"{type(state).__name__}: save the model's state_dict()"
        )
    check_finite(state, str(path))
    return state


def _torch_load(path: Path):
    # torch's weights-only unpickler refuses every global outside tensors and
    # containers. Its message suggests weights_only=False, which would run the
    # file's code, so the refusal is reported in memdeploy's own words.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _blocked_global(str(err))
        raise RunFolderError(
            f"{path}: not loaded, because it is not a plain dictionary of tensors"
            f"{detail} and unpickling it could run code: use a safetensors file, or "
            "save only the model's state_dict() with torch.save"
        ) from err


def _blocked_global(message: str) -> str:
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported operand" in line:
            return f" ({line.strip()})"
    return ""


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError naming the first floating-point tensor with NaN or inf."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(
                f"{source}: tensor {name!r} has {bad} NaN or infinite value(s) of "
                f"{tensor.numel()}, expected finite weights: retrain or re-export the "
                "weights"
            )


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
    """Load a GA state written by `save_checkpoint`, checking every array's layout.

    Raises:
        RunFolderError: The file is missing, is not an NPZ file, or an array is
            absent or has the wrong shape, type or range.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError as err:
        raise RunFolderError(f"{path} not found: the run has no finished generation") from err
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
        # np.load reports a file that is no NPZ archive as "pickled data" and
        # suggests allow_pickle=True, which would run the file's code.
        reason = "not an NPZ archive" if "pickle" in str(err) else _first_line(err)
        raise RunFolderError(
            f"{path}: not a readable checkpoint ({reason}): the file is damaged; "
            "delete it to restart the GA from generation 0, or start a new run"
        ) from err
    except (AttributeError, TypeError) as err:
        raise RunFolderError(
            f"{path}: not a readable checkpoint (a single array, not an NPZ "
            "archive): delete it to restart the GA from generation 0"
        ) from err
    _check_checkpoint(path, arrays)

    gauss = float(arrays["python_gauss"])
    return GAState(
        generation=int(arrays["generation"]),
        population=arrays["population"],
        fitness=arrays["fitness"],
        numpy_state=(
            "MT19937",
            arrays["numpy_keys"],
            int(arrays["numpy_scalars"][0]),
            int(arrays["numpy_scalars"][1]),
            float(arrays["numpy_cached"]),
        ),
        python_state=(
            int(arrays["python_version"]),
            tuple(int(value) for value in arrays["python_state"]),
            None if np.isnan(gauss) else gauss,
        ),
        hall_of_fame=list(arrays["hall_of_fame"]),
        hall_of_fame_fitness=[float(v) for v in arrays["hall_of_fame_fitness"]],
    )


_MT_WORDS = 624
"""State words of the Mersenne Twister, numpy's and Python's."""

_PY_VERSION = random.Random.VERSION
"""Version number of the state tuple of Python's `random` module."""


def _check_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def fail(name: str, expected: str) -> None:
        array = arrays[name]
        raise RunFolderError(
            f"{path}: array {name!r} is {array.dtype} of shape {array.shape}, expected "
            f"{expected}: the checkpoint is damaged; delete it to restart the GA "
            "from generation 0, or start a new run"
        )

    def is_int(name: str) -> bool:
        return arrays[name].dtype.kind in "iu"

    def is_float(name: str) -> bool:
        return arrays[name].dtype.kind == "f"

    expected_names = (
        "generation", "population", "fitness", "numpy_keys", "numpy_scalars",
        "numpy_cached", "python_state", "python_version", "python_gauss",
        "hall_of_fame", "hall_of_fame_fitness",
    )  # fmt: skip
    for name in expected_names:
        if name not in arrays:
            raise RunFolderError(
                f"{path}: checkpoint lacks the array {name!r}: delete it to restart "
                "the GA from generation 0"
            )

    if arrays["generation"].shape != () or not is_int("generation"):
        fail("generation", "an integer scalar")
    if int(arrays["generation"]) < 0:
        fail("generation", "a generation number of 0 or more")
    population = arrays["population"]
    if population.ndim != 2 or not is_float("population") or population.size == 0:
        fail("population", "a non-empty 2-D float array (candidates x genes)")
    if not np.isfinite(population).all():
        fail("population", "finite genes")
    if arrays["fitness"].shape != population.shape[:1] or not is_float("fitness"):
        fail("fitness", f"a float array of {population.shape[0]} scores")
    hall = arrays["hall_of_fame"]
    if (
        hall.ndim != 2
        or hall.shape[1] != population.shape[1]
        or not is_float("hall_of_fame")
    ):
        fail("hall_of_fame", f"a 2-D float array of {population.shape[1]} genes a row")
    hall_fitness = arrays["hall_of_fame_fitness"]
    if hall_fitness.shape != hall.shape[:1] or not is_float("hall_of_fame_fitness"):
        fail("hall_of_fame_fitness", f"a float array of {hall.shape[0]} scores")

    keys = arrays["numpy_keys"]
    if keys.shape != (_MT_WORDS,) or keys.dtype != np.uint32:
        fail("numpy_keys", f"{_MT_WORDS} uint32 words")
    scalars = arrays["numpy_scalars"]
    if scalars.shape != (2,) or not is_int("numpy_scalars"):
        fail("numpy_scalars", "2 integers")
    if not (0 <= scalars[0] <= _MT_WORDS and scalars[1] in (0, 1)):
        fail("numpy_scalars", f"a position in 0..{_MT_WORDS} and a flag of 0 or 1")
    if arrays["numpy_cached"].shape != () or not is_float("numpy_cached"):
        fail("numpy_cached", "a float scalar")
    words = arrays["python_state"]
    if words.shape != (_MT_WORDS + 1,) or not is_int("python_state"):
        fail("python_state", f"{_MT_WORDS + 1} integers")
    if words.min() < 0 or words[:-1].max() >= 2**32 or words[-1] > _MT_WORDS:
        fail("python_state", f"{_MT_WORDS} uint32 words and a position")
    version = arrays["python_version"]
    if version.shape != () or not is_int("python_version") or version != _PY_VERSION:
        fail("python_version", f"the integer {_PY_VERSION} of Python's random state")
    if arrays["python_gauss"].shape != () or not is_float("python_gauss"):
        fail("python_gauss", "a float scalar")

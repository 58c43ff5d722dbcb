"""The weight map folder: writing it, and reading it back with its integrity checked.

A map folder contains:

- `manifest.json`: the format name, schema version and kind (`export` or
  `readback`), and the model's name, architecture hash and weights hash. It also
  records the run's settings and dataset shape, which rebuild the model, and the
  device profile (name, full content and hash). The layer table gives the shape,
  scale and tile blocks of every crossbar layer. Last come the size and SHA-256 of
  `map.safetensors`.
- `map.safetensors`: the cell table as tensors `cells.<field>` (fields of
  `tiles.CELL_FIELDS`, one record per weight) and every other entry of the model's
  state dictionary (biases, normalization parameters and buffers) as
  `digital.<name>`.
- `tiles/tile-NNN.csv`: the cells of one tile for lab tools.

Every file is written atomically; the manifest is written last, so a folder whose
manifest exists is complete.
"""

from __future__ import annotations

import csv
import datetime
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from memdeploy.errors import MemdeployError
from memdeploy.runfolder import (
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    write_json,
)
from memdeploy.weightmap.hashing import file_sha256
from memdeploy.weightmap.schema import manifest_problems
from memdeploy.weightmap.tiles import CELL_FIELDS

logger = logging.getLogger(__name__)

FORMAT_NAME = "memdeploy-weight-map"
SCHEMA_VERSION = 1
ARRAY_FILE = "map.safetensors"
MANIFEST_FILE = "manifest.json"
TILE_FOLDER = "tiles"
CSV_FIELDS = [
    "tile",
    "row",
    "col_plus",
    "col_minus",
    "layer",
    "weight_index",
    "output",
    "input",
    "level",
    "g_plus_us",
    "g_minus_us",
]
REQUIRED_KEYS = ("kind", "model", "settings", "dataset", "profile", "layers", "files")


class WeightMapError(MemdeployError, ValueError):
    """A weight map is missing, malformed, or does not match its model or profile."""


def utc_timestamp() -> str:
    """Return the current UTC time in ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class WeightMap:
    """A weight map in memory."""

    manifest: dict
    cells: dict[str, np.ndarray]
    """The cell table: one array per field of `tiles.CELL_FIELDS`, plus optional
    `stuck_plus` and `stuck_minus` stuck codes (uint8) in a read-back map."""

    digital: dict[str, torch.Tensor]
    """State dictionary entries that stay in the digital periphery."""


def write_map(map_dir: Path, weight_map: WeightMap, *, replace: bool = False) -> None:
    """Write a map folder: array file, one CSV per tile, then the manifest.

    Raises:
        WeightMapError: The folder already contains a map and `replace` is False.
    """
    map_dir = Path(map_dir)
    if (map_dir / MANIFEST_FILE).exists() and not replace:
        raise WeightMapError(
            f"{map_dir} already contains a weight map: choose another output folder or "
            "delete it"
        )
    map_dir.mkdir(parents=True, exist_ok=True)

    array_path = map_dir / ARRAY_FILE
    _save_arrays(array_path, weight_map)
    weight_map.manifest["files"] = {
        ARRAY_FILE: {
            "sha256": file_sha256(array_path),
            "bytes": array_path.stat().st_size,
        }
    }
    _write_tile_csvs(map_dir / TILE_FOLDER, weight_map)
    write_json(map_dir / MANIFEST_FILE, weight_map.manifest)
    logger.info(
        "wrote weight map %s (%d cell pairs)", map_dir, weight_map.cells["tile"].size
    )


def _save_arrays(path: Path, weight_map: WeightMap) -> None:
    tensors = {
        f"cells.{name}": torch.from_numpy(np.ascontiguousarray(values))
        for name, values in weight_map.cells.items()
    }
    for name, tensor in weight_map.digital.items():
        tensors[f"digital.{name}"] = tensor.detach().cpu().contiguous().clone()
    metadata = {"format": FORMAT_NAME, "schema_version": str(SCHEMA_VERSION)}
    # Serialized in memory and written by atomic_write_bytes, which gives the file
    # the mode a plain create does (safetensors' own writer makes it owner-only).
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _write_tile_csvs(folder: Path, weight_map: WeightMap) -> None:
    folder.mkdir(exist_ok=True)
    cells = weight_map.cells
    names = [layer["name"] for layer in weight_map.manifest["layers"]]
    in_features = [
        int(np.prod(layer["weight_shape"][1:]))
        for layer in weight_map.manifest["layers"]
    ]
    tiles = np.unique(cells["tile"])
    current = {f"tile-{tile:03d}.csv" for tile in tiles}
    for stale in folder.glob("tile-*.csv"):
        if stale.name not in current:
            stale.unlink()
    for tile in tiles:
        rows = _tile_rows(cells, cells["tile"] == tile, names, in_features)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_FIELDS)
        writer.writerows(rows)
        atomic_write_text(folder / f"tile-{tile:03d}.csv", buffer.getvalue())


def _tile_rows(cells, mask, names, in_features) -> list[list]:
    def text(values: np.ndarray) -> list[str]:
        return [
            np.format_float_positional(value, unique=True, trim="-") for value in values
        ]

    layer = cells["layer"][mask]
    index = cells["weight_index"][mask]
    width = np.asarray(in_features, dtype=np.int64)[layer]
    columns = [
        cells["tile"][mask].tolist(),
        cells["row"][mask].tolist(),
        cells["col"][mask].tolist(),
        (cells["col"][mask] + 1).tolist(),
        [names[value] for value in layer.tolist()],
        index.tolist(),
        (index // width).tolist(),
        (index % width).tolist(),
        text(cells["level"][mask]),
        text(cells["g_plus_us"][mask]),
        text(cells["g_minus_us"][mask]),
    ]
    return [list(row) for row in zip(*columns)]


def read_map(map_dir: Path) -> WeightMap:
    """Read a map folder, checking its format, file hash and cell table.

    This checks the folder on its own; `load.load_map` also checks it against the
    model and the profile it names.

    Raises:
        WeightMapError: The folder is not a map, a file is missing, truncated or
            changed, or the cell table is malformed.
    """
    map_dir = Path(map_dir)
    manifest = _read_manifest(map_dir)
    path = map_dir / ARRAY_FILE
    _check_file(path, manifest["files"].get(ARRAY_FILE), map_dir)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise WeightMapError(
            f"{path}: not a readable safetensors file ({err}): export the map again"
        ) from err

    try:
        cells = {
            key.removeprefix("cells."): value.numpy()
            for key, value in tensors.items()
            if key.startswith("cells.")
        }
    except TypeError as err:  # a dtype numpy lacks, such as bfloat16
        raise WeightMapError(
            f"{path}: a cell field has a type the cell table does not use ({err}): "
            "export the map again"
        ) from err
    digital = {
        key.removeprefix("digital."): value
        for key, value in tensors.items()
        if key.startswith("digital.")
    }
    _check_cells(path, cells, manifest)
    return WeightMap(manifest, cells, digital)


def _read_manifest(map_dir: Path) -> dict:
    path = map_dir / MANIFEST_FILE
    if path.is_dir():
        raise WeightMapError(
            f"{path} is a folder, expected the map's JSON manifest: export the map again"
        )
    if not path.is_file():
        raise WeightMapError(
            f"{map_dir} has no {MANIFEST_FILE}: not a weight map folder (write one "
            "with `memdeploy export`)"
        )
    try:
        manifest = read_json(path)
    except MemdeployError as err:
        raise WeightMapError(str(err)) from err
    if manifest.get("format") != FORMAT_NAME:
        raise WeightMapError(
            f"{path}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}: "
            "not a weight map manifest"
        )
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise WeightMapError(
            f"{path}: schema_version {version!r} is not supported; this memdeploy reads "
            f"version {SCHEMA_VERSION}: upgrade memdeploy or export the map again"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise WeightMapError(
            f"{path} lacks the key(s) {', '.join(missing)}: the manifest is damaged; "
            "export the map again"
        )
    problems = manifest_problems(manifest)
    if problems:
        raise WeightMapError(
            f"{path}: invalid weight map manifest ({len(problems)} problem(s)): "
            + "; ".join(problems[:8])
            + ": the manifest was edited or damaged; export the map again"
        )
    return manifest


def _check_file(path: Path, expected: dict | None, map_dir: Path) -> None:
    if expected is None:
        raise WeightMapError(f"{map_dir}/{MANIFEST_FILE} does not list {path.name}")
    if not path.is_file():
        raise WeightMapError(f"{path} not found: the map folder is incomplete")
    size = path.stat().st_size
    found = file_sha256(path)
    if found != expected["sha256"]:
        truncated = (
            f" and has {size} of {expected['bytes']} bytes (truncated)"
            if size < expected["bytes"]
            else ""
        )
        raise WeightMapError(
            f"{path}: SHA-256 {found[:16]}... differs from {expected['sha256'][:16]}... "
            f"recorded in {MANIFEST_FILE}{truncated}: the file was truncated, changed or "
            "taken from another map; export the map again"
        )


def _check_cells(path: Path, cells: dict[str, np.ndarray], manifest: dict) -> None:
    for name, dtype in CELL_FIELDS.items():
        if name not in cells:
            raise WeightMapError(f"{path} lacks the cell field cells.{name}")
        if cells[name].dtype != dtype or cells[name].ndim != 1:
            raise WeightMapError(
                f"{path}: cells.{name} is {cells[name].dtype} of shape "
                f"{cells[name].shape}, expected a 1-D {dtype} array"
            )
    lengths = {name: values.size for name, values in cells.items()}
    if len(set(lengths.values())) > 1:
        raise WeightMapError(f"{path}: cell fields differ in length: {lengths}")

    tile = manifest["tile"]
    layer_count = len(manifest["layers"])
    # Each field's valid range: [low, high] for integers; floats must be finite.
    ranges = {
        "layer": (0, layer_count - 1, "the manifest's layer table"),
        "tile": (0, max(manifest["tiles_used"] - 1, 0), "the tiles the map uses"),
        "row": (0, tile["rows"] - 1, "the tile's word lines"),
        "col": (0, tile["cols"] - 2, "the tile's bit lines, G- on the next one"),
        "weight_index": (0, np.iinfo(np.int64).max, "a flat weight index"),
    }
    for name, (low, high, meaning) in ranges.items():
        values = cells[name]
        if values.size and (values.min() < low or values.max() > high):
            raise WeightMapError(
                f"{path}: cells.{name} ranges {values.min()} to {values.max()}, "
                f"expected {low} to {high} ({meaning}): export the map again"
            )
    sizes = np.array(
        [math.prod(layer["weight_shape"]) for layer in manifest["layers"]] or [0],
        dtype=np.int64,
    )
    beyond = cells["weight_index"] >= sizes[cells["layer"]]
    if beyond.any():
        first = int(np.argmax(beyond))
        raise WeightMapError(
            f"{path}: cells.weight_index {cells['weight_index'][first]} of layer "
            f"{cells['layer'][first]} is beyond the layer's "
            f"{sizes[cells['layer'][first]]} weights: export the map again"
        )
    for name in ("level", "g_plus_us", "g_minus_us"):
        if not np.isfinite(cells[name]).all():
            raise WeightMapError(
                f"{path}: cells.{name} contains NaN or infinite values, expected "
                "finite numbers: export the map again"
            )

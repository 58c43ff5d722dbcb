"""The verify report of a deploy, and the read-back map it is computed from.

Conductances of the deployed cells are arrays of shape (2, pairs): index 0 the G+
cells, index 1 the G- cells, in the order of the map's cell table. A cell is within
tolerance when its read-back differs from its target by at most the verify tolerance.
Stuck cells are those the device's stuck map marks at the end of the deploy.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from backends.serial_mapping import conductances_to_levels
from memdeploy.profiles import DeviceProfile
from memdeploy.weightmap.format import WeightMap, utc_timestamp
from memdeploy.weightmap.hashing import weights_sha256
from memdeploy.weightmap.load import reconstruct_state

REPORT_FILE = "verify.json"
READBACK_FOLDER = "readback"


def target_pairs(cells: dict[str, np.ndarray]) -> np.ndarray:
    """Return the map's target conductances in µS, shape (2, pairs)."""
    return np.stack([cells["g_plus_us"], cells["g_minus_us"]]).astype(np.float64)


def tile_summary(errors: np.ndarray, stuck: np.ndarray, tolerance_us: float) -> dict:
    """Summarize cells by their read-back errors in µS and stuck flags.

    >>> tile_summary(np.array([0.5, -3.0]), np.array([False, True]), 2.0)["within_tolerance"]
    1
    """
    within = np.abs(errors) <= tolerance_us
    free = ~stuck
    return {
        "cells": int(errors.size),
        "within_tolerance": int(within.sum()),
        "stuck": int(stuck.sum()),
        "unverified": int((~within & free).sum()),
        "max_error_us": _max(np.abs(errors)),
        "max_error_free_us": _max(np.abs(errors[free])),
        "rms_error_us": float(np.sqrt(np.mean(errors**2))) if errors.size else 0.0,
    }


def _max(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0


def build_report(
    cells: dict[str, np.ndarray],
    readback_us: np.ndarray,
    stuck: np.ndarray,
    pulses_by_tile: dict[int, int],
    tolerance_us: float,
    details: dict,
) -> dict:
    """Return the verify report: totals, then one entry per tile.

    Args:
        cells: The map's cell table.
        readback_us: Read-back conductances in µS, shape (2, pairs).
        stuck: Stuck flags, shape (2, pairs).
        pulses_by_tile: Pulses spent on each tile, all deploy runs together.
        tolerance_us: Verify tolerance in µS.
        details: Entries added to the report as they are (device, settings).
    """
    errors = readback_us - target_pairs(cells)
    tiles = []
    for tile in np.unique(cells["tile"]).tolist():
        in_tile = cells["tile"] == tile
        summary = tile_summary(
            errors[:, in_tile].ravel(), stuck[:, in_tile].ravel(), tolerance_us
        )
        tiles.append(
            {"tile": tile, **summary, "pulses": int(pulses_by_tile.get(tile, 0))}
        )
    totals = tile_summary(errors.ravel(), stuck.ravel(), tolerance_us)
    return {
        **totals,
        "pulses": int(sum(pulses_by_tile.values())),
        "tolerance_us": tolerance_us,
        **details,
        "verified": utc_timestamp(),
        "tiles": tiles,
    }


def build_readback_map(
    weight_map: WeightMap,
    readback_us: np.ndarray,
    stuck_codes: np.ndarray,
    profile: DeviceProfile,
    source: dict,
) -> WeightMap:
    """Return a map of the read-back conductances, in the format of the exported map.

    The levels are recomputed from the read conductances, so the map's weights are
    those the array contains. Layer scales and digital parameters are copied from the
    exported map.
    """
    cells = {name: values.copy() for name, values in weight_map.cells.items()}
    cells["g_plus_us"] = readback_us[0].astype(np.float32)
    cells["g_minus_us"] = readback_us[1].astype(np.float32)
    pair = np.stack([cells["g_plus_us"], cells["g_minus_us"]]).astype(np.float64)
    levels = conductances_to_levels(
        pair, profile.conductance.g_min_us, profile.conductance.g_max_us
    )
    cells["level"] = levels.astype(np.float32)
    cells["stuck_plus"] = stuck_codes[0].astype(np.uint8)
    cells["stuck_minus"] = stuck_codes[1].astype(np.uint8)

    manifest = copy.deepcopy(weight_map.manifest)
    manifest.pop("files", None)
    manifest["kind"] = "readback"
    manifest["created"] = utc_timestamp()
    manifest["source"] = source
    readback = WeightMap(manifest, cells, dict(weight_map.digital))
    state = reconstruct_state(Path(source["map_dir"]), readback, profile)
    manifest["model"] = {**manifest["model"], "weights_sha256": weights_sha256(state)}
    return readback

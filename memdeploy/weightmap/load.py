"""Loading a weight map: the checks against its model and profile, and its weights.

A crossbar weight is rebuilt as `level x scale`, where `level` is the pair's
`(G+ - G-) / (g_max - g_min)` stored at float32 precision and `scale` is the layer's
weight of level 1. Loading checks that every level agrees with its conductances, so a
map's conductances and its weights cannot disagree.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from memdeploy.errors import MemdeployError, ProfileError
from memdeploy.models import build_model
from memdeploy.profiles import DeviceProfile, load_profile, profile_from_dict
from memdeploy.weightmap.format import (
    ARRAY_FILE,
    FORMAT_NAME,
    MANIFEST_FILE,
    WeightMap,
    WeightMapError,
    read_map,
)
from memdeploy.weightmap.hashing import architecture_sha256, weights_sha256

logger = logging.getLogger(__name__)

LEVEL_TOLERANCE = 1e-4
"""Largest difference between a stored level and the level its conductances give.
Rounding G+ and G- to float32 moves the level by at most about 1.2e-7 x g_max /
(g_max - g_min), far below this unless g_max is some 800 times the window."""


def load_map(
    map_dir: str | Path,
    *,
    model: nn.Module | None = None,
    profile: str | Path | DeviceProfile | None = None,
) -> tuple[WeightMap, dict[str, torch.Tensor], DeviceProfile]:
    """Read a map and check it against its profile, its weights hash and a model.

    Args:
        map_dir: A map folder written by `memdeploy export` or a deploy's read-back.
        model: The model the weights must load into; default: the model the map's
            settings name, built afresh.
        profile: The profile the map must have been made with; default: the one
            the map names, as it is now on disk.

    Returns:
        The map, its state dictionary and the profile.

    Raises:
        WeightMapError: The map is malformed, or its profile, weights or model differ
            from what its manifest records.
    """
    map_dir = Path(map_dir)
    weight_map = read_map(map_dir)
    checked_profile = check_profile(map_dir, weight_map.manifest, profile)
    state = reconstruct_state(map_dir, weight_map, checked_profile)

    expected = weight_map.manifest["model"]["weights_sha256"]
    found = weights_sha256(state)
    if found != expected:
        raise WeightMapError(
            f"{map_dir / ARRAY_FILE} contains weights with hash {found[:16]}..., but "
            f"{MANIFEST_FILE} expects {expected[:16]}...: the map's files belong to "
            "different models; export the map again"
        )
    check_model(map_dir, weight_map.manifest, state, model)
    return weight_map, state, checked_profile


def weights_from_map(
    map_dir: str | Path, *, model: nn.Module | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Return the state dictionary a map contains, and the map's manifest.

    For an exported map these are the quantized weights; for a read-back map, the
    weights the array held when it was read.
    """
    weight_map, state, _ = load_map(map_dir, model=model)
    return state, weight_map.manifest


def is_map_dir(path: str | Path) -> bool:
    """Return whether `path` is a folder whose manifest names the weight map format.

    A map folder that lacks its array file still counts, so that loading it reports
    the missing file instead of treating the folder as a run folder.
    """
    manifest = Path(path) / MANIFEST_FILE
    if not manifest.is_file():
        return False
    if (Path(path) / ARRAY_FILE).is_file():
        return True
    try:
        return (
            json.loads(manifest.read_text(encoding="utf-8")).get("format")
            == FORMAT_NAME
        )
    except (OSError, ValueError, AttributeError):
        return False


def build_map_model(manifest: dict) -> nn.Module:
    """Build the model a map's settings name, with its initial weights."""
    settings, dataset = manifest["settings"], manifest["dataset"]
    return build_model(
        settings["model"],
        tuple(dataset["image_shape"]),
        int(dataset["num_classes"]),
        seed=int(settings.get("seed", 0)),
    )


def check_profile(map_dir: Path, manifest: dict, profile=None) -> DeviceProfile:
    """Return the map's profile after checking it is unchanged since export."""
    recorded = manifest["profile"]
    try:
        embedded = profile_from_dict(
            recorded["content"], source=f"{map_dir}/{MANIFEST_FILE} profile.content"
        )
    except ProfileError as err:
        raise WeightMapError(
            f"{err}\nThe map's embedded profile is invalid: export the map again"
        ) from err
    if embedded.content_hash() != recorded["sha256"]:
        raise WeightMapError(
            f"{map_dir}/{MANIFEST_FILE}: the embedded profile hashes to "
            f"{embedded.content_hash()[:16]}..., not the recorded "
            f"{recorded['sha256'][:16]}...: the manifest was edited; export the map again"
        )
    source = profile if profile is not None else recorded["source"]
    try:
        current = load_profile(source)
    except ProfileError as err:
        if profile is not None:
            raise
        logger.warning("%s; using the copy of the profile in %s", err, map_dir)
        return embedded
    if current.content_hash() != recorded["sha256"]:
        raise WeightMapError(
            f"profile {str(source)!r} has hash {current.content_hash()[:16]}... but "
            f"{map_dir} was exported with hash {recorded['sha256'][:16]}...: the "
            "profile changed since export; restore it or export the map again"
        )
    return current


def reconstruct_state(
    map_dir: Path, weight_map: WeightMap, profile: DeviceProfile
) -> dict[str, torch.Tensor]:
    """Rebuild the state dictionary from the cell table, the scales and the digital part."""
    cells = weight_map.cells
    _check_levels(map_dir, cells, profile)
    state = dict(weight_map.digital)
    for index, layer in enumerate(weight_map.manifest["layers"]):
        state[f"{layer['name']}.weight" if layer["name"] else "weight"] = _layer_weight(
            map_dir, layer, cells, cells["layer"] == index
        )
    return state


def _check_levels(map_dir: Path, cells: dict, profile: DeviceProfile) -> None:
    window = profile.g_range_us
    from_pairs = (cells["g_plus_us"].astype(np.float64) - cells["g_minus_us"]) / window
    gap = np.abs(from_pairs - cells["level"])
    if gap.size and gap.max() > LEVEL_TOLERANCE:
        worst = int(np.argmax(gap))
        raise WeightMapError(
            f"{map_dir / ARRAY_FILE}: {int((gap > LEVEL_TOLERANCE).sum())} cell pairs "
            f"have a level that differs from (G+ - G-) / {window:g} µS, e.g. tile "
            f"{cells['tile'][worst]} row {cells['row'][worst]} col {cells['col'][worst]}: "
            f"level {cells['level'][worst]:.6g}, conductances give {from_pairs[worst]:.6g}"
        )


def _layer_weight(map_dir: Path, layer: dict, cells: dict, mask: np.ndarray):
    shape = tuple(layer["weight_shape"])
    size = int(np.prod(shape))
    index = cells["weight_index"][mask]
    covered = np.bincount(index, minlength=size) if index.size else np.zeros(size)
    if index.size != size or covered.size != size or not np.all(covered == 1):
        raise WeightMapError(
            f"{map_dir / ARRAY_FILE}: layer {layer['name']!r} has {index.size} cell "
            f"pairs, expected exactly one for each of its {size} weights"
        )
    levels = np.empty(size, dtype=np.float32)
    levels[index] = cells["level"][mask]
    scale = torch.tensor(layer["scale"], dtype=torch.float32)
    weight = torch.from_numpy(levels).reshape(shape) * scale
    return weight.to(getattr(torch, layer.get("dtype", "float32")))


def check_model(
    map_dir: Path, manifest: dict, state: dict, model: nn.Module | None
) -> None:
    """Raise unless the map's state dictionary loads into `model` (default: rebuilt)."""
    if model is None:
        try:
            model = build_map_model(manifest)
        except (MemdeployError, AttributeError, KeyError, TypeError, ValueError) as err:
            raise WeightMapError(
                f"{map_dir / MANIFEST_FILE}: cannot build the model its settings name "
                f"({err}): the manifest was edited or damaged; export the map again"
            ) from err
    expected = architecture_sha256(model.state_dict())
    found = architecture_sha256(state)
    if found != expected:
        names = sorted(set(model.state_dict()) ^ set(state))
        detail = (
            f" (entries in one but not the other: {', '.join(names[:6])})"
            if names
            else ""
        )
        raise WeightMapError(
            f"{map_dir / ARRAY_FILE} belongs to another model: its architecture hash "
            f"is {found[:16]}..., the model {manifest['model']['name']!r} expects "
            f"{expected[:16]}...{detail}; use the map exported for this model"
        )

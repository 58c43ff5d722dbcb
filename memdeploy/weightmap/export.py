"""Export a run's weights as a weight map for a device profile's tiles."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backends.base import CrossbarLayer
from memdeploy.errors import MemdeployError
from memdeploy.genome import Genome
from memdeploy.profiles import (
    PROFILE_DIR,
    DeviceProfile,
    WeightSpec,
    load_profile,
    resolve_profile_path,
)
from memdeploy.quantize import layer_scale, quantize_levels
from memdeploy.runfolder import load_weights, read_json
from memdeploy.settings import make_settings
from memdeploy.weightmap.format import (
    FORMAT_NAME,
    SCHEMA_VERSION,
    WeightMap,
    WeightMapError,
    utc_timestamp,
    write_map,
)
from memdeploy.weightmap.hashing import architecture_sha256, file_sha256, weights_sha256
from memdeploy.weightmap.load import build_map_model
from memdeploy.weightmap.tiles import block_to_dict, build_cell_table, place_on_tiles

logger = logging.getLogger(__name__)

WEIGHT_FILES = {"best": "best.safetensors", "baseline": "baseline.safetensors"}


def export_map(
    run_dir: str | Path,
    out: str | Path,
    *,
    profile: str | Path | None = None,
    weights: str = "best",
) -> WeightMap:
    """Quantize a run's weights for a profile and write them as a weight map folder.

    Args:
        run_dir: A run folder written by `memdeploy optimize`.
        out: The map folder to create; it must not contain a map yet.
        profile: Profile name or path whose levels, conductances and tile geometry
            the map uses; default: the run's own.
        weights: "best", "baseline", or a path to a state dictionary file.
    """
    run_dir = Path(run_dir)
    run_manifest = read_json(run_dir / "manifest.json")
    try:
        settings = make_settings(**run_manifest["settings"])
        dataset = run_manifest["dataset"]
        shape_info = {
            "image_shape": dataset["image_shape"],
            "num_classes": dataset["num_classes"],
        }
    except (KeyError, TypeError, MemdeployError) as err:
        raise WeightMapError(
            f"{run_dir}/manifest.json lacks valid settings or dataset shape ({err}): "
            "export needs a run folder written by `memdeploy optimize`"
        ) from err
    source = _profile_source(profile if profile is not None else settings.profile)
    device_profile = load_profile(source)

    manifest = {
        "settings": settings.model_dump(mode="json"),
        "dataset": {"name": settings.dataset, **shape_info},
    }
    model = build_map_model(manifest)
    path = run_dir / WEIGHT_FILES[weights] if weights in WEIGHT_FILES else Path(weights)
    _load_into(model, path, settings.model)

    weight_map = build_weight_map(model, device_profile, source, manifest)
    weight_map.manifest["source"] = {
        "run_dir": str(run_dir.resolve()),
        "weights_file": str(path.resolve()),
        "weights_file_sha256": file_sha256(path),
    }
    write_map(Path(out), weight_map)
    logger.info(
        "exported %s for profile %s: %d tiles",
        path,
        device_profile.name,
        weight_map.manifest["tiles_used"],
    )
    return weight_map


def _profile_source(name_or_path: str | Path) -> str:
    """Return a shipped profile's name, or the absolute path of any other profile file.

    The map records it, so that loading the map from another folder finds the file.
    """
    path = resolve_profile_path(name_or_path)
    if path.parent == PROFILE_DIR and path.stem == str(name_or_path):
        return str(name_or_path)
    return str(path.resolve())


def _load_into(model: nn.Module, path: Path, model_name: str) -> None:
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as err:
        raise WeightMapError(
            f"{path} does not fit model {model_name!r}: {err}"
        ) from err


def build_weight_map(
    model: nn.Module, profile: DeviceProfile, profile_source: str, manifest: dict
) -> WeightMap:
    """Quantize a model's crossbar weights and lay them out on the profile's tiles.

    Args:
        model: The model with the weights to export.
        profile: The profile that sets levels, conductances and tile geometry.
        profile_source: The name or path the profile was loaded from, recorded so
            that loading the map can check the profile is unchanged.
        manifest: The `settings` and `dataset` entries that rebuild the model.
    """
    layers = Genome(model).crossbar_layers
    state = {
        name: tensor.detach().clone() for name, tensor in model.state_dict().items()
    }
    levels, scales = {}, {}
    for layer in layers:
        weight = state[_weight_name(layer)]
        levels[layer.name], scales[layer.name] = layer_levels(weight, profile.weights)
        quantized = torch.from_numpy(levels[layer.name]) * torch.tensor(
            scales[layer.name]
        )
        state[_weight_name(layer)] = quantized.to(weight.dtype)

    placement = place_on_tiles(layers, profile.tile.rows, profile.tile.cols)
    conductance = profile.conductance
    cells = build_cell_table(
        layers, placement, levels, conductance.g_min_us, conductance.g_max_us
    )
    crossbar_names = {_weight_name(layer) for layer in layers}
    digital = {
        name: tensor for name, tensor in state.items() if name not in crossbar_names
    }

    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "kind": "export",
        "created": utc_timestamp(),
        "model": {
            "name": manifest["settings"]["model"],
            "architecture_sha256": architecture_sha256(state),
            "weights_sha256": weights_sha256(state),
        },
        **manifest,
        "profile": {
            "name": profile.name,
            "source": profile_source,
            "sha256": profile.content_hash(),
            "content": profile.model_dump(mode="json"),
        },
        "tile": {"rows": profile.tile.rows, "cols": profile.tile.cols},
        "tiles_used": int(np.unique(cells["tile"]).size),
        "layers": [
            _layer_entry(
                layer, state[_weight_name(layer)], scales[layer.name], placement
            )
            for layer in layers
        ],
        "digital": sorted(digital),
    }
    return WeightMap(manifest, cells, digital)


def layer_levels(weight: torch.Tensor, spec: WeightSpec) -> tuple[np.ndarray, float]:
    """Return a layer's float32 levels in [-1, 1] and its scale, as `quantize` uses them.

    An all-zero layer gets level 0 everywhere, so that it stays zero as in `quantize`.

    >>> levels, scale = layer_levels(torch.tensor([-1.0, 0.2, 0.9]), WeightSpec(bits=2))
    >>> [round(v, 4) for v in levels.tolist()], scale
    ([-1.0, 0.3333, 1.0], 1.0)
    """
    weight = weight.detach().to(torch.float32)
    scale = layer_scale(weight, spec)
    if not bool(weight.abs().max() > 0):
        return np.zeros(tuple(weight.shape), dtype=np.float32), float(scale)
    levels = quantize_levels(weight, spec, scale)
    return levels.numpy().astype(np.float32), float(scale)


def _weight_name(layer: CrossbarLayer) -> str:
    return f"{layer.name}.weight" if layer.name else "weight"


def _layer_entry(
    layer: CrossbarLayer, weight: torch.Tensor, scale: float, placement
) -> dict:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "weight_shape": list(layer.weight_shape),
        "dtype": str(weight.dtype).removeprefix("torch."),
        "stride": list(layer.stride),
        "padding": list(layer.padding),
        "dilation": list(layer.dilation),
        "groups": layer.groups,
        "scale": scale,
        "blocks": [block_to_dict(block) for block in placement[layer.name]],
    }

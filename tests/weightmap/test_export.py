"""Exporting a run as a weight map: quantized weights, tile placement, CSVs, manifest."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from backends.serial_array import SerialArrayBackend
from memdeploy.genome import Genome
from memdeploy.profiles import load_profile
from memdeploy.quantize import layer_scale, quantize
from memdeploy.weightmap import WeightMapError, export_map, read_map, weights_from_map
from memdeploy.weightmap.load import build_map_model

from .conftest import LAB_PROFILE, TILES_USED, write_profile

CROSSBAR_WEIGHTS = ("1.weight", "3.weight")


def test_map_weights_equal_quantized_run_weights(exported_map, best_weights):
    state, _ = weights_from_map(exported_map)
    spec = load_profile(LAB_PROFILE).weights
    for name in CROSSBAR_WEIGHTS:
        assert torch.equal(state[name], quantize(best_weights[name], spec)), name


def test_map_keeps_digital_parameters_exactly(exported_map, best_weights):
    state, manifest = weights_from_map(exported_map)
    assert manifest["digital"] == ["1.bias", "3.bias"]
    for name in manifest["digital"]:
        assert torch.equal(state[name], best_weights[name]), name


def test_map_rebuilds_the_model_alone(exported_map, best_weights):
    state, manifest = weights_from_map(exported_map)
    model = build_map_model(manifest)
    model.load_state_dict(state)
    inputs = torch.randn(5, 1, 4, 4)
    assert model(inputs).shape == (5, 4)


@pytest.mark.parametrize(
    ("quantization", "replacement"),
    [
        ("ternary", 'quantization = "ternary"'),
        ("none", 'quantization = "none"'),
        ("5 bits", "bits = 5"),
    ],
)
def test_map_equals_quantized_weights_per_kind(
    tmp_path, small_run, best_weights, quantization, replacement
):
    replaced = "bits = 3" if quantization == "5 bits" else 'quantization = "uniform"'
    profile_path = write_profile(tmp_path, "kind", **{replaced: replacement})
    export_map(small_run, tmp_path / "map", profile=profile_path)
    state, _ = weights_from_map(tmp_path / "map")
    spec = load_profile(profile_path).weights
    for name in CROSSBAR_WEIGHTS:
        assert torch.equal(state[name], quantize(best_weights[name], spec)), name


def test_all_zero_layer_stays_zero(tmp_path, small_run):
    from memdeploy.runfolder import load_weights, save_weights

    state = load_weights(small_run / "best.safetensors")
    state["3.weight"] = torch.zeros_like(state["3.weight"])
    save_weights(tmp_path / "zero.safetensors", state)
    export_map(
        small_run,
        tmp_path / "map",
        profile=LAB_PROFILE,
        weights=str(tmp_path / "zero.safetensors"),
    )
    rebuilt, _ = weights_from_map(tmp_path / "map")
    assert torch.equal(rebuilt["3.weight"], torch.zeros_like(state["3.weight"]))


def test_export_places_blocks_like_serial_backend(exported_map, emulator_factory):
    weight_map = read_map(exported_map)
    profile = load_profile(LAB_PROFILE)
    emulator = emulator_factory(profile, tiles=TILES_USED)
    model = build_map_model(weight_map.manifest)
    with SerialArrayBackend(profile, options={"target": emulator.url}) as backend:
        backend.setup(Genome(model).crossbar_layers)
        for layer in weight_map.manifest["layers"]:
            expected = [
                {
                    "tile": b.tile, "row0": b.row0, "col0": b.col0, "rows": b.rows,
                    "cols": b.cols, "inputs": [b.inputs.start, b.inputs.stop],
                    "outputs": [b.outputs.start, b.outputs.stop],
                }
                for b in backend.blocks[layer["name"]]
            ]  # fmt: skip
            assert layer["blocks"] == expected, layer["name"]


def test_cell_table_covers_each_weight_once(exported_map):
    weight_map = read_map(exported_map)
    cells = weight_map.cells
    for index, layer in enumerate(weight_map.manifest["layers"]):
        size = int(np.prod(layer["weight_shape"]))
        indices = np.sort(cells["weight_index"][cells["layer"] == index])
        assert np.array_equal(indices, np.arange(size)), layer["name"]
    plus = set(
        zip(cells["tile"].tolist(), cells["row"].tolist(), cells["col"].tolist())
    )
    minus = set(
        zip(cells["tile"].tolist(), cells["row"].tolist(), (cells["col"] + 1).tolist())
    )
    assert len(plus) == cells["tile"].size
    assert not plus & minus
    assert cells["row"].max() < 32
    assert (cells["col"] + 1).max() < 32
    assert sorted(np.unique(cells["tile"]).tolist()) == list(range(TILES_USED))


def test_cell_targets_follow_the_differential_pair(exported_map):
    cells = read_map(exported_map).cells
    profile = load_profile(LAB_PROFILE)
    g_min, window = profile.conductance.g_min_us, profile.g_range_us
    positive = cells["level"] > 0
    assert np.allclose(
        cells["g_plus_us"][positive], g_min + cells["level"][positive] * window
    )
    assert np.all(cells["g_minus_us"][positive] == np.float32(g_min))
    assert np.allclose(
        cells["g_minus_us"][~positive], g_min - cells["level"][~positive] * window
    )
    assert np.all(cells["g_plus_us"][~positive] == np.float32(g_min))


def test_tile_csv_lists_every_cell_of_its_tile(exported_map):
    weight_map = read_map(exported_map)
    cells = weight_map.cells
    with open(exported_map / "tiles" / "tile-001.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    in_tile = cells["tile"] == 1
    assert len(rows) == int(in_tile.sum())
    first = rows[0]
    assert int(first["col_minus"]) == int(first["col_plus"]) + 1
    targets = np.array([float(row["g_plus_us"]) for row in rows], dtype=np.float32)
    assert np.array_equal(targets, cells["g_plus_us"][in_tile])
    assert {row["layer"] for row in rows} <= {"1", "3"}


def test_manifest_records_profile_hash_and_layer_scales(exported_map, best_weights):
    manifest = read_map(exported_map).manifest
    profile = load_profile(LAB_PROFILE)
    assert manifest["profile"]["sha256"] == profile.content_hash()
    assert manifest["profile"]["content"] == profile.model_dump(mode="json")
    assert manifest["tiles_used"] == TILES_USED
    for layer in manifest["layers"]:
        weight = best_weights[f"{layer['name']}.weight"]
        assert layer["scale"] == float(layer_scale(weight, profile.weights)), layer[
            "name"
        ]
    assert manifest["settings"]["model"] == "mlp"
    assert len(manifest["model"]["weights_sha256"]) == 64


def test_export_into_an_existing_map_is_rejected(exported_map, small_run):
    with pytest.raises(WeightMapError, match="already contains a weight map"):
        export_map(small_run, exported_map, profile=LAB_PROFILE)


def test_export_of_a_folder_without_settings_is_rejected(tmp_path):
    (tmp_path / "manifest.json").write_text('{"status": "running"}')
    with pytest.raises(WeightMapError, match="lacks valid settings or dataset shape"):
        export_map(tmp_path, tmp_path / "map", profile=LAB_PROFILE)


def test_export_of_foreign_weights_is_rejected(tmp_path, small_run):
    from memdeploy.runfolder import save_weights

    save_weights(tmp_path / "other.safetensors", {"weight": torch.zeros(2, 2)})
    with pytest.raises(WeightMapError, match="does not fit model 'mlp'"):
        export_map(
            small_run, tmp_path / "map", weights=str(tmp_path / "other.safetensors")
        )


def test_profile_file_is_recorded_by_absolute_path(tmp_path, small_run, monkeypatch):
    write_profile(tmp_path, "bench-array")
    monkeypatch.chdir(tmp_path)
    export_map(small_run, tmp_path / "map", profile="./bench-array.toml")
    manifest = read_map(tmp_path / "map").manifest
    assert manifest["profile"]["source"] == str(tmp_path / "bench-array.toml")


def test_shipped_profile_is_recorded_by_name(exported_map):
    assert read_map(exported_map).manifest["profile"]["source"] == LAB_PROFILE


def test_map_weights_get_the_manifest_mode(exported_map):
    weights = (exported_map / "map.safetensors").stat().st_mode & 0o777
    manifest = (exported_map / "manifest.json").stat().st_mode & 0o777
    assert weights == manifest

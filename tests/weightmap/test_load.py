"""Loading a weight map: the checks against its files, its model and its profile."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from memdeploy.models import build_model
from memdeploy.profiles import load_profile
from memdeploy.weightmap import (
    WeightMapError,
    export_map,
    is_map_dir,
    load_map,
    read_map,
    weights_from_map,
)
from memdeploy.weightmap.format import write_map
from memdeploy.weightmap.hashing import file_sha256

from .conftest import IMAGE_SHAPE, write_profile, write_run


def _edit_manifest(map_dir, edit) -> None:
    path = map_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_exported_map_is_a_map_folder(exported_map, small_run):
    assert is_map_dir(exported_map)
    assert not is_map_dir(small_run)


def test_map_from_another_model_is_rejected(exported_map):
    other = build_model("mlp", IMAGE_SHAPE, 3, seed=0)
    with pytest.raises(WeightMapError, match="belongs to another model") as caught:
        weights_from_map(exported_map, model=other)
    message = str(caught.value)
    assert "map.safetensors" in message
    assert "architecture hash" in message


def test_array_file_of_another_map_is_rejected(tmp_path, map_copy):
    other_run = write_run(tmp_path / "other", num_classes=3)
    export_map(other_run, tmp_path / "other-map", profile="lab-array-32x32")
    shutil.copy(
        tmp_path / "other-map" / "map.safetensors", map_copy / "map.safetensors"
    )
    expected = json.loads((map_copy / "manifest.json").read_text())["files"]
    found = file_sha256(map_copy / "map.safetensors")
    with pytest.raises(WeightMapError, match="taken from another map") as caught:
        load_map(map_copy)
    message = str(caught.value)
    assert str(map_copy / "map.safetensors") in message
    assert expected["map.safetensors"]["sha256"][:16] in message
    assert found[:16] in message


def test_truncated_array_file_is_rejected(map_copy):
    path = map_copy / "map.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        WeightMapError,
        match=rf"has {len(data) // 2} of {len(data)} bytes \(truncated\)",
    ):
        load_map(map_copy)


def test_missing_array_file_is_rejected(map_copy):
    (map_copy / "map.safetensors").unlink()
    with pytest.raises(WeightMapError, match="not found: the map folder is incomplete"):
        load_map(map_copy)


def test_changed_profile_is_rejected(tmp_path, small_run):
    profile_path = write_profile(tmp_path, "bench-array")
    export_map(small_run, tmp_path / "map", profile=profile_path)
    exported_hash = load_profile(profile_path).content_hash()
    text = profile_path.read_text().replace("tolerance_us = 2.0", "tolerance_us = 1.0")
    profile_path.write_text(text)
    changed_hash = load_profile(profile_path).content_hash()
    with pytest.raises(
        WeightMapError, match="the profile changed since export"
    ) as caught:
        load_map(tmp_path / "map")
    message = str(caught.value)
    assert str(profile_path) in message
    assert exported_hash[:16] in message
    assert changed_hash[:16] in message


def test_other_explicit_profile_is_rejected(exported_map, tmp_path):
    other = write_profile(tmp_path, "other-array", **{"bits = 3": "bits = 4"})
    with pytest.raises(WeightMapError, match="changed since export"):
        load_map(exported_map, profile=other)


def test_missing_profile_uses_embedded_copy(tmp_path, small_run, caplog):
    profile_path = write_profile(tmp_path, "moved-array")
    export_map(small_run, tmp_path / "map", profile=profile_path)
    profile_path.unlink()
    with caplog.at_level(logging.WARNING, logger="memdeploy.weightmap.load"):
        _, _, profile = load_map(tmp_path / "map")
    assert profile.name == "moved-array"
    assert "using the copy of the profile" in caplog.text


def test_edited_embedded_profile_is_rejected(map_copy):
    _edit_manifest(map_copy, lambda m: m["profile"]["content"]["tile"].update(rows=16))
    with pytest.raises(WeightMapError, match="the manifest was edited"):
        load_map(map_copy)


def test_weights_hash_other_than_recorded_is_rejected(map_copy):
    _edit_manifest(map_copy, lambda m: m["model"].update(weights_sha256="0" * 64))
    with pytest.raises(WeightMapError, match=r"expects 0000000000000000\.\.\."):
        load_map(map_copy)


def test_level_off_its_conductances_is_rejected(map_copy):
    weight_map = read_map(map_copy)
    weight_map.cells["level"] = weight_map.cells["level"].copy()
    weight_map.cells["level"][5] += np.float32(0.01)
    write_map(map_copy, weight_map, replace=True)
    with pytest.raises(WeightMapError, match=r"1 cell pairs have a level that differs"):
        load_map(map_copy)


def test_missing_weight_is_rejected(map_copy):
    weight_map = read_map(map_copy)
    weight_map.cells = {name: values[1:] for name, values in weight_map.cells.items()}
    write_map(map_copy, weight_map, replace=True)
    with pytest.raises(WeightMapError, match="expected exactly one for each of its"):
        load_map(map_copy)


def test_folder_without_manifest_is_rejected(tmp_path):
    with pytest.raises(WeightMapError, match="not a weight map folder"):
        load_map(tmp_path)


def test_run_folder_is_not_taken_for_a_map(small_run):
    with pytest.raises(WeightMapError, match="not a weight map manifest"):
        load_map(small_run)


def test_newer_schema_version_is_rejected(map_copy):
    _edit_manifest(map_copy, lambda m: m.update(schema_version=2))
    with pytest.raises(WeightMapError, match="schema_version 2 is not supported"):
        load_map(map_copy)


def test_cell_field_of_wrong_type_is_rejected(map_copy):
    weight_map = read_map(map_copy)
    weight_map.cells["row"] = weight_map.cells["row"].astype(np.float32)
    write_map(map_copy, weight_map, replace=True)
    with pytest.raises(WeightMapError, match="cells.row is float32"):
        load_map(map_copy)

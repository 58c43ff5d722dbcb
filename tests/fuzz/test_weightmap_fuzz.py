"""Fuzzing the weight map loader: only WeightMapError may escape `load_map`.

The map is a 16-64-4 MLP exported for the lab array. Each example damages a copy
of it: a manifest value replaced, removed or added, the array file truncated, bytes
of the array file flipped, or the manifest replaced by random bytes. Where the
array file is changed, its hash in the manifest is usually updated to match, so
that the parser behind the hash check is reached too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memdeploy.models import build_model
from memdeploy.runfolder import save_weights, write_json
from memdeploy.settings import make_settings
from memdeploy.weightmap import export_map, load_map
from memdeploy.weightmap.format import WeightMapError

from .budget import fuzz_settings

IMAGE_SHAPE = (1, 4, 4)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["float32", "export", "readback", "mlp", "os:system", "0" * 64]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def pristine_map(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "small"
    run_dir.mkdir()
    settings = make_settings(model="mlp", dataset="digits", profile="lab-array-32x32")
    write_json(
        run_dir / "manifest.json",
        {
            "settings": settings.model_dump(mode="json"),
            "dataset": {
                "name": "digits",
                "image_shape": list(IMAGE_SHAPE),
                "num_classes": 4,
            },
        },
    )
    model = build_model("mlp", IMAGE_SHAPE, 4, seed=0)
    save_weights(run_dir / "best.safetensors", model.state_dict())
    out = tmp_path_factory.mktemp("map") / "map"
    export_map(run_dir, out, profile="lab-array-32x32")
    return out


def fresh_copy(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "map"
    shutil.rmtree(target, ignore_errors=True)
    return Path(shutil.copytree(pristine, target))


def leaf_paths(tree, prefix=()):
    """Every path into a JSON tree: dictionary keys and list indexes."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaf_paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from leaf_paths(value, (*prefix, index))


def apply(manifest, path, action, value):
    if not path:
        return value if action == "replace" else manifest
    parent = manifest
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    else:
        parent.append(value)
    return manifest


def rehash(map_dir: Path) -> None:
    path = map_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    data = (map_dir / "map.safetensors").read_bytes()
    manifest["files"]["map.safetensors"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    path.write_text(json.dumps(manifest))


def load_or_map_error(map_dir: Path) -> None:
    try:
        load_map(map_dir)
    except WeightMapError:
        pass


@fuzz_settings(120)
@given(st.data())
def test_edited_manifest_gives_map_error(pristine_map, tmp_path, data):
    map_dir = fresh_copy(pristine_map, tmp_path)
    manifest = json.loads((map_dir / "manifest.json").read_text())
    paths = list(leaf_paths(manifest))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = (
            list(leaf_paths(manifest)) if isinstance(manifest, (dict, list)) else [()]
        )
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        manifest = apply(manifest, path, action, data.draw(json_values))
    (map_dir / "manifest.json").write_text(json.dumps(manifest))

    load_or_map_error(map_dir)


@fuzz_settings(60)
@given(st.data())
def test_truncated_array_file_gives_map_error(pristine_map, tmp_path, data):
    map_dir = fresh_copy(pristine_map, tmp_path)
    array = map_dir / "map.safetensors"
    content = array.read_bytes()
    array.write_bytes(content[: data.draw(st.integers(0, len(content) - 1))])
    if data.draw(st.booleans()):
        rehash(map_dir)

    with pytest.raises(WeightMapError):
        load_map(map_dir)


@fuzz_settings(100)
@given(st.data())
def test_flipped_bytes_in_array_file_give_map_error(pristine_map, tmp_path, data):
    map_dir = fresh_copy(pristine_map, tmp_path)
    array = map_dir / "map.safetensors"
    content = bytearray(array.read_bytes())
    header = int.from_bytes(content[:8], "little") + 8
    # Half the flips land in the JSON header, half in the tensor data.
    for _ in range(data.draw(st.integers(1, 8))):
        end = header if data.draw(st.booleans()) else len(content)
        position = data.draw(st.integers(0, end - 1))
        content[position] ^= data.draw(st.integers(1, 255))
    array.write_bytes(bytes(content))
    rehash(map_dir)

    load_or_map_error(map_dir)


@fuzz_settings(60)
@given(st.binary(max_size=2000))
def test_random_manifest_bytes_give_map_error(pristine_map, tmp_path, content):
    map_dir = fresh_copy(pristine_map, tmp_path)
    (map_dir / "manifest.json").write_bytes(content)

    with pytest.raises(WeightMapError):
        load_map(map_dir)

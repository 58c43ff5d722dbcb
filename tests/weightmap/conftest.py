"""Fixtures of the weight map tests: small run folders, exported maps, emulators.

The run folders are written directly (manifest and best weights), without training,
so that the tests stay fast. Their MLP takes 1x4x4 images: 16 inputs, 64 hidden units
and 4 classes, which fill 3 tiles of the 32x32 lab array.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from backends.emulator import start_emulator
from memdeploy.models import build_model
from memdeploy.profiles import PROFILE_DIR
from memdeploy.runfolder import save_weights, write_json
from memdeploy.settings import make_settings
from memdeploy.weightmap import deploy_map, export_map

LAB_PROFILE = "lab-array-32x32"
IMAGE_SHAPE = (1, 4, 4)
TILES_USED = 3


def write_run(run_dir: Path, *, num_classes: int = 4, seed: int = 0) -> Path:
    """Write a run folder whose best weights are an MLP's seeded initial weights."""
    run_dir.mkdir(parents=True)
    settings = make_settings(
        model="mlp", dataset="digits", profile=LAB_PROFILE, seed=seed
    )
    manifest = {
        "settings": settings.model_dump(mode="json"),
        "dataset": {
            "name": "digits",
            "image_shape": list(IMAGE_SHAPE),
            "num_classes": num_classes,
        },
    }
    write_json(run_dir / "manifest.json", manifest)
    model = build_model("mlp", IMAGE_SHAPE, num_classes, seed=seed)
    save_weights(run_dir / "best.safetensors", model.state_dict())
    return run_dir


def write_profile(folder: Path, name: str, **replacements: str) -> Path:
    """Copy the lab array profile to `folder/name.toml`, replacing lines of its text."""
    text = (PROFILE_DIR / f"{LAB_PROFILE}.toml").read_text(encoding="utf-8")
    text = text.replace(f'name = "{LAB_PROFILE}"', f'name = "{name}"')
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not a line of the lab profile"
        text = text.replace(old, new)
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A run folder of the 16-64-4 MLP."""
    return write_run(tmp_path_factory.mktemp("runs") / "small")


@pytest.fixture(scope="session")
def exported_map(tmp_path_factory, small_run) -> Path:
    """The small run exported for the lab array; tests must not change it."""
    out = tmp_path_factory.mktemp("maps") / "small"
    export_map(small_run, out, profile=LAB_PROFILE)
    return out


@pytest.fixture
def map_copy(tmp_path, exported_map) -> Path:
    """A copy of the exported map that a test may change."""
    return Path(shutil.copytree(exported_map, tmp_path / "map"))


@pytest.fixture
def emulator_factory():
    """Start emulated arrays with `emulator_factory(profile, **options)`."""
    handles = []

    def start(profile=LAB_PROFILE, **options):
        options.setdefault("transport", "pty")
        handle = start_emulator(profile, **options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="session")
def deployed_map(tmp_path_factory, exported_map):
    """The exported map deployed once on an emulated lab array: (map folder, report)."""
    map_dir = Path(
        shutil.copytree(exported_map, tmp_path_factory.mktemp("deployed") / "map")
    )
    with start_emulator(LAB_PROFILE, tiles=4, transport="pty", seed=0) as emulator:
        report = deploy_map(map_dir, f"serial://{emulator.url}", tile_pictures=1)
    return map_dir, report


@pytest.fixture
def best_weights(small_run) -> dict[str, torch.Tensor]:
    """The small run's best weights."""
    from memdeploy.runfolder import load_weights

    return load_weights(small_run / "best.safetensors")

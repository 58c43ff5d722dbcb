"""Deploying a weight map onto the emulated array: verify report, read-back, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from memdeploy.errors import BackendSpecError
from memdeploy.profiles import load_profile
from memdeploy.weightmap import (
    WeightMapError,
    deploy_map,
    export_map,
    read_map,
    weights_from_map,
)
from memdeploy.weightmap.journal import JOURNAL_FILE
from memdeploy.weightmap.programming import map_blocks

from .conftest import LAB_PROFILE, TILES_USED, write_profile

TOLERANCE_US = load_profile(LAB_PROFILE).write_verify.tolerance_us


class SimulatedKill(Exception):
    """Stands in for the deploy process dying after some blocks."""


def _errors_and_stuck(map_dir):
    exported, readback = read_map(map_dir), read_map(map_dir / "readback")
    errors = np.stack(
        [
            readback.cells["g_plus_us"] - exported.cells["g_plus_us"],
            readback.cells["g_minus_us"] - exported.cells["g_minus_us"],
        ]
    ).astype(np.float64)
    stuck = np.stack([readback.cells["stuck_plus"], readback.cells["stuck_minus"]]) != 0
    return errors, stuck


def _record_programmed_cells(emulator) -> list[tuple[int, int, int]]:
    """Record (tile, row, col) of every cell the emulated device is asked to program."""
    physics = emulator.device.physics
    original = physics.program
    programmed: list[tuple[int, int, int]] = []

    def program(tile, rows, cols, *args):
        programmed.extend((int(tile), int(r), int(c)) for r, c in zip(rows, cols))
        return original(tile, rows, cols, *args)

    physics.program = program
    return programmed


def _block_cells(map_dir, keys) -> set[tuple[int, int, int]]:
    weight_map = read_map(map_dir)
    cells = weight_map.cells
    addresses = set()
    for item in map_blocks(weight_map):
        if item.key in keys:
            for sign in (0, 1):
                addresses |= {
                    (
                        int(cells["tile"][i]),
                        int(cells["row"][i]),
                        int(cells["col"][i]) + sign,
                    )
                    for i in item.records
                }
    return addresses


def test_every_free_cell_reads_back_within_tolerance(deployed_map):
    map_dir, report = deployed_map
    errors, stuck = _errors_and_stuck(map_dir)
    assert np.all(np.abs(errors[~stuck]) <= TOLERANCE_US)
    assert report["unverified"] == 0
    assert report["max_error_free_us"] <= TOLERANCE_US


def test_verify_report_counts_match_the_readback(deployed_map):
    map_dir, report = deployed_map
    stored = json.loads((map_dir / "verify.json").read_text())
    errors, stuck = _errors_and_stuck(map_dir)
    assert stored == report
    assert stored["cells"] == errors.size
    assert stored["within_tolerance"] == int((np.abs(errors) <= TOLERANCE_US).sum())
    assert stored["stuck"] == int(stuck.sum())
    assert stored["max_error_us"] == pytest.approx(np.abs(errors).max(), abs=1e-4)
    assert stored["rms_error_us"] == pytest.approx(
        np.sqrt(np.mean(errors**2)), rel=1e-5
    )
    assert stored["tolerance_us"] == TOLERANCE_US


def test_verify_report_tiles_add_up_to_the_totals(deployed_map):
    _, report = deployed_map
    tiles = report["tiles"]
    assert [entry["tile"] for entry in tiles] == list(range(TILES_USED))
    for key in ("cells", "within_tolerance", "stuck", "unverified", "pulses"):
        assert sum(entry[key] for entry in tiles) == report[key], key
    assert max(entry["max_error_us"] for entry in tiles) == report["max_error_us"]
    assert report["pulses"] > 0


def test_report_counts_stuck_cells(deployed_map):
    _, report = deployed_map
    assert report["stuck"] > 0
    assert report["within_tolerance"] < report["cells"]


def test_readback_weights_are_near_the_exported_ones(deployed_map):
    map_dir, _ = deployed_map
    exported, manifest = weights_from_map(map_dir)
    readback, readback_manifest = weights_from_map(map_dir / "readback")
    profile = load_profile(LAB_PROFILE)
    _, stuck = _errors_and_stuck(map_dir)
    free = ~stuck.any(axis=0)
    cells = read_map(map_dir).cells
    assert readback_manifest["kind"] == "readback"
    for index, layer in enumerate(manifest["layers"]):
        name = f"{layer['name']}.weight"
        in_layer = cells["layer"] == index
        flat = cells["weight_index"][in_layer & free]
        # Each cell of the pair is within the tolerance, so a weight is within twice it.
        bound = 2 * TOLERANCE_US / profile.g_range_us * layer["scale"] + 1e-6
        gap = (readback[name].reshape(-1) - exported[name].reshape(-1))[flat]
        assert float(gap.abs().max()) <= bound, name
    assert torch.equal(readback["1.bias"], exported["1.bias"])


def test_interrupted_deploy_skips_finished_blocks(
    tmp_path, small_run, emulator_factory
):
    # Without read noise a verified cell reads back within tolerance, so no repair
    # touches the blocks programmed before the interruption.
    profile_path = write_profile(
        tmp_path, "quiet-array", **{"read_noise = 0.01": "read_noise = 0.0"}
    )
    map_dir = tmp_path / "map"
    export_map(small_run, map_dir, profile=profile_path)
    emulator = emulator_factory(load_profile(profile_path), tiles=TILES_USED)
    spec = f"serial://{emulator.url}"
    finished: list[str] = []

    def kill_after_two_blocks(key: str) -> None:
        finished.append(key)
        if len(finished) == 2:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        deploy_map(map_dir, spec, after_block=kill_after_two_blocks, tile_pictures=0)
    journal = json.loads((map_dir / JOURNAL_FILE).read_text())
    assert sorted(journal["blocks"]) == sorted(finished)
    assert not (map_dir / "verify.json").exists()

    programmed = _record_programmed_cells(emulator)
    report = deploy_map(map_dir, spec, tile_pictures=0)
    rest = {item.key for item in map_blocks(read_map(map_dir))} - set(finished)
    assert not set(programmed) & _block_cells(map_dir, set(finished))
    assert set(programmed) == _block_cells(map_dir, rest)
    assert report["blocks_resumed"] == 2
    assert report["unverified"] == 0


def test_finished_deploy_rerun_programs_nothing(tmp_path, small_run, emulator_factory):
    profile_path = write_profile(
        tmp_path, "quiet-array", **{"read_noise = 0.01": "read_noise = 0.0"}
    )
    export_map(small_run, tmp_path / "map", profile=profile_path)
    emulator = emulator_factory(load_profile(profile_path), tiles=TILES_USED)
    first = deploy_map(tmp_path / "map", f"serial://{emulator.url}", tile_pictures=0)
    programmed = _record_programmed_cells(emulator)
    second = deploy_map(tmp_path / "map", f"serial://{emulator.url}", tile_pictures=0)
    assert programmed == []
    assert second["blocks_resumed"] == second["blocks"]
    assert second["pulses"] == first["pulses"]


def test_journal_of_another_device_is_rejected(map_copy, emulator_factory):
    first = emulator_factory(tiles=TILES_USED, seed=0)
    deploy_map(map_copy, f"serial://{first.url}", tile_pictures=0)
    second = emulator_factory(tiles=TILES_USED, seed=1)
    with pytest.raises(WeightMapError, match="records a deploy of another map, device"):
        deploy_map(map_copy, f"serial://{second.url}", tile_pictures=0)
    report = deploy_map(
        map_copy, f"serial://{second.url}", restart=True, tile_pictures=0
    )
    assert report["blocks_resumed"] == 0


def test_deploy_to_gaussian_is_rejected(exported_map):
    with pytest.raises(BackendSpecError, match="only the serial backend does"):
        deploy_map(exported_map, "gaussian")


def test_unknown_deploy_option_is_rejected(exported_map, emulator_factory):
    emulator = emulator_factory(tiles=TILES_USED)
    with pytest.raises(BackendSpecError, match="does not take option"):
        deploy_map(exported_map, f"serial://{emulator.url}?mode=onchip")


def test_device_with_too_few_tiles_is_rejected(map_copy, emulator_factory):
    emulator = emulator_factory(tiles=TILES_USED - 1)
    with pytest.raises(
        BackendSpecError, match=f"needs {TILES_USED} tiles .* has {TILES_USED - 1}"
    ):
        deploy_map(map_copy, f"serial://{emulator.url}")
    assert not (map_copy / JOURNAL_FILE).exists()


def test_device_with_other_tile_geometry_is_rejected(
    tmp_path, map_copy, emulator_factory
):
    small_tiles = write_profile(tmp_path, "small-tiles", **{"rows = 32": "rows = 16"})
    emulator = emulator_factory(load_profile(small_tiles), tiles=8)
    with pytest.raises(BackendSpecError, match="tiles of 16x32 cells"):
        deploy_map(map_copy, f"serial://{emulator.url}")


def test_invalid_read_count_is_rejected(exported_map):
    with pytest.raises(ValueError, match="reads must be at least 1"):
        deploy_map(exported_map, "serial:///dev/null", reads=0)


KILLED_DEPLOY = """
import os, signal, sys
from memdeploy.weightmap import deploy_map

finished = []

def kill_after_one_block(key):
    finished.append(key)
    if len(finished) == 1:
        os.kill(os.getpid(), signal.SIGKILL)

deploy_map(sys.argv[1], sys.argv[2], after_block=kill_after_one_block, tile_pictures=0)
"""


def test_sigkilled_deploy_leaves_readable_journal(map_copy, emulator_factory):
    emulator = emulator_factory(tiles=TILES_USED)
    spec = f"serial://{emulator.url}"
    command = [sys.executable, "-c", KILLED_DEPLOY, str(map_copy), spec]
    completed = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert completed.returncode == -signal.SIGKILL, completed.stderr.decode()
    journal = json.loads((map_copy / JOURNAL_FILE).read_text())
    assert len(journal["blocks"]) == 1
    assert not list(map_copy.glob(f".{JOURNAL_FILE}.*"))

    report = deploy_map(map_copy, spec, tile_pictures=0)
    assert report["blocks_resumed"] == 1


def test_deploy_of_a_readback_map_is_rejected(deployed_map):
    map_dir, _ = deployed_map
    with pytest.raises(WeightMapError, match="is a readback map, not an exported one"):
        deploy_map(map_dir / "readback", "serial:///dev/null")

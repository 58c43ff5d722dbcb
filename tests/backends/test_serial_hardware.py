"""The serial backend against a real array on the port in MEMDEPLOY_SERIAL_PORT.

Skipped unless the variable names a port (a device path or any pyserial URL). The
checks are those the emulator tests make, with bounds from the device profile in
MEMDEPLOY_SERIAL_PROFILE (default lab-array-32x32). They write the first tiles of the
array.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from backends import CrossbarLayer
from backends.serial_array import SerialArrayBackend
from memdeploy.profiles import load_profile
from memdeploy.quantize import quantize

PORT = os.environ.get("MEMDEPLOY_SERIAL_PORT", "")
pytestmark = [
    pytest.mark.hardware,
    pytest.mark.skipif(
        not PORT, reason="set MEMDEPLOY_SERIAL_PORT to a port with an array"
    ),
]
LAYER = CrossbarLayer("fc", "linear", (8, 16))


@pytest.fixture
def profile():
    return load_profile(os.environ.get("MEMDEPLOY_SERIAL_PROFILE", "lab-array-32x32"))


@pytest.fixture
def backend(profile):
    backend = SerialArrayBackend(profile, options={"target": PORT, "mode": "readback"})
    backend.setup([LAYER])
    yield backend
    backend.close()


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"fc": torch.randn(LAYER.weight_shape, generator=generator)}


def test_hardware_handshake_reports_geometry(backend):
    info = backend.info

    assert info.major == 1
    assert info.tiles >= 1
    assert info.g_max_us > info.g_min_us


def test_hardware_readback_is_within_verify_tolerance(backend, profile):
    programmed = weights()
    stats = backend.program(programmed)
    read = backend.read_weights()["fc"]
    stuck = backend.stuck_cells()["fc"]

    free = (stuck == 0).all(dim=0)
    window = backend.info.g_max_us - backend.info.g_min_us
    read_sigma = profile.weights.read_noise * window / math.sqrt(2.0)
    bound_us = 2 * (profile.write_verify.tolerance_us + 5 * read_sigma)
    bound = bound_us / window * programmed["fc"].abs().max()
    error = (read - quantize(programmed["fc"], profile.weights)).abs()
    assert stats.cells_written > 0
    assert bool((error[free] < bound).all())


def test_hardware_delta_skips_unchanged_cells(backend):
    programmed = weights()
    backend.program(programmed)

    again = backend.program(programmed)

    assert again.cells_written == 0
    assert again.bytes_sent == 0


def test_hardware_stuck_map_has_pair_shape(backend):
    stuck = backend.stuck_cells()["fc"]

    assert stuck.shape == (2, 8, 16)
    assert set(np.unique(stuck.numpy())) <= {0, 1, 2}

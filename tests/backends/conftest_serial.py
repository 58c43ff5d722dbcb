"""Fixtures of the serial backend: an emulated array behind a pseudo-terminal.

A plugin for the backend tests. tests/backends/conftest.py imports
`serial_backend_factory` from here and registers it for the contract suite; the
serial tests import the helpers directly.

The contract suite states programming noise in the weight domain
(`weights.programming_noise`, a fraction of max|w| drawn anew at every programming).
The emulator's physics is write-verify in the conductance domain, so the factory
configures it to match. Each cell gets one open-loop pulse (`max_pulses=1`, a
tolerance no read meets, full reprogramming), and the pulse noise gives each weight
exactly the profile's programming noise. The conductance window is lifted off 0 µS so
that no pulse is clipped. The emulator and the backend share a fake clock, so that waiting for the
inference time after programming takes no real time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from backends.emulator import EmulatorHandle, FaultSettings, start_emulator
from backends.serial_array import SerialArrayBackend
from memdeploy.profiles import DeviceProfile, load_profile, profile_from_dict

CONTRACT_OPTIONS = {"delta": "0", "tolerance_us": "1e-6", "max_pulses": "1"}
WINDOW_LIFT = 8.0
"""Lift of the conductance window off 0 µS, in standard deviations of a pulse.

Only as much as needed: a larger g_min costs float32 precision in G+ - G-."""


class FakeClock:
    """A clock in s that moves only by `advance`, which stands in for sleep."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def contract_profile(profile: DeviceProfile) -> DeviceProfile:
    """Return `profile` with write-verify physics giving its weight-domain noise."""
    data = profile.model_dump()
    window = profile.g_range_us
    # Each cell of the pair gets 1/sqrt(2) of the weight's noise, as in the Gaussian
    # backend.
    pulse_noise = profile.weights.programming_noise * window / math.sqrt(2.0)
    g_min = max(profile.conductance.g_min_us, WINDOW_LIFT * pulse_noise)
    data["conductance"] = {"g_min_us": g_min, "g_max_us": g_min + window}
    data["write_verify"] = {**data["write_verify"], "pulse_noise_us": pulse_noise}
    return profile_from_dict(data, source=f"contract version of {profile.name}")


def open_serial_backend(
    emulator: EmulatorHandle, profile: DeviceProfile, seed: int = 0, **options: str
) -> SerialArrayBackend:
    """Open the serial backend on an emulator's port, with string options."""
    return SerialArrayBackend(
        profile, seed=seed, options={"target": emulator.url, **options}
    )


@pytest.fixture
def serial_backend_factory():
    """Yield a `(profile, seed) -> backend` factory for the contract suite."""
    emulators: list[EmulatorHandle] = []

    def make(profile: DeviceProfile, seed: int) -> SerialArrayBackend:
        device_profile = contract_profile(profile)
        clock = FakeClock()
        emulator = start_emulator(
            device_profile, seed=seed, transport="pty", clock=clock
        )
        emulators.append(emulator)
        backend = open_serial_backend(
            emulator, device_profile, seed, **CONTRACT_OPTIONS
        )
        backend.clock, backend.sleep = clock, clock.advance
        return backend

    yield make
    for emulator in emulators:
        emulator.stop()


@pytest.fixture
def lab_profile() -> DeviceProfile:
    """The 32x32 lab array profile the serial tests run on."""
    return load_profile("lab-array-32x32")


@pytest.fixture
def emulator_factory() -> Callable[..., EmulatorHandle]:
    """Start emulators with `emulator_factory(profile, faults=..., **options)`."""
    handles: list[EmulatorHandle] = []

    def start(profile, *, faults: FaultSettings | None = None, **options):
        handle = start_emulator(profile, faults=faults, **options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()

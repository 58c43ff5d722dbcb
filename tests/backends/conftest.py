"""Fixtures for the backend tests, and how a backend joins the contract suite.

The contract suite (`test_contract.py`) runs once for every backend that
`backends.registry.list_backends()` reports; one reported unavailable is skipped with
its reason. Each test gets its backends from a factory, a callable
``(profile, seed) -> CrossbarBackend``, through the `make_backend` fixture, which
closes every backend it made when the test ends.

A backend opened by name alone (``open_backend(name, profile, seed=seed)``) needs
nothing here. A backend that needs something to run against, such as an emulator
behind a port, provides a fixture that yields its factory and maps its backend name
to that fixture in `BACKEND_FACTORY_FIXTURES`. The serial backend does so with
`serial_backend_factory` from `conftest_serial.py`, which starts an emulator on a
pseudo-terminal for each backend and stops it when the test ends. A backend that
cannot be opened by name and has no entry is skipped with a reason.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backends import CrossbarBackend, list_backends, open_backend
from memdeploy.errors import BackendSpecError
from memdeploy.profiles import DeviceProfile, profile_from_dict

# Imported so that pytest finds the serial backend's factory and emulator fixtures.
from tests.backends.conftest_serial import (  # noqa: F401
    emulator_factory,
    lab_profile,
    serial_backend_factory,
)

BackendFactory = Callable[[DeviceProfile, int], CrossbarBackend]

BACKEND_FACTORY_FIXTURES: dict[str, str] = {"serial": "serial_backend_factory"}
"""Backend name to the name of a fixture that yields its `BackendFactory`."""


def _backend_params() -> list:
    params = []
    for info in list_backends():
        marks = () if info.available else pytest.mark.skip(reason=info.reason)
        params.append(pytest.param(info.name, id=info.name, marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def backend_name(request) -> str:
    """Name of each registered backend in turn."""
    return request.param


@pytest.fixture
def backend_factory(backend_name: str, request) -> BackendFactory:
    """The factory registered for `backend_name`, or one opening it by name."""
    fixture_name = BACKEND_FACTORY_FIXTURES.get(backend_name)
    if fixture_name is not None:
        return request.getfixturevalue(fixture_name)

    def open_by_name(profile: DeviceProfile, seed: int) -> CrossbarBackend:
        try:
            return open_backend(backend_name, profile, seed=seed)
        except BackendSpecError as err:
            pytest.skip(
                f"backend {backend_name!r} cannot be opened by name ({err}); register "
                "a factory fixture in BACKEND_FACTORY_FIXTURES"
            )

    return open_by_name


@pytest.fixture
def make_backend(backend_factory: BackendFactory):
    """Make backends with `make_backend(profile, seed=0)` and close them afterwards."""
    made: list[CrossbarBackend] = []

    def make(profile: DeviceProfile, seed: int = 0) -> CrossbarBackend:
        backend = backend_factory(profile, seed)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def _build_profile(**sections: dict) -> DeviceProfile:
    data: dict = {
        "schema_version": 1,
        "name": "test-profile",
        "technology": "generic",
        "weights": {
            "quantization": "none",
            "programming_noise": 0.0,
            "read_noise": 0.0,
        },
        "drift": {"nu": 0.0, "nu_std": 0.0},
        "faults": {"stuck_rate": 0.0},
        "periphery": {"dac_bits": 0, "adc_bits": 0, "output_noise": 0.0},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return profile_from_dict(data, source="make_profile")


@pytest.fixture
def make_profile() -> Callable[..., DeviceProfile]:
    """Build profiles with `make_profile(weights={...}, faults={...})`.

    Without overrides a profile has float weights, no noise, faults or drift, and
    ideal periphery, so a backend should reproduce digital results exactly. Each
    keyword updates that section of the profile.
    """
    return _build_profile

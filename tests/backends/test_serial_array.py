"""The serial array backend end to end against the emulated array."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backends import CrossbarLayer, open_backend
from backends.emulator import FaultSettings
from backends.serial_array import SerialArrayBackend
from backends.serial_client import ArrayClient
from backends.serial_commands import Command, Rect, Status
from backends.serial_errors import (
    ArrayCapacityError,
    DeviceStatusError,
    LinkTimeoutError,
    SerialLinkError,
)
from memdeploy.errors import BackendSpecError
from memdeploy.profiles import profile_from_dict
from memdeploy.quantize import layer_scale, quantize, quantize_levels

from .conftest_serial import FakeClock, open_serial_backend

FC1 = CrossbarLayer("fc1", "linear", (32, 64))
FC2 = CrossbarLayer("fc2", "linear", (10, 32))
SMALL = CrossbarLayer("fc", "linear", (8, 16))


def random_weights(layers, seed=0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        layer.name: torch.randn(layer.weight_shape, generator=generator)
        for layer in layers
    }


def with_sections(profile, **sections):
    data = profile.model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return profile_from_dict(data)


def verify_bound_us(profile) -> float:
    """A read-back cell lies within tolerance plus 5 read-noise sigmas of its target."""
    read_sigma = profile.weights.read_noise * profile.g_range_us / math.sqrt(2.0)
    return profile.write_verify.tolerance_us + 5 * read_sigma


def cell_targets(profile, weight) -> np.ndarray:
    """Target conductances (2, out, in) in µS of a weight tensor."""
    levels = quantize_levels(
        weight, profile.weights, layer_scale(weight, profile.weights)
    )
    levels = levels.reshape(weight.shape[0], -1).numpy()
    g_min, g_max = profile.conductance.g_min_us, profile.conductance.g_max_us
    return np.stack(
        [
            g_min + np.maximum(levels, 0) * (g_max - g_min),
            g_min + np.maximum(-levels, 0) * (g_max - g_min),
        ]
    )


def read_cells(backend, name) -> np.ndarray:
    backend.read_weights()
    return backend._image[name]


@pytest.mark.parametrize("transport", ["pty", "socket"])
@pytest.mark.parametrize("mode", ["onchip", "readback"])
def test_backend_programs_and_infers_end_to_end(
    emulator_factory, lab_profile, transport, mode
):
    emulator = emulator_factory(lab_profile, seed=1, transport=transport)
    backend = open_serial_backend(emulator, lab_profile, mode=mode)
    weights = random_weights([FC1, FC2])
    backend.setup([FC1, FC2])

    stats = backend.program(weights)
    cells = read_cells(backend, "fc1")
    free = backend._stuck["fc1"] == 0
    targets = cell_targets(lab_profile, weights["fc1"])
    inputs = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    expected = inputs @ quantize(weights["fc1"], lab_profile.weights).T
    outputs = backend.forward("fc1", inputs)
    backend.close()

    assert stats.cells_written == int(
        (backend._stuck["fc1"] == 0).sum() + (backend._stuck["fc2"] == 0).sum()
    )
    assert stats.verify_failures == 0
    assert np.all(np.abs(cells - targets)[free] < verify_bound_us(lab_profile))
    assert outputs.shape == (16, 32)
    assert (
        torch.corrcoef(torch.stack([outputs.flatten(), expected.flatten()]))[0, 1] > 0.9
    )


def test_ideal_link_stats_count_bytes_and_time(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile)
    backend = open_serial_backend(emulator, lab_profile, baudrate="115200")
    backend.setup([SMALL])

    stats = backend.program(random_weights([SMALL]))

    assert stats.bytes_sent > 8 * stats.cells_written
    assert stats.bytes_received > 0
    assert stats.link_time_s == pytest.approx(
        (stats.bytes_sent + stats.bytes_received) * 10 / 115200
    )
    assert stats.pulses >= stats.verify_rounds > 0
    assert backend.total_stats == stats


def test_delta_programming_writes_only_changed_cells(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile, seed=2)
    backend = open_serial_backend(emulator, lab_profile)
    backend.setup([FC1])
    weight = random_weights([FC1])["fc1"]
    backend.program({"fc1": weight})

    mutated = weight.clone()
    biggest = weight.abs().argmax()
    flat = mutated.view(-1)
    for index in (3, 100, 777):
        assert index != biggest
        flat[index] = -flat[index]
    changed = cell_targets(lab_profile, mutated) != cell_targets(lab_profile, weight)
    expected = int((changed & (backend._stuck["fc1"] == 0)).sum())
    stats = backend.program({"fc1": mutated})
    again = backend.program({"fc1": mutated})

    assert 0 < expected <= 6
    assert stats.cells_written == expected
    assert again.cells_written == 0
    assert again.bytes_sent == 0


def test_full_reprogramming_writes_every_free_cell(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile, seed=2)
    backend = open_serial_backend(emulator, lab_profile, delta="0")
    backend.setup([FC1])
    weight = random_weights([FC1])["fc1"]

    first = backend.program({"fc1": weight})
    second = backend.program({"fc1": weight})

    free = int((backend._stuck["fc1"] == 0).sum())
    assert first.cells_written == free
    assert second.cells_written == free


def test_corrupting_link_programs_same_state_as_clean_link(
    emulator_factory, lab_profile
):
    weights = random_weights([SMALL], seed=5)
    states = {}
    for name, faults in [("clean", None), ("noisy", FaultSettings(corrupt_rate=0.01))]:
        emulator = emulator_factory(lab_profile, seed=3, faults=faults)
        backend = open_serial_backend(
            emulator, lab_profile, timeout="0.2", retries="12"
        )
        backend.setup([SMALL])
        stats = backend.program(weights)
        states[name] = (
            backend.stuck_cells()["fc"],
            read_cells(backend, "fc").copy(),
            stats,
        )
        backend.close()

    clean_map, clean_cells, clean_stats = states["clean"]
    noisy_map, noisy_cells, noisy_stats = states["noisy"]
    targets = cell_targets(lab_profile, weights["fc"])
    free = clean_map.numpy().reshape(targets.shape) == 0
    assert torch.equal(noisy_map, clean_map)
    assert noisy_stats.cells_written == clean_stats.cells_written
    assert noisy_stats.verify_failures == 0
    assert np.all(np.abs(noisy_cells - targets)[free] < verify_bound_us(lab_profile))
    assert np.all(np.abs(clean_cells - targets)[free] < verify_bound_us(lab_profile))
    assert noisy_stats.bytes_sent > clean_stats.bytes_sent


def test_reset_mid_transfer_is_survived(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile, faults=FaultSettings(reset_after_frames=6))
    backend = open_serial_backend(emulator, lab_profile, timeout="0.2")
    backend.setup([FC1])
    weight = random_weights([FC1])["fc1"]

    stats = backend.program({"fc1": weight})
    cells = read_cells(backend, "fc1")
    free = backend._stuck["fc1"] == 0

    assert emulator.device.resets == 1
    assert stats.verify_failures == 0
    assert np.all(
        np.abs(cells - cell_targets(lab_profile, weight))[free]
        < verify_bound_us(lab_profile)
    )


def test_tile_command_after_reset_reports_status(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile)
    backend = open_serial_backend(emulator, lab_profile)
    link = backend.client.link
    link.request(Command.SELECT_TILE, b"\x00\x00")
    link.request(Command.RESET)

    with pytest.raises(DeviceStatusError, match="NO_TILE_SELECTED") as caught:
        link.request(Command.READ, Rect(0, 0, 1, 1).encode())

    assert caught.value.status == Status.NO_TILE_SELECTED
    assert caught.value.command == "READ"


def test_slow_device_gives_timeout_error(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile, faults=FaultSettings(delay_s=0.5))

    with pytest.raises(
        LinkTimeoutError, match=r"HELLO .* 2 attempts, 2 of them timed out after 0.1 s"
    ):
        open_serial_backend(emulator, lab_profile, timeout="0.1", retries="1")


def test_loopback_port_gives_timeout_error(lab_profile):
    with pytest.raises(LinkTimeoutError, match="no valid reply to HELLO") as caught:
        SerialArrayBackend(
            lab_profile,
            options={"target": "loop://", "timeout": "0.05", "retries": "0"},
        )

    assert caught.value.status is None


def test_dropped_frames_are_retried(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile, faults=FaultSettings(drop_rate=0.1))
    backend = open_serial_backend(emulator, lab_profile, timeout="0.1", retries="10")
    backend.setup([SMALL])

    stats = backend.program(random_weights([SMALL]))

    assert stats.verify_failures == 0
    assert backend.client.link.resends > 0


def test_model_larger_than_array_is_rejected(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile, tiles=2)
    backend = open_serial_backend(emulator, lab_profile)

    with pytest.raises(
        ArrayCapacityError,
        match=r"layer 'fc\d' .* 2 tiles of 32x32 cells \(2048 cells\)",
    ):
        backend.setup([FC1, FC2])


def test_stuck_cells_match_device_map(emulator_factory, lab_profile):
    profile = with_sections(lab_profile, faults={"stuck_rate": 0.2})
    emulator = emulator_factory(profile, seed=4)
    backend = open_serial_backend(emulator, profile)
    backend.setup([FC2])

    state = backend.stuck_cells()["fc2"]
    block = backend.blocks["fc2"][0]
    rect = block.rect
    tile_codes = emulator.device.physics.stuck_map(
        block.tile, rect.row0, rect.col0, rect.rows, rect.cols
    )

    assert state.dtype == torch.int8
    assert state.shape == (2, 10, 32)
    assert torch.equal(
        state[0], torch.from_numpy(tile_codes[:, 0::2].T.astype(np.int8))
    )
    assert torch.equal(
        state[1], torch.from_numpy(tile_codes[:, 1::2].T.astype(np.int8))
    )


def test_drifting_profile_waits_for_inference_time(emulator_factory, lab_profile):
    profile = with_sections(
        lab_profile, drift={"nu": 0.05, "t0_s": 20.0, "t_inference_s": 600.0}
    )
    clock = FakeClock()
    emulator = emulator_factory(profile, clock=clock)
    backend = open_serial_backend(emulator, profile, mode="readback")
    backend.clock, backend.sleep = clock, clock.advance
    backend.setup([SMALL])

    backend.program(random_weights([SMALL]))
    programmed_at = clock()
    backend.forward("fc", torch.ones(1, 16))

    assert backend.capabilities.drift
    assert clock() == pytest.approx(programmed_at + 600.0)


def test_open_backend_takes_serial_spec(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile, transport="socket")

    backend = open_backend(
        f"serial://{emulator.url}?mode=readback&timeout=2", lab_profile
    )
    backend.close()
    backend.close()

    assert isinstance(backend, SerialArrayBackend)
    assert backend.mode == "readback"
    assert not backend.capabilities.on_chip_inference


def test_dump_option_writes_traffic(emulator_factory, lab_profile, tmp_path):
    emulator = emulator_factory(lab_profile, transport="pty")
    dump = tmp_path / "traffic.txt"

    backend = open_serial_backend(emulator, lab_profile, dump=str(dump))
    backend.close()

    assert "TX" in dump.read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"speed": "9600"}, "does not take option"),
        ({"mode": "fast"}, "option mode='fast' is invalid"),
        ({"delta": "yes"}, "option delta='yes' is invalid"),
        ({"parity": "X"}, "option parity='X'"),
    ],
)
def test_invalid_option_is_rejected(lab_profile, options, message):
    with pytest.raises(BackendSpecError, match=message):
        SerialArrayBackend(lab_profile, options={"target": "loop://", **options})


def test_missing_port_is_rejected(lab_profile):
    with pytest.raises(
        SerialLinkError, match="cannot open serial port '/nonexistent/ttyX'"
    ):
        SerialArrayBackend(lab_profile, options={"target": "/nonexistent/ttyX"})


def test_newer_major_version_is_rejected(emulator_factory, lab_profile, monkeypatch):
    emulator = emulator_factory(lab_profile)
    monkeypatch.setattr("backends.serial_client.PROTOCOL_MAJOR", 2)

    with pytest.raises(
        DeviceStatusError, match="speaks protocol 1.0, this memdeploy speaks 2.0"
    ) as caught:
        open_serial_backend(emulator, lab_profile)

    assert caught.value.status == Status.VERSION_MISMATCH


def test_client_splits_reads_to_fit_budget(emulator_factory, lab_profile):
    emulator = emulator_factory(lab_profile)
    backend = open_serial_backend(emulator, lab_profile)
    client: ArrayClient = backend.client
    whole = client.read(0, Rect(0, 0, 32, 32))

    client.link.budget.current = 40
    pieces = client.stuck_map(0, Rect(3, 5, 4, 27))

    assert whole.shape == (32, 32)
    assert np.array_equal(pieces, emulator.device.physics.stuck_map(0, 3, 5, 4, 27))

"""The emulated array: protocol behaviour, device physics and injected link faults."""

from __future__ import annotations

import argparse
import math
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backends import CrossbarLayer
from backends.emulator.cli import add_emulate_arguments, write_state
from backends.emulator.device import EmulatedDevice
from backends.emulator.faults import FaultInjector, FaultSettings
from backends.emulator.physics import (
    DIGEST_ARRAYS,
    STUCK_AT_MAX,
    STUCK_AT_MIN,
    ArrayPhysics,
    state_digest,
)
from backends.serial_commands import (
    FLAG_STUCK,
    FLAG_VERIFIED,
    FLAG_WORN,
    Command,
    DeviceInfo,
    DeviceStatus,
    Rect,
    Status,
    decode_conductances,
    encode_hello_request,
    encode_tile,
)
from backends.serial_protocol import Frame, FrameDecoder, encode_frame
from backends.serial_transfers import (
    MvmRequest,
    ProgramReply,
    ProgramRequest,
    decode_currents,
    make_cells,
)
from memdeploy.profiles import load_profile, profile_from_dict

from .conftest_serial import FakeClock, open_serial_backend

ROOT = Path(__file__).resolve().parents[2]


def lab_profile(**sections):
    data = load_profile("lab-array-32x32").model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return profile_from_dict(data)


def make_device(profile=None, *, tiles=2, seed=0, clock=None) -> EmulatedDevice:
    physics = ArrayPhysics(
        profile or lab_profile(), tiles=tiles, seed=seed, clock=clock or FakeClock()
    )
    return EmulatedDevice(physics, device_id="test")


class Host:
    """Sends frames to a device in process, numbering them like the real host."""

    def __init__(self, device: EmulatedDevice) -> None:
        self.device = device
        self.seq = 0

    def send_wire(self, wire: bytes) -> list[Frame]:
        replies = []
        for item in self.device.feed(wire):
            answer = self.device.handle(item)
            if answer is not None:
                replies += FrameDecoder().feed(answer)
        return replies

    def request(self, command: Command, payload: bytes = b"", seq=None) -> Frame:
        if seq is None:
            self.seq += 1
            seq = self.seq
        (reply,) = self.send_wire(encode_frame(Frame(int(command), 0, seq, payload)))
        return reply

    def status(self) -> DeviceStatus:
        return DeviceStatus.decode(self.request(Command.STATUS).payload)

    def program(self, rows, cols, targets, *, tolerance=2.0, max_pulses=30, mode=1):
        request = ProgramRequest(
            make_cells(rows, cols, targets), tolerance, max_pulses, mode
        )
        return self.request(Command.PROGRAM, request.encode())


@pytest.fixture
def host() -> Host:
    host = Host(make_device())
    assert host.request(Command.SELECT_TILE, encode_tile(0)).status == Status.OK
    return host


def test_hello_reports_profile_geometry():
    reply = Host(make_device(tiles=5)).request(
        Command.HELLO, encode_hello_request(1, 0)
    )
    info = DeviceInfo.decode(reply.payload)

    assert reply.status == Status.OK
    assert (info.tiles, info.rows, info.cols) == (5, 32, 32)
    assert (info.g_min_us, info.g_max_us) == (8.0, 90.0)
    assert info.levels == 8


def test_hello_other_major_is_rejected():
    reply = Host(make_device()).request(Command.HELLO, encode_hello_request(2, 0))

    assert reply.status == Status.VERSION_MISMATCH
    assert DeviceInfo.decode(reply.payload).major == 1


def test_resent_program_is_replayed_not_applied(host):
    request = ProgramRequest(make_cells([0, 1], [0, 0], [60.0, 30.0]), 2.0, 30)
    wire = encode_frame(Frame(Command.PROGRAM, 0, 500, request.encode()))

    (first,) = host.send_wire(wire)
    (second,) = host.send_wire(wire)
    status = host.status()
    pulses = ProgramReply.decode(first.payload).pulses

    assert second == first
    assert pulses > 0
    assert status.pulses_total == pulses
    assert status.replays == 1


def test_new_request_reusing_seq_is_executed(host):
    host.program([0], [0], [60.0], mode=0)
    pulses_before = host.status().pulses_total

    host.request(
        Command.PROGRAM,
        ProgramRequest(make_cells([5], [5], [70.0]), 2.0, 30).encode(),
        seq=1,
    )

    assert host.status().pulses_total > pulses_before


def test_corrupted_frame_gets_a_nak(host):
    wire = bytearray(encode_frame(Frame(Command.STATUS, 0, 3)))
    wire[3] ^= 0x10

    (reply,) = host.send_wire(bytes(wire))

    assert reply.is_nak
    assert reply.status == Status.FRAME_ERROR
    assert host.status().frames_bad == 1


def test_reply_frames_are_ignored(host):
    assert host.send_wire(encode_frame(Frame(0x82, 0, 4))) == []


@pytest.mark.parametrize(
    ("command", "payload", "status"),
    [
        (0x42, b"", Status.UNKNOWN_COMMAND),
        (Command.STATUS, b"\x00", Status.BAD_LENGTH),
        (Command.SELECT_TILE, encode_tile(2), Status.BAD_ADDRESS),
        (Command.READ, Rect(30, 0, 3, 1).encode(), Status.BAD_ADDRESS),
        (Command.READ, Rect(0, 0, 0, 4).encode(), Status.BAD_ADDRESS),
        (Command.STUCK_MAP, Rect(0, 30, 1, 4).encode(), Status.BAD_ADDRESS),
        (Command.PROGRAM, b"\x00" * 9, Status.BAD_LENGTH),
    ],
)
def test_invalid_request_gets_its_status(host, command, payload, status):
    assert host.request(command, payload).status == status


def test_read_larger_than_max_payload_is_rejected():
    device = make_device()
    device.max_payload = 64
    host = Host(device)
    host.request(Command.SELECT_TILE, encode_tile(0))

    assert (
        host.request(Command.READ, Rect(0, 0, 4, 5).encode()).status
        == Status.REPLY_TOO_LARGE
    )


@pytest.mark.parametrize(
    ("targets", "tolerance", "max_pulses", "mode"),
    [
        ([95.0], 2.0, 30, 0),
        ([float("nan")], 2.0, 30, 0),
        ([40.0], 0.0, 30, 0),
        ([40.0], 2.0, 0, 0),
        ([40.0], 2.0, 30, 7),
    ],
)
def test_invalid_program_is_rejected_and_changes_nothing(
    host, targets, tolerance, max_pulses, mode
):
    reply = host.program(
        [0], [0], targets, tolerance=tolerance, max_pulses=max_pulses, mode=mode
    )

    assert reply.status == Status.BAD_VALUE
    assert host.status().pulses_total == 0


def test_mvm_voltage_beyond_read_voltage_is_rejected(host):
    request = MvmRequest(0, 0, 2, np.array([[0.5]], dtype=np.float32))

    assert host.request(Command.MVM, request.encode()).status == Status.BAD_VALUE


def test_tile_command_before_select_is_rejected():
    reply = Host(make_device()).request(Command.READ, Rect(0, 0, 1, 1).encode())

    assert reply.status == Status.NO_TILE_SELECTED


def test_reset_forgets_tile_and_keeps_conductances(host):
    host.program([3], [4], [70.0])
    boot_id = host.status().boot_id

    assert host.request(Command.RESET).status == Status.OK
    after_reset = host.request(Command.READ, Rect(3, 4, 1, 1).encode())
    host.request(Command.SELECT_TILE, encode_tile(0))
    value = decode_conductances(
        host.request(Command.READ, Rect(3, 4, 1, 1).encode()).payload, Rect(3, 4, 1, 1)
    )
    status = host.status()

    assert after_reset.status == Status.NO_TILE_SELECTED
    assert abs(value[0, 0] - 70.0) < 2.0 + 5 * 0.82
    assert status.boot_id == boot_id + 1
    assert status.resets == 1


def test_write_verify_meets_tolerance(host):
    rng = np.random.default_rng(0)
    targets = rng.uniform(8.0, 90.0, size=200)
    rows, cols = np.divmod(np.arange(200), 32)

    reply = ProgramReply.decode(host.program(rows, cols, targets).payload)
    records = reply.records
    verified = (records["flags"] & FLAG_VERIFIED) != 0
    stuck = (records["flags"] & FLAG_STUCK) != 0

    assert reply.count == 200
    assert np.all(verified | stuck)
    assert np.all(np.abs(records["achieved_us"][verified] - targets[verified]) <= 2.0)
    assert reply.rounds <= 31


def test_cell_listed_twice_is_programmed_in_order(host):
    reply = ProgramReply.decode(host.program([2, 2], [2, 2], [80.0, 20.0]).payload)
    value = decode_conductances(
        host.request(Command.READ, Rect(2, 2, 1, 1).encode()).payload, Rect(2, 2, 1, 1)
    )

    assert reply.count == 2
    assert abs(value[0, 0] - 20.0) < 2.0 + 5 * 0.82


def test_stuck_cells_follow_profile_rate():
    profile = lab_profile(faults={"stuck_rate": 0.05, "stuck_on_fraction": 0.3})
    physics = ArrayPhysics(profile, tiles=20, seed=3)

    codes = np.concatenate(
        [physics.stuck_map(t, 0, 0, 32, 32).ravel() for t in range(20)]
    )
    stuck = int((codes != 0).sum())
    on = int((codes == STUCK_AT_MAX).sum())

    assert abs(stuck - 0.05 * codes.size) < 5 * math.sqrt(codes.size * 0.05 * 0.95)
    assert abs(on - 0.3 * stuck) < 5 * math.sqrt(stuck * 0.3 * 0.7)


def test_stuck_map_is_seeded():
    first = ArrayPhysics(lab_profile(), tiles=1, seed=4).stuck_map(0, 0, 0, 32, 32)
    again = ArrayPhysics(lab_profile(), tiles=1, seed=4).stuck_map(0, 0, 0, 32, 32)
    other = ArrayPhysics(lab_profile(), tiles=1, seed=5).stuck_map(0, 0, 0, 32, 32)

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_read_noise_matches_profile():
    physics = ArrayPhysics(lab_profile(faults={"stuck_rate": 0.0}), tiles=1, seed=1)
    rows, cols = np.indices((32, 32))

    first = physics.read(0, rows, cols)
    second = physics.read(0, rows, cols)

    expected = 0.01 * (90.0 - 8.0) / math.sqrt(2.0)
    assert 0.85 < (first - second).std() / (math.sqrt(2.0) * expected) < 1.15


def test_pulse_noise_matches_profile():
    profile = lab_profile(faults={"stuck_rate": 0.0}, weights={"read_noise": 0.0})
    physics = ArrayPhysics(profile, tiles=1, seed=2)
    rows, cols = (index.ravel() for index in np.indices((32, 32)))

    outcome = physics.program(0, rows, cols, np.full(1024, 50.0), 1e-6, 1)

    assert np.all(outcome.pulses == 1)
    assert 0.85 < (outcome.achieved_us - 50.0).std() / 1.5 < 1.15


def test_drift_follows_power_law_of_profile():
    clock = FakeClock()
    profile = lab_profile(
        faults={"stuck_rate": 0.0},
        weights={"read_noise": 0.0},
        drift={"nu": 0.1, "nu_std": 0.0, "t0_s": 20.0},
    )
    physics = ArrayPhysics(profile, tiles=1, seed=0, clock=clock)
    outcome = physics.program(0, np.array([0]), np.array([0]), [60.0], 2.0, 30)

    at_t0 = physics.read(0, np.array([0]), np.array([0]))
    clock.now_s += 3600.0
    at_hour = physics.read(0, np.array([0]), np.array([0]))

    assert at_t0[0] == pytest.approx(outcome.achieved_us[0])
    assert at_hour[0] / at_t0[0] == pytest.approx((3600.0 / 20.0) ** -0.1)


def test_worn_out_cell_sticks_at_nearer_bound():
    profile = lab_profile(faults={"stuck_rate": 0.0}, endurance={"cycles": 3})
    physics = ArrayPhysics(profile, tiles=1, seed=0)
    device = EmulatedDevice(physics, device_id="test")
    host = Host(device)
    host.request(Command.SELECT_TILE, encode_tile(0))

    for target in (85.0, 10.0, 85.0, 10.0):
        reply = ProgramReply.decode(
            host.program([1], [1], [target], tolerance=1e-6, max_pulses=1).payload
        )

    assert physics.tile(0).wear[1, 1] == 3
    assert physics.stuck_map(0, 1, 1, 1, 1)[0, 0] == STUCK_AT_MAX
    assert reply.records["flags"][0] & FLAG_STUCK
    assert reply.pulses == 0


def test_wear_flag_marks_worn_cell():
    profile = lab_profile(faults={"stuck_rate": 0.0}, endurance={"cycles": 1})
    host = Host(make_device(profile))
    host.request(Command.SELECT_TILE, encode_tile(0))

    reply = ProgramReply.decode(
        host.program([0], [0], [12.0], tolerance=1e-6, max_pulses=1).payload
    )
    codes = host.device.physics.stuck_map(0, 0, 0, 1, 1)

    assert reply.records["flags"][0] & FLAG_WORN
    assert codes[0, 0] == STUCK_AT_MIN


def test_ideal_mvm_is_ohm_and_kirchhoff():
    profile = lab_profile(
        faults={"stuck_rate": 0.0},
        weights={"read_noise": 0.0},
        periphery={"dac_bits": 0, "adc_bits": 0, "output_noise": 0.0},
    )
    host = Host(make_device(profile))
    host.request(Command.SELECT_TILE, encode_tile(1))
    voltages = np.array([[0.1, -0.2, 0.05]], dtype=np.float32)

    reply = host.request(Command.MVM, MvmRequest(2, 3, 4, voltages).encode())
    currents = decode_currents(reply.payload)
    conductances = host.device.physics.tile(1).conductance_us[2:5, 3:7]

    assert np.allclose(currents, voltages @ conductances, rtol=1e-5)


def test_dac_quantizes_voltages():
    profile = lab_profile(
        faults={"stuck_rate": 0.0},
        weights={"read_noise": 0.0},
        periphery={"dac_bits": 2, "adc_bits": 0, "output_noise": 0.0},
    )
    physics = ArrayPhysics(profile, tiles=1, seed=0)

    currents = physics.mvm(0, 0, 0, 1, np.array([[0.07]]))

    # Two bits give one step each side of zero: 0.07 V rounds to 0 V.
    assert currents[0, 0] == 0.0


def test_corruption_rate_matches_setting():
    injector = FaultInjector(FaultSettings(corrupt_rate=0.01), seed=0)
    data = bytes(200_000)

    changed = int(np.count_nonzero(np.frombuffer(injector.corrupt(data), np.uint8)))

    assert abs(changed - 2000) < 5 * math.sqrt(2000 * 0.99)


def test_drop_rate_matches_setting():
    injector = FaultInjector(FaultSettings(drop_rate=0.2), seed=0)

    dropped = sum(injector.drop() for _ in range(10_000))

    assert abs(dropped - 2000) < 5 * math.sqrt(10_000 * 0.2 * 0.8)


def test_reset_is_injected_once_after_n_frames():
    injector = FaultInjector(FaultSettings(reset_after_frames=3), seed=0)

    draws = [injector.reset_now() for _ in range(8)]

    assert draws == [False, False, False, True, False, False, False, False]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("corrupt_rate", 1.5, "corrupt_rate must be in"),
        ("delay_s", -1.0, "delay_s must be"),
        ("reset_after_frames", -2, "reset_after_frames must be"),
    ],
)
def test_invalid_fault_settings_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        FaultSettings(**{field: value})


@pytest.mark.parametrize("transport", ["pty", "socket"])
def test_emulate_command_prints_port_and_stops_on_sigterm(transport):
    command = [
        sys.executable,
        "-m",
        "backends.emulator",
        "--profile",
        "lab-array-32x32",
        "--transport",
        transport,
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline().strip()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)
    finally:
        process.kill()
        process.stdout.close()

    assert first_line.startswith("port: ")
    assert first_line.startswith("port: socket://127.0.0.1:") or first_line.startswith(
        "port: /dev/"
    )
    assert returncode == 0


STATE_ARRAYS = {
    "tiles", "conductance_us", "stuck", "wear", "reads_since_pulse", "nu",
    "pulses_total", "seed",
}  # fmt: skip


def _exchange(connection: socket.socket, frame: Frame) -> Frame:
    """Send one request over a socket and return the first frame that comes back."""
    connection.sendall(encode_frame(frame))
    decoder = FrameDecoder()
    while True:
        data = connection.recv(65536)
        assert data, "the emulator closed the connection"
        items = decoder.feed(data)
        if items:
            return items[0]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_emulate_state_out_written_on_stop(tmp_path, stop_signal):
    state_path = tmp_path / "state.npz"
    command = [
        sys.executable, "-m", "backends.emulator", "--profile", "lab-array-32x32",
        "--transport", "socket", "--tiles", "2", "--seed", "4",
        "--state-out", str(state_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port_line = process.stdout.readline().strip()
        host, port = port_line.removeprefix("port: socket://").split(":")
        request = ProgramRequest(
            make_cells([0, 1, 2], [0, 0, 0], [60.0, 30.0, 80.0]), 2.0, 30
        )
        with socket.create_connection((host, int(port)), timeout=20) as connection:
            select = Frame(Command.SELECT_TILE, 0, 1, encode_tile(1))
            selected = _exchange(connection, select)
            programmed = _exchange(
                connection, Frame(Command.PROGRAM, 0, 2, request.encode())
            )
        process.send_signal(stop_signal)
        rest, _ = process.communicate(timeout=20)
    finally:
        process.kill()
        process.stdout.close()
    reply = ProgramReply.decode(programmed.payload)
    match = re.fullmatch(
        rf"state: {re.escape(str(state_path))} sha256=([0-9a-f]{{64}})", rest.strip()
    )

    assert process.returncode == 0
    assert selected.status == Status.OK
    assert programmed.status == Status.OK
    assert match, rest
    assert sorted(path.name for path in tmp_path.iterdir()) == ["state.npz"]

    with np.load(state_path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    expected_stuck = ArrayPhysics(lab_profile(), tiles=2, seed=4).stuck_map(
        1, 0, 0, 32, 32
    )

    assert set(arrays) == STATE_ARRAYS
    assert arrays["tiles"].tolist() == [1]
    assert arrays["conductance_us"].shape == (1, 32, 32)
    assert np.array_equal(arrays["stuck"][0], expected_stuck)
    assert arrays["wear"].sum() == reply.pulses
    assert int(arrays["pulses_total"]) == reply.pulses
    assert str(arrays["seed"]) == "4"
    assert match.group(1) == state_digest(arrays)


def test_state_out_in_missing_folder_is_rejected(tmp_path, capsys):
    parser = add_emulate_arguments(argparse.ArgumentParser())
    missing = tmp_path / "absent" / "state.npz"

    with pytest.raises(SystemExit):
        parser.parse_args(["--profile", "lab-array-32x32", "--state-out", str(missing)])

    assert "not found" in capsys.readouterr().err


def test_write_state_digest_tracks_conductances(tmp_path):
    physics = ArrayPhysics(lab_profile(), tiles=2, seed=0, clock=FakeClock())
    physics.program(0, np.array([3]), np.array([4]), [50.0], 2.0, 30)
    path = tmp_path / "state.npz"

    digest = write_state(physics, path)
    with np.load(path, allow_pickle=False) as data:
        loaded = {name: data[name] for name in DIGEST_ARRAYS}
    loaded["conductance_us"][0, 3, 4] += 1e-9

    assert digest == state_digest(physics.state_arrays())
    assert state_digest(loaded) != digest


def test_split_program_leaves_same_state():
    rng = np.random.default_rng(1)
    targets = rng.uniform(8.0, 90.0, size=300)
    rows, cols = np.divmod(np.arange(300), 32)
    whole, split = Host(make_device(seed=6)), Host(make_device(seed=6))
    for host in (whole, split):
        host.request(Command.SELECT_TILE, encode_tile(0))

    whole.program(rows, cols, targets)
    for start in range(0, 300, 7):
        block = slice(start, start + 7)
        split.program(rows[block], cols[block], targets[block])
    whole_state = whole.device.physics.state_arrays()
    split_state = split.device.physics.state_arrays()

    # A stuck cell is read again in every round of its block, so only the free
    # cells' read counts are independent of the split.
    free = whole_state["stuck"] == 0

    assert whole_state["wear"].sum() > 300
    assert not free.all()
    for name in ("conductance_us", "stuck", "wear"):
        assert np.array_equal(split_state[name], whole_state[name]), name
    assert np.array_equal(
        split_state["reads_since_pulse"][free], whole_state["reads_since_pulse"][free]
    )


def test_resent_read_draws_no_noise(host):
    other = Host(make_device())
    other.request(Command.SELECT_TILE, encode_tile(0))
    wire = encode_frame(Frame(Command.READ, 0, 40, Rect(0, 0, 4, 4).encode()))

    (first,) = host.send_wire(wire)
    (resent,) = host.send_wire(wire)
    (unrepeated,) = other.send_wire(wire)
    after_resend = host.request(Command.READ, Rect(0, 0, 4, 4).encode(), seq=41)
    after_single = other.request(Command.READ, Rect(0, 0, 4, 4).encode(), seq=41)

    assert resent == first
    assert unrepeated == first
    assert host.device.replays == 1
    assert after_resend.payload == after_single.payload
    assert after_resend.payload != first.payload


def test_corrupting_link_leaves_identical_state(emulator_factory):
    profile = load_profile("lab-array-32x32")
    layers = [CrossbarLayer("fc", "linear", (8, 16))]
    generator = torch.Generator().manual_seed(5)
    weight_sets = [{"fc": torch.randn(8, 16, generator=generator)} for _ in range(2)]
    emulators = {}
    for name, faults in [("clean", None), ("noisy", FaultSettings(corrupt_rate=0.01))]:
        emulator = emulator_factory(profile, seed=3, faults=faults)
        backend = open_serial_backend(
            emulator, profile, timeout="0.2", retries="12", mode="readback"
        )
        backend.setup(layers)
        for weights in weight_sets:
            backend.program(weights)
        backend.read_weights()
        backend.close()
        emulator.stop()
        emulators[name] = emulator
    clean = emulators["clean"].device.physics.state_arrays()
    noisy = emulators["noisy"].device.physics.state_arrays()

    assert emulators["noisy"].server.faults.bytes_corrupted > 0
    assert emulators["noisy"].device.replays > 0
    assert clean["wear"].sum() > 0
    for name in ("tiles", "conductance_us", "stuck", "wear", "pulses_total"):
        assert np.array_equal(noisy[name], clean[name]), name
    assert state_digest(noisy) == state_digest(clean)

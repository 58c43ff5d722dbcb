"""Link faults during `memdeploy optimize` on the emulated serial array.

Three runs of the same small job with the same seeds, on emulated arrays of the
same seed:

- a clean run, which records the order of the frames the device received;
- a run whose device resets once while it receives a PROGRAM frame of generation
  1, which the backend recovers from by itself;
- a run whose device goes away (the emulator stops) during generation 1, which
  stops with an error and a checkpoint, and is then resumed on a new emulator
  listening on another port.

"Intended state" means: once a run finishes, the array contains the run's chosen
weights (`best.safetensors`). For every cell pair of those weights, quantized and
placed as `memdeploy export` places them (the serial backend's placement), each cell
that is not stuck holds a conductance within the profile's write-verify tolerance
plus 5 read-noise sigmas of its target (a verify read carries read noise). The
emulator's conductances are compared without read noise.

Before a fault the faulty runs send the clean run's frames to an emulator of the
same seed, so their generation-0 history rows must equal the clean run's exactly.
After a fault the frame sizes adapt to the failed exchange and the noise draws fall
on other cells, so later generations are compared only through the state check.

The file also holds unit tests of `SerialLink` against a port double that never
answers or fails outright.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from backends.emulator import EmulatorHandle, FaultSettings, start_emulator
from backends.serial_commands import Command
from backends.serial_errors import LinkTimeoutError, PortFailedError
from backends.serial_link import SerialLink
from memdeploy.cli import main
from memdeploy.profiles import load_profile
from memdeploy.runfolder import load_checkpoint, read_json
from memdeploy.weightmap.format import read_map

PROFILE = "lab-array-32x32"
TILES = 16
LINK_OPTIONS = "timeout=1&retries=2"
SMALL_RUN = [
    "--limit", "120", "--generations", "2", "--population", "4",
    "--float-steps", "60", "--baseline-steps", "30", "--finetune-steps", "1",
    "--test-draws", "2", "--selection-draws", "2", "--finalists", "2",
    "--profile", PROFILE, "--seed", "0", "--quiet",
]  # fmt: skip


class FrameLog:
    """Wraps a device's `handle` to record each received request's command.

    `first_after_checkpoint` is the index of the first request that arrived after
    the run folder's checkpoint appeared, that is, the first of generation 1.
    """

    def __init__(self, emulator: EmulatorHandle, run_dir: Path) -> None:
        self.commands: list[int] = []
        self.first_after_checkpoint: int | None = None
        self.on_request: Callable[[int], bool] | None = None
        self._checkpoint = run_dir / "checkpoint.npz"
        self._handle = emulator.device.handle
        emulator.device.handle = self._record

    def _record(self, item):
        command = getattr(item, "command", None)
        if command is None or command & 0x80:
            return self._handle(item)
        index = len(self.commands)
        self.commands.append(command)
        if self.first_after_checkpoint is None and self._checkpoint.exists():
            self.first_after_checkpoint = index
        if self.on_request is not None and self.on_request(index):
            return None
        return self._handle(item)

    def program_frames_after_checkpoint(self) -> list[int]:
        start = self.first_after_checkpoint
        return [
            index
            for index, command in enumerate(self.commands)
            if index >= start and command == Command.PROGRAM
        ]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


FITNESS_COLUMNS = ("generation", "best_fitness", "mean_fitness", "min_fitness")


def fitness_row(row: dict) -> tuple:
    return tuple(row[column] for column in FITNESS_COLUMNS)


def intended_state_errors(run_dir: Path, emulator: EmulatorHandle, tmp_path: Path):
    """Return |G - target| in µS of every free cell of the run's best weights."""
    map_dir = tmp_path / f"{run_dir.name}-map"
    assert (
        main(["export", str(run_dir), "--out", str(map_dir), "--profile", PROFILE]) == 0
    )
    cells = read_map(map_dir).cells
    physics = emulator.device.physics

    errors = []
    for sign, target_field in ((0, "g_plus_us"), (1, "g_minus_us")):
        for tile in np.unique(cells["tile"]):
            mask = cells["tile"] == tile
            state = physics.tile(int(tile))
            rows = cells["row"][mask]
            cols = cells["col"][mask] + sign
            free = state.stuck[rows, cols] == 0
            held = state.conductance_us[rows, cols][free]
            errors.append(np.abs(held - cells[target_field][mask][free]))
    return np.concatenate(errors)


def verify_bound_us() -> float:
    profile = load_profile(PROFILE)
    read_sigma = profile.weights.read_noise * profile.g_range_us / math.sqrt(2.0)
    return profile.write_verify.tolerance_us + 5 * read_sigma


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The small job on a clean emulated array; yields its folder, log and device."""
    folder = tmp_path_factory.mktemp("clean")
    run_dir = folder / "run"
    with start_emulator(PROFILE, tiles=TILES, transport="socket") as emulator:
        log = FrameLog(emulator, run_dir)
        backend = f"serial://{emulator.url}?{LINK_OPTIONS}"
        code = main(
            ["optimize", *SMALL_RUN, "--backend", backend, "--out", str(run_dir)]
        )
        assert code == 0
        yield run_dir, log, emulator


@pytest.mark.slow
def test_clean_run_leaves_best_weights_on_array(clean_run, tmp_path):
    run_dir, _, emulator = clean_run

    errors = intended_state_errors(run_dir, emulator, tmp_path)

    assert errors.size > 0
    assert errors.max() <= verify_bound_us()


@pytest.mark.slow
def test_reset_while_programming_is_recovered(clean_run, tmp_path, capsys, caplog):
    clean_dir, clean_log, _ = clean_run
    reset_frame = clean_log.program_frames_after_checkpoint()[2]
    run_dir = tmp_path / "run"
    faults = FaultSettings(reset_after_frames=reset_frame)

    with start_emulator(
        PROFILE, tiles=TILES, transport="socket", faults=faults
    ) as emulator:
        backend = f"serial://{emulator.url}?{LINK_OPTIONS}"
        code, err = run_cli(
            ["optimize", *SMALL_RUN, "--backend", backend, "--out", str(run_dir)],
            capsys,
        )
        errors = intended_state_errors(run_dir, emulator, tmp_path)
        resets = emulator.device.resets

    assert code == 0, err
    assert resets == 1
    assert "lost its tile selection" in caplog.text
    assert [row["generation"] for row in history(run_dir)] == ["0", "1", "2"]
    assert fitness_row(history(run_dir)[0]) == fitness_row(history(clean_dir)[0])
    assert read_json(run_dir / "manifest.json")["status"] == "finished"
    assert errors.max() <= verify_bound_us()


@pytest.mark.slow
def test_vanished_device_stops_run_which_resumes(clean_run, tmp_path, capsys):
    clean_dir, clean_log, _ = clean_run
    vanish_frame = clean_log.program_frames_after_checkpoint()[2]
    run_dir = tmp_path / "run"

    with start_emulator(PROFILE, tiles=TILES, transport="socket") as first:
        log = FrameLog(first, run_dir)

        def vanish(index: int) -> bool:
            if index < vanish_frame:
                return False
            first.server.stop.set()  # the serving loop closes the socket
            return True

        log.on_request = vanish
        backend = f"serial://{first.url}?{LINK_OPTIONS}"
        code, err = run_cli(
            ["optimize", *SMALL_RUN, "--backend", backend, "--out", str(run_dir)],
            capsys,
        )

    assert code == 1
    assert "Traceback" not in err
    assert "failed during PROGRAM" in err
    assert "could not be opened again in 2 tries" in err
    assert f"memdeploy optimize --resume {run_dir}" in err
    assert load_checkpoint(run_dir / "checkpoint.npz").generation == 0
    assert read_json(run_dir / "manifest.json")["status"] == "running"
    assert [row["generation"] for row in history(run_dir)] == ["0"]
    assert fitness_row(history(run_dir)[0]) == fitness_row(history(clean_dir)[0])
    assert not list(run_dir.glob(".*"))

    with start_emulator(PROFILE, tiles=TILES, transport="socket") as second:
        backend = f"serial://{second.url}?{LINK_OPTIONS}"
        code, err = run_cli(
            ["optimize", "--resume", str(run_dir), "--backend", backend, "--quiet"],
            capsys,
        )
        errors = intended_state_errors(run_dir, second, tmp_path)

    assert code == 0, err
    assert [row["generation"] for row in history(run_dir)] == ["0", "1", "2"]
    assert read_json(run_dir / "manifest.json")["settings"]["backend"] == backend
    assert read_json(run_dir / "manifest.json")["status"] == "finished"
    assert errors.max() <= verify_bound_us()


def test_resume_on_other_backend_options_is_rejected(clean_run, capsys):
    run_dir, _, _ = clean_run

    code, err = run_cli(
        [
            "optimize", "--resume", str(run_dir), "--quiet",
            "--backend", "serial://socket://127.0.0.1:9?timeout=3",
        ],
        capsys,
    )  # fmt: skip

    assert code == 1
    assert "cannot resume" in err
    assert "backend" in err


class SilentPort:
    """A port double: accepts every write, never returns a byte."""

    def __init__(self) -> None:
        self.timeout = 0.0
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        return len(data)

    def read(self, size: int) -> bytes:
        return b""


class BrokenPort(SilentPort):
    """A port double whose device is gone: every write fails, reopening too."""

    def __init__(self, reopen_works: bool = False) -> None:
        super().__init__()
        self.opens = 0
        self.reopen_works = reopen_works

    def write(self, data: bytes) -> int:
        self.writes += 1
        raise OSError(5, "Input/output error")

    def close(self) -> None:
        pass

    def open(self) -> None:
        self.opens += 1
        if not self.reopen_works:
            raise OSError(2, "No such file or directory")


def test_silent_device_gives_timeout_after_bounded_resends():
    port = SilentPort()
    link = SerialLink(port, timeout_s=0.01, retries=3, name="silent")

    with pytest.raises(LinkTimeoutError, match=r"STATUS .* after 4 attempts") as caught:
        link.request(Command.STATUS)

    assert port.writes == 4
    assert caught.value.status is None
    assert caught.value.command == "STATUS"


def test_failed_port_reopens_within_retries():
    port = BrokenPort()
    link = SerialLink(port, timeout_s=0.01, retries=3, name="/dev/gone")

    with pytest.raises(PortFailedError, match="could not be opened again in 3 tries"):
        link.request(Command.PROGRAM)

    assert port.opens == 3
    assert port.writes == 1
    assert link.reopens == 0


def test_port_failing_again_times_out():
    port = BrokenPort(reopen_works=True)
    link = SerialLink(port, timeout_s=0.01, retries=2, name="/dev/flaky")

    with pytest.raises(LinkTimeoutError, match="port failed"):
        link.request(Command.READ)

    assert port.writes == 3
    assert link.reopens == 3

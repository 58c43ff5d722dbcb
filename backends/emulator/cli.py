"""`memdeploy emulate`: run an emulated array in the foreground until stopped."""

from __future__ import annotations

import argparse
import io
import logging
import math
import signal
import sys
from pathlib import Path

import numpy as np

from backends.emulator.faults import FaultSettings
from backends.emulator.physics import ArrayPhysics, state_digest
from backends.emulator.server import DEFAULT_TILES, build_server
from memdeploy.errors import BackendError
from memdeploy.runfolder import atomic_write_bytes

logger = logging.getLogger(__name__)

MAX_TILES = 0xFFFF
"""Most tiles an array can report: HELLO carries the count as a u16."""


def _tile_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_TILES:
        raise argparse.ArgumentTypeError(
            f"expected a tile count from 1 to {MAX_TILES}, got {text}"
        )
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text}")
    return value


def _tcp_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(
            f"expected a TCP port from 0 to 65535, got {text}"
        )
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds, 0 or more, got {text}"
        )
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected an integer of 0 or more, got {text}"
        )
    return value


def _state_path(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file path, {text} is a folder")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"folder {path.parent} of {text} not found: create it first"
        )
    return path


def add_emulate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `memdeploy emulate` to a parser (or a subcommand's)."""
    parser.add_argument("--profile", required=True, help="device profile name or path")
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of stuck map and noise"
    )
    parser.add_argument(
        "--tiles", type=_tile_count, default=DEFAULT_TILES,
        help="number of tiles of the array",
    )  # fmt: skip
    parser.add_argument(
        "--corrupt-rate", type=_fraction, default=0.0,
        help="fraction of bytes altered in each direction (0 to 1)",
    )  # fmt: skip
    parser.add_argument(
        "--drop-rate", type=_fraction, default=0.0,
        help="fraction of frames lost in each direction (0 to 1)",
    )  # fmt: skip
    parser.add_argument(
        "--delay-s", type=_seconds, default=0.0, help="delay of every reply, in s"
    )
    parser.add_argument(
        "--reset-after-frames", type=_non_negative_int, default=None, metavar="N",
        help="reset the device once, while it receives frame N + 1",
    )  # fmt: skip
    parser.add_argument(
        "--transport", choices=("pty", "socket"), default="pty",
        help="serve on a pseudo-terminal or on a loopback TCP socket",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=_tcp_port, default=0,
        help="loopback TCP port of --transport socket (default 0: any free port), so "
        "that a restarted emulator keeps its URL",
    )  # fmt: skip
    parser.add_argument(
        "--state-out", type=_state_path, default=None, metavar="PATH",
        help="on stopping, write the cell state of the tiles in use (conductances, "
        "stuck map, pulse counts) to PATH as .npz and print `state: PATH "
        "sha256=HEX`, a hash of tiles, conductances, stuck map and pulse counts",
    )  # fmt: skip
    return parser


def run_emulator(
    profile_name: str,
    *,
    seed: int = 0,
    tiles: int = DEFAULT_TILES,
    transport: str = "pty",
    port: int = 0,
    faults: FaultSettings | None = None,
    state_out: Path | None = None,
    stdout=None,
) -> int:
    """Serve an emulated array until SIGINT or SIGTERM; print `port: URL` first.

    With `state_out`, write the cell state there once serving stops, and print
    `state: PATH sha256=HEX` last.

    Returns:
        The exit status, 0.

    Raises:
        BackendError: The state file could not be written.
    """
    stdout = stdout or sys.stdout
    server = build_server(
        profile_name, seed=seed, tiles=tiles, transport=transport, port=port,
        faults=faults,
    )  # fmt: skip

    def request_stop(signum, _frame) -> None:
        logger.info("received signal %d, stopping the emulator", signum)
        server.stop.set()

    previous = {
        sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        print(f"port: {server.url}", file=stdout, flush=True)
        server.serve()
        # The handlers stay installed while the state is written, so a second
        # SIGINT does not cut the write short.
        if state_out is not None:
            digest = write_state(server.device.physics, state_out)
            print(f"state: {state_out} sha256={digest}", file=stdout, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def write_state(physics: ArrayPhysics, path: Path) -> str:
    """Write the physics' `state_arrays` to `path` as .npz atomically.

    Returns:
        The `state_digest` of the arrays written.

    Raises:
        BackendError: The file could not be written.
    """
    arrays = physics.state_arrays()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        raise BackendError(
            f"failed to write the emulator state to {path}: {err}. Check that its "
            "folder exists and is writable"
        ) from err
    logger.info("wrote the state of %d tiles to %s", len(arrays["tiles"]), path)
    return state_digest(arrays)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the emulator from parsed `add_emulate_arguments` options."""
    faults = FaultSettings(
        corrupt_rate=args.corrupt_rate,
        drop_rate=args.drop_rate,
        delay_s=args.delay_s,
        reset_after_frames=args.reset_after_frames,
    )
    return run_emulator(
        args.profile, seed=args.seed, tiles=args.tiles, transport=args.transport,
        port=args.port, faults=faults, state_out=args.state_out,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m backends.emulator --profile NAME [options]`."""
    parser = add_emulate_arguments(
        argparse.ArgumentParser(prog="memdeploy emulate", description=__doc__)
    )
    return run_from_args(parser.parse_args(argv))

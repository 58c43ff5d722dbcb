"""`memdeploy emulate`: run an emulated array in the foreground until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from backends.emulator.faults import FaultSettings
from backends.emulator.server import DEFAULT_TILES, build_server

logger = logging.getLogger(__name__)


def add_emulate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `memdeploy emulate` to a parser (or a subcommand's)."""
    parser.add_argument("--profile", required=True, help="device profile name or path")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of stuck map and noise"
    )
    parser.add_argument(
        "--tiles", type=int, default=DEFAULT_TILES, help="number of tiles of the array"
    )
    parser.add_argument(
        "--corrupt-rate", type=float, default=0.0,
        help="fraction of bytes altered in each direction (0 to 1)",
    )  # fmt: skip
    parser.add_argument(
        "--drop-rate", type=float, default=0.0,
        help="fraction of frames lost in each direction (0 to 1)",
    )  # fmt: skip
    parser.add_argument(
        "--delay-s", type=float, default=0.0, help="delay of every reply, in s"
    )
    parser.add_argument(
        "--reset-after-frames", type=int, default=None, metavar="N",
        help="reset the device once, while it receives frame N + 1",
    )  # fmt: skip
    parser.add_argument(
        "--transport", choices=("pty", "socket"), default="pty",
        help="serve on a pseudo-terminal or on a loopback TCP socket",
    )  # fmt: skip
    return parser


def run_emulator(
    profile_name: str,
    *,
    seed: int = 0,
    tiles: int = DEFAULT_TILES,
    transport: str = "pty",
    faults: FaultSettings | None = None,
    stdout=None,
) -> int:
    """Serve an emulated array until SIGINT or SIGTERM; print `port: URL` first.

    Returns:
        The exit status, 0.
    """
    stdout = stdout or sys.stdout
    server = build_server(
        profile_name, seed=seed, tiles=tiles, transport=transport, faults=faults
    )

    def request_stop(signum, _frame) -> None:
        logger.info("received signal %d, stopping the emulator", signum)
        server.stop.set()

    previous = {
        sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        print(f"port: {server.url}", file=stdout, flush=True)
        server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


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
        faults=faults,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m backends.emulator --profile NAME [options]`."""
    parser = add_emulate_arguments(
        argparse.ArgumentParser(prog="memdeploy emulate", description=__doc__)
    )
    return run_from_args(parser.parse_args(argv))

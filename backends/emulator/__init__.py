"""An emulated crossbar array that speaks the serial array protocol.

It serves on a pseudo-terminal or a loopback socket. The physics of a device profile
(`physics`) sits behind the protocol of docs/serial-protocol.md (`device`), with
optional link faults in between (`faults`). So the serial backend runs end to end
without hardware.
"""

from backends.emulator.cli import (
    add_emulate_arguments,
    main,
    run_emulator,
    run_from_args,
)
from backends.emulator.faults import FaultSettings
from backends.emulator.server import EmulatorHandle, build_server, start_emulator

__all__ = [
    "EmulatorHandle",
    "FaultSettings",
    "add_emulate_arguments",
    "build_server",
    "main",
    "run_emulator",
    "run_from_args",
    "start_emulator",
]

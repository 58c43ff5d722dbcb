"""The emulator's serving loop: bytes from a transport through faults to the device.

Tests use `start_emulator`, which runs the loop in a thread and returns a handle with
the URL to give the serial backend. `memdeploy emulate` runs the same loop in the
foreground.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from backends.emulator.device import EmulatedDevice
from backends.emulator.faults import FaultInjector, FaultSettings
from backends.emulator.physics import ArrayPhysics
from backends.emulator.transport import open_transport
from backends.serial_protocol import FRAME_GAP_S, FrameError
from memdeploy.errors import BackendError
from memdeploy.profiles import DeviceProfile, load_profile

logger = logging.getLogger(__name__)

DEFAULT_TILES = 8
POLL_S = 0.01
"""How often the loop checks for a stop request and a stalled frame, in s."""


class EmulatorServer:
    """Serves one emulated device on one transport until `stop` is set.

    Args:
        device: The device that replies to frames.
        transport: A `PtyTransport` or `SocketTransport`.
        faults: Faults injected between the transport and the device.
    """

    def __init__(
        self, device: EmulatedDevice, transport, faults: FaultInjector
    ) -> None:
        self.device = device
        self.transport = transport
        self.faults = faults
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        """pyserial URL of the transport."""
        return self.transport.url

    def serve(self) -> None:
        """Reply to frames until `stop` is set, then close the transport."""
        logger.info("emulated array serving on %s", self.url)
        last_byte = time.monotonic()
        try:
            while not self.stop.is_set():
                data = self.transport.read(POLL_S)
                if data:
                    last_byte = time.monotonic()
                    self._receive(self.faults.corrupt(data))
                elif self._stalled(last_byte):
                    self.device.drop_partial_frame()
                    self._answer(FrameError("partial frame without delimiter", 0))
        finally:
            self.transport.close()
            logger.info("emulated array on %s stopped", self.url)

    def _stalled(self, last_byte: float) -> bool:
        pending = self.device.pending_bytes
        return pending > 0 and time.monotonic() - last_byte > FRAME_GAP_S

    def _receive(self, data: bytes) -> None:
        for item in self.device.feed(data):
            if self.faults.reset_now():
                # The rest of this read was in flight when the device went down.
                self.device.reset()
                return
            if self.faults.drop():
                logger.debug("dropping a received frame")
                continue
            self._answer(item)

    def _answer(self, item) -> None:
        wire = self.device.handle(item)
        if wire is None:
            return
        if self.faults.drop():
            logger.debug("dropping a reply")
            return
        self._send(wire)

    def _send(self, wire: bytes) -> None:
        delay = self.faults.settings.delay_s
        if delay > 0 and self.stop.wait(delay):
            return
        self.transport.write(self.faults.corrupt(wire))


class EmulatorHandle:
    """An emulator running in a background thread; a context manager that stops it."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve, name=f"emulator {server.url}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """pyserial URL to give the serial backend."""
        return self.server.url

    @property
    def device(self) -> EmulatedDevice:
        """The emulated device, for inspecting its state in tests."""
        return self.server.device

    def stop(self) -> None:
        """Stop the thread and close the transport. Safe to call twice."""
        self.server.stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def build_server(
    profile: str | DeviceProfile,
    *,
    seed: int = 0,
    tiles: int = DEFAULT_TILES,
    transport: str = "pty",
    port: int = 0,
    faults: FaultSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> EmulatorServer:
    """Create an emulated device for a profile, listening on a new transport.

    `port` is the loopback TCP port of the `socket` transport; 0 picks a free one.
    """
    profile = load_profile(profile)
    if tiles < 1:
        raise ValueError(f"tiles must be at least 1, got {tiles}")
    physics = ArrayPhysics(profile, tiles=tiles, seed=seed, clock=clock)
    device = EmulatedDevice(physics, device_id=f"emulator:{profile.name}:seed{seed}")
    injector = FaultInjector(faults or FaultSettings(), seed=seed)
    try:
        stream = open_transport(transport, port)
    except OSError as err:
        raise BackendError(
            f"emulator cannot listen on {transport} port {port}: {err}; choose another "
            "port, or 0 for a free one"
        ) from err
    return EmulatorServer(device, stream, injector)


def start_emulator(profile: str | DeviceProfile, **options) -> EmulatorHandle:
    """Start an emulator in a thread; options are those of `build_server`.

    >>> with start_emulator("lab-array-32x32", transport="socket") as emulator:
    ...     emulator.url.startswith("socket://127.0.0.1:")
    True
    """
    return EmulatorHandle(build_server(profile, **options))

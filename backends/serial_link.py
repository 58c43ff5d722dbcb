"""Host side of the serial array protocol's link: stop-and-wait exchanges with retries.

`SerialLink` sends one request at a time over a pyserial port and waits for the reply
with the same sequence number. It resends the identical frame on a timeout, a NAK or
a corrupted reply, so the device can recognise the resend and replay its stored reply
instead of executing the command again. It also keeps the payload budget that sizes
requests to the link's quality.
"""

from __future__ import annotations

import logging
import os
import time

from backends.serial_commands import Command, Status
from backends.serial_errors import (
    DeviceStatusError,
    LinkTimeoutError,
    PortFailedError,
)
from backends.serial_port import POLL_S
from backends.serial_protocol import (
    DELIMITER,
    FRAME_GAP_S,
    MAX_PAYLOAD,
    REPLY_BIT,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
)

logger = logging.getLogger(__name__)

STATUS_ADVICE = {
    Status.UNKNOWN_COMMAND: "the firmware does not implement it; update the firmware",
    Status.BAD_LENGTH: "host and firmware disagree on the layout; check both versions",
    Status.BAD_ADDRESS: "a tile, row or column is outside the array",
    Status.NO_TILE_SELECTED: "the device lost its tile selection, probably in a reset",
    Status.BAD_VALUE: "a target, tolerance, pulse count or voltage is out of range",
    Status.VERSION_MISMATCH: "upgrade memdeploy or the firmware",
    Status.REPLY_TOO_LARGE: "the reply exceeds the device's max payload",
    Status.DEVICE_FAULT: "the device failed internally; check it and reset it",
}


class PayloadBudget:
    """Largest payload in bytes a request or reply should carry on this link.

    It halves after every failed attempt and grows by an eighth after every clean
    exchange, which settles where about 85% of first attempts get through: a noisy
    link gets short frames that still pass, a clean one keeps the maximum.
    """

    def __init__(self, maximum: int = MAX_PAYLOAD, minimum: int = 16) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.current = maximum

    def failed(self) -> None:
        self.current = max(self.minimum, self.current // 2)

    def succeeded(self) -> None:
        self.current = min(self.maximum, self.current + max(1, self.current // 8))


class SerialLink:
    """Request-reply exchanges over an open pyserial port.

    A request is resent after a timeout, a NAK or a corrupted reply. The link gives up
    after `retries` resends that followed timeouts, since silence means the device or
    the cable is gone, or after `NOISE_RESENDS_PER_RETRY x (retries + 1)` resends in
    all, since NAKs and corrupted replies show a live but noisy link.

    When the port itself fails (a USB adapter unplugged, a socket closed by the
    device), the link closes it, waits `timeout_s` and opens it again, up to `retries`
    times for one request, then resends the request. `reopens` counts the successful
    reopenings, so that the backend can tell that the device may have restarted.

    Args:
        port: An open pyserial port whose read timeout is short (POLL_S).
        timeout_s: Wait for a reply before resending, in s.
        retries: Resends after timeouts before giving up.
        name: The port's URL, for messages.
    """

    NOISE_RESENDS_PER_RETRY = 8

    def __init__(self, port, *, timeout_s: float, retries: int, name: str) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.retries = retries
        self.name = name
        self.budget = PayloadBudget()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.resends = 0
        self.reopens = 0
        self._decoder = FrameDecoder()
        self._seq = int.from_bytes(os.urandom(2), "little")

    def request(
        self, command: Command, payload: bytes = b"", *, check: bool = True
    ) -> Frame:
        """Send a request and return its reply.

        Raises:
            DeviceStatusError: The reply's status is not OK (unless `check` is False).
            LinkTimeoutError: No valid reply arrived within the resend limits.
            PortFailedError: The port failed and could not be opened again.
        """
        self._seq = (self._seq + 1) % 65536
        wire = encode_frame(Frame(int(command), 0, self._seq, payload))
        max_attempts = self.NOISE_RESENDS_PER_RETRY * (self.retries + 1)
        timeouts, attempts, problem = 0, 0, "no reply"

        while timeouts <= self.retries and attempts < max_attempts:
            try:
                # The leading delimiter ends any partial frame the device still holds.
                self._write(wire if attempts == 0 else DELIMITER + wire)
                reply, problem = self._await_reply(command, self._seq)
            except OSError as err:  # pyserial's SerialException is an OSError
                self._reopen(command, err)
                reply, problem = None, f"port failed ({err})"
            if reply is not None:
                self._account(attempts)
                return self.check_status(command, reply) if check else reply
            attempts += 1
            timeouts += problem.startswith(("timed out", "port failed"))
            self.budget.failed()
            self.resends += 1
            logger.debug("%s seq %d: %s, resending", command.name, self._seq, problem)

        raise LinkTimeoutError(
            f"no valid reply to {command.name} (seq {self._seq}) on {self.name} after "
            f"{attempts} attempts, {timeouts} of them timed out after {self.timeout_s} "
            f"s (last problem: {problem}); check the port, the baud rate and the "
            "device, or raise the timeout or retries options",
            status=Status.FRAME_ERROR if "NAK" in problem else None,
            command=command.name,
        )

    def _reopen(self, command: Command, error: OSError) -> None:
        """Close the failed port and open it again, or raise after `retries` tries."""
        logger.warning(
            "port %s failed during %s (%s); opening it again, %d tries %g s apart",
            self.name, command.name, error, self.retries, self.timeout_s,
        )  # fmt: skip
        self._decoder.reset()
        last = error
        for _ in range(self.retries):
            time.sleep(self.timeout_s)
            try:
                self.port.close()
                self.port.open()
            except OSError as err:
                last = err
                logger.warning("opening %s again failed: %s", self.name, err)
                continue
            self.reopens += 1
            logger.warning(
                "port %s is open again; resending %s", self.name, command.name
            )
            return
        raise PortFailedError(
            f"port {self.name} failed during {command.name} ({error}) and could not be "
            f"opened again in {self.retries} tries {self.timeout_s} s apart (last "
            f"error: {last}); check that the device is powered and connected, then "
            "retry",
            command=command.name,
        )

    def _account(self, attempt: int) -> None:
        if attempt == 0:
            self.budget.succeeded()

    def _write(self, data: bytes) -> None:
        self.port.write(data)
        self.bytes_sent += len(data)

    def _await_reply(self, command: Command, seq: int) -> tuple[Frame | None, str]:
        deadline = time.monotonic() + self.timeout_s
        last_byte = time.monotonic()
        while time.monotonic() < deadline:
            data = self._read_available()
            now = time.monotonic()
            if not data:
                # A partial frame followed by silence lost its delimiter.
                if self._decoder.pending and now - last_byte > FRAME_GAP_S:
                    self._decoder.reset()
                    return None, "corrupted reply (no delimiter)"
                continue
            last_byte = now
            self.bytes_received += len(data)
            reply, problem = self._match(self._decoder.feed(data), command, seq)
            if reply is not None or problem:
                return reply, problem
        return None, f"timed out after {self.timeout_s} s"

    def _read_available(self) -> bytes:
        """Wait up to POLL_S for a byte, then take every byte already received."""
        data = self.port.read(1)
        if not data:
            return data
        # pyserial's socket:// port reports 1 byte waiting however many there are,
        # so the rest is read with a zero timeout instead of by `in_waiting`.
        self.port.timeout = 0
        try:
            return data + self.port.read(65536)
        finally:
            self.port.timeout = POLL_S

    @staticmethod
    def _match(items, command: Command, seq: int) -> tuple[Frame | None, str]:
        """Pick the reply from decoded items, or name why the request must be resent."""
        problem = ""
        for item in items:
            if isinstance(item, FrameError):
                problem = f"corrupted reply ({item.reason})"
            elif item.is_nak:
                problem = "NAK: the device received a corrupted frame"
            elif item.command == int(command) | REPLY_BIT and item.seq == seq:
                return item, ""
            else:
                logger.debug(
                    "discarding late reply 0x%02X seq %d", item.command, item.seq
                )
        return None, problem

    def check_status(self, command: Command, reply: Frame) -> Frame:
        """Return an OK reply; raise DeviceStatusError with advice for any other."""
        if reply.status == Status.OK:
            return reply
        try:
            status = Status(reply.status)
            name = status.name
        except ValueError:
            status, name = None, "an unknown status"
        advice = STATUS_ADVICE.get(status, "see the protocol's status table")
        raise DeviceStatusError(
            f"device on {self.name} replied to {command.name} with {name} "
            f"(0x{reply.status:02X}): {advice}",
            status=reply.status,
            command=command.name,
        )

    @property
    def link_bytes(self) -> int:
        """Bytes sent and received so far."""
        return self.bytes_sent + self.bytes_received

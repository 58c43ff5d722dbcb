"""Errors of the serial array backend; each carries the device's status code."""

from __future__ import annotations

from memdeploy.errors import BackendError


class SerialLinkError(BackendError):
    """An exchange with the array failed.

    Attributes:
        status: The status code the device sent last (see the protocol's status
            table), or None when no reply arrived at all.
        command: Name of the command that failed, such as "PROGRAM".
    """

    def __init__(self, message: str, *, status: int | None = None, command: str = ""):
        super().__init__(message)
        self.status = status
        self.command = command


class DeviceStatusError(SerialLinkError):
    """The device rejected a command with a status other than OK."""


class LinkTimeoutError(SerialLinkError, TimeoutError):
    """No valid reply arrived within the timeout, after every retry."""


class PortFailedError(SerialLinkError):
    """The port itself failed (device unplugged or powered off, socket closed) and
    could not be opened again within the retries."""


class MalformedReplyError(SerialLinkError):
    """A reply passed its CRC check but its payload does not fit its command."""


class ArrayCapacityError(BackendError, ValueError):
    """The model's layers do not fit on the array's tiles."""

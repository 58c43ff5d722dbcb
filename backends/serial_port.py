"""Opening the serial backend's port, and parsing its string options."""

from __future__ import annotations

from backends.serial_errors import SerialLinkError
from memdeploy.errors import BackendUnavailableError

POLL_S = 0.02
"""Port read timeout in s: how often a wait for a reply checks its deadline."""


def open_port(url: str, baudrate: int, parity: str):
    """Open any pyserial URL (device path, socket://, loop://, spy://) for polling.

    Raises:
        BackendUnavailableError: pyserial is not installed.
        SerialLinkError: The port cannot be opened.
    """
    try:
        import serial
    except ImportError as err:
        raise BackendUnavailableError(
            "the serial backend needs pyserial: pip install pyserial"
        ) from err
    try:
        return serial.serial_for_url(
            url, baudrate=baudrate, parity=parity, timeout=POLL_S
        )
    except (serial.SerialException, ValueError) as err:
        raise SerialLinkError(
            f"cannot open serial port {url!r}: {err}; check the path or URL, or start "
            "`memdeploy emulate` and use the port it prints"
        ) from err


def positive_int(text: str) -> int:
    """Parse an option that is an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer of 1 or more, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """Parse an option that is an integer of 0 or more."""
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer of 0 or more, got {text!r}")
    return value


def u16_count(text: str) -> int:
    """Parse an option sent as a u16 count of 1 or more (such as max_pulses)."""
    value = positive_int(text)
    if value > 0xFFFF:
        raise ValueError(f"expected an integer from 1 to 65535, got {text!r}")
    return value


def bits_per_byte(parity: str) -> int:
    """Bit times of one byte on the UART: start, 8 data, parity if any, 1 stop."""
    return 10 if parity == "N" else 11


def parse_mode(text: str) -> str:
    """Parse the `mode` option: onchip or readback."""
    if text not in ("onchip", "readback"):
        raise ValueError(f"expected onchip or readback, got {text!r}")
    return text


def parse_flag(text: str) -> bool:
    """Parse a 0 or 1 option."""
    if text not in ("0", "1"):
        raise ValueError(f"expected 0 or 1, got {text!r}")
    return text == "1"


def parse_parity(text: str) -> str:
    """Parse the `parity` option: N, E or O, in either case."""
    if text.upper() not in ("N", "E", "O"):
        raise ValueError(f"expected N, E or O, got {text!r}")
    return text.upper()

"""Command and status codes of the serial array protocol, and their payloads.

Every payload type has `encode()` and a `decode(payload)` class method, used by the
host for requests and by a device (the emulator) for replies, and the other way round.
Layouts are those of docs/serial-protocol.md: little-endian integers, float32 values
in µS, V and µA.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

CELL_DTYPE = np.dtype([("row", "<u2"), ("col", "<u2"), ("target_us", "<f4")])
RECORD_DTYPE = np.dtype([("index", "<u2"), ("flags", "u1"), ("achieved_us", "<f4")])
FLAG_VERIFIED, FLAG_STUCK, FLAG_WORN = 0x01, 0x02, 0x04
NO_TILE = 0xFFFF


class Command(IntEnum):
    """Command codes; a reply carries `code | 0x80`."""

    HELLO = 0x01
    STATUS = 0x02
    SELECT_TILE = 0x03
    PROGRAM = 0x04
    READ = 0x05
    MVM = 0x06
    STUCK_MAP = 0x07
    RESET = 0x08


class Status(IntEnum):
    """Status codes of a reply."""

    OK = 0x00
    FRAME_ERROR = 0x01
    UNKNOWN_COMMAND = 0x02
    BAD_LENGTH = 0x03
    BAD_ADDRESS = 0x04
    NO_TILE_SELECTED = 0x05
    BAD_VALUE = 0x06
    VERSION_MISMATCH = 0x07
    REPLY_TOO_LARGE = 0x08
    DEVICE_FAULT = 0x09


class PayloadError(ValueError):
    """A payload's length or layout does not match its command."""


def _unpack(layout: struct.Struct, payload: bytes, description: str) -> tuple:
    if len(payload) != layout.size:
        raise PayloadError(
            f"{description} payload has {len(payload)} bytes, expected {layout.size}"
        )
    return layout.unpack(payload)


def _array(payload: bytes, dtype, description: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if len(payload) % dtype.itemsize:
        raise PayloadError(
            f"{description} payload of {len(payload)} bytes is not a whole number of "
            f"{dtype.itemsize}-byte values"
        )
    return np.frombuffer(payload, dtype=dtype).copy()


_HELLO_REQUEST = struct.Struct("<BB")


def encode_hello_request(major: int, minor: int) -> bytes:
    """Encode HELLO's request: the protocol version the host speaks."""
    return _HELLO_REQUEST.pack(major, minor)


def decode_hello_request(payload: bytes) -> tuple[int, int]:
    """Decode HELLO's request into (major, minor)."""
    return _unpack(_HELLO_REQUEST, payload, "HELLO request")


@dataclass(frozen=True)
class DeviceInfo:
    """The device's HELLO reply: versions, geometry and limits."""

    major: int
    minor: int
    max_payload: int
    tiles: int
    rows: int
    cols: int
    levels: int
    g_min_us: float
    """Lowest programmable conductance in µS."""

    g_max_us: float
    """Highest programmable conductance in µS."""

    v_read_v: float
    """Largest read voltage MVM accepts, in V."""

    boot_id: int
    device_id: str
    firmware: str

    _FIXED = struct.Struct("<BBHHHHHfffI")

    def encode(self) -> bytes:
        fixed = self._FIXED.pack(
            self.major, self.minor, self.max_payload, self.tiles, self.rows,
            self.cols, self.levels, self.g_min_us, self.g_max_us, self.v_read_v,
            self.boot_id,
        )  # fmt: skip
        return fixed + _pack_text(self.device_id) + _pack_text(self.firmware)

    @classmethod
    def decode(cls, payload: bytes) -> DeviceInfo:
        size = cls._FIXED.size
        if len(payload) < size:
            raise PayloadError(
                f"HELLO reply has {len(payload)} bytes, expected {size}+"
            )
        fields = cls._FIXED.unpack_from(payload)
        device_id, offset = _unpack_text(payload, size)
        firmware, _ = _unpack_text(payload, offset)
        return cls(*fields, device_id=device_id, firmware=firmware)


def _pack_text(text: str) -> bytes:
    data = text.encode("ascii", errors="replace")[:64]
    return bytes([len(data)]) + data


def _unpack_text(payload: bytes, offset: int) -> tuple[str, int]:
    if offset >= len(payload) or offset + 1 + payload[offset] > len(payload):
        raise PayloadError(f"HELLO reply ends inside a text field at byte {offset}")
    end = offset + 1 + payload[offset]
    return payload[offset + 1 : end].decode("ascii", errors="replace"), end


@dataclass(frozen=True)
class DeviceStatus:
    """The device's STATUS reply."""

    boot_id: int
    selected_tile: int
    """Selected tile, or NO_TILE (0xFFFF)."""

    frames_ok: int
    frames_bad: int
    replays: int
    pulses_total: int
    resets: int
    flags: int

    _LAYOUT = struct.Struct("<IHIIIQIB")

    def encode(self) -> bytes:
        return self._LAYOUT.pack(
            self.boot_id, self.selected_tile, self.frames_ok, self.frames_bad,
            self.replays, self.pulses_total, self.resets, self.flags,
        )  # fmt: skip

    @classmethod
    def decode(cls, payload: bytes) -> DeviceStatus:
        return cls(*_unpack(cls._LAYOUT, payload, "STATUS reply"))


_TILE = struct.Struct("<H")


def encode_tile(tile: int) -> bytes:
    """Encode SELECT_TILE's request."""
    return _TILE.pack(tile)


def decode_tile(payload: bytes) -> int:
    """Decode SELECT_TILE's request."""
    return _unpack(_TILE, payload, "SELECT_TILE request")[0]


@dataclass(frozen=True)
class Rect:
    """A rectangle of cells in a tile, the request of READ and STUCK_MAP."""

    row0: int
    col0: int
    rows: int
    cols: int

    _LAYOUT = struct.Struct("<HHHH")

    @property
    def cells(self) -> int:
        """Cells covered."""
        return self.rows * self.cols

    def encode(self) -> bytes:
        return self._LAYOUT.pack(self.row0, self.col0, self.rows, self.cols)

    @classmethod
    def decode(cls, payload: bytes) -> Rect:
        return cls(*_unpack(cls._LAYOUT, payload, "rectangle"))


def decode_conductances(payload: bytes, rect: Rect) -> np.ndarray:
    """Decode READ's reply into a (rows, cols) float32 array in µS."""
    values = _array(payload, "<f4", "READ reply")
    if values.size != rect.cells:
        raise PayloadError(
            f"READ reply has {values.size} values, expected {rect.cells}"
        )
    return values.reshape(rect.rows, rect.cols)


def decode_stuck_map(payload: bytes, rect: Rect) -> np.ndarray:
    """Decode STUCK_MAP's reply into a (rows, cols) uint8 array of codes 0, 1, 2."""
    codes = _array(payload, "u1", "STUCK_MAP reply")
    if codes.size != rect.cells:
        raise PayloadError(
            f"STUCK_MAP reply has {codes.size} codes, expected {rect.cells}"
        )
    return codes.reshape(rect.rows, rect.cols)

"""Framing of the serial array protocol: COBS-encoded frames with a CRC-32.

A frame body is a 6-byte header (command, status, sequence number, payload length),
the payload and the CRC-32 of both, little-endian. On the wire the body is COBS
encoded and ends with a 0x00 delimiter, so a receiver finds the next frame boundary
after any corrupted or lost byte. docs/serial-protocol.md specifies the format.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass

from cobs import cobs

logger = logging.getLogger(__name__)

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0
DELIMITER = b"\x00"
MAX_PAYLOAD = 4096
"""Largest payload in bytes that any device of this protocol version accepts."""

FRAME_GAP_S = 0.05
"""Silence in s inside a frame after which a receiver drops the partial frame."""

REPLY_BIT = 0x80
NAK_COMMAND = 0xFF
FRAME_ERROR_STATUS = 0x01

_HEADER = struct.Struct("<BBHH")
_CRC = struct.Struct("<I")
_OVERHEAD = _HEADER.size + _CRC.size
MAX_BODY = MAX_PAYLOAD + _OVERHEAD
MAX_ENCODED = MAX_BODY + -(-MAX_BODY // 254)
"""Longest COBS-encoded frame, without its delimiter: COBS adds one byte per 254."""


@dataclass(frozen=True)
class Frame:
    """One request or reply of the protocol."""

    command: int
    """Command code; a reply has bit 7 set (`command | 0x80`), a NAK is 0xFF."""

    status: int
    """0 in a request; the status code in a reply."""

    seq: int
    """Sequence number, 0 to 65535; a reply carries its request's."""

    payload: bytes = b""

    @property
    def is_reply(self) -> bool:
        """True for a reply (bit 7 of the command set), NAKs included."""
        return bool(self.command & REPLY_BIT)

    @property
    def is_nak(self) -> bool:
        """True for the device's reply to a frame that failed its checks."""
        return self.command == NAK_COMMAND


@dataclass(frozen=True)
class FrameError:
    """Bytes between two delimiters that do not form a valid frame."""

    reason: str
    size: int
    """Encoded bytes the bad frame took on the wire."""


def encode_body(frame: Frame) -> bytes:
    """Build a frame's body: header, payload and CRC-32, before COBS encoding."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(
            f"payload of {len(frame.payload)} bytes exceeds the protocol's maximum of "
            f"{MAX_PAYLOAD} bytes: split the request into smaller blocks"
        )
    header = _HEADER.pack(frame.command, frame.status, frame.seq, len(frame.payload))
    data = header + frame.payload
    return data + _CRC.pack(zlib.crc32(data))


def encode_frame(frame: Frame) -> bytes:
    """Encode a frame for the wire, delimiter included.

    >>> encode_frame(Frame(command=0x02, status=0, seq=1)).hex(" ")
    '02 02 02 01 01 01 05 cd 67 b6 44 00'
    """
    return cobs.encode(encode_body(frame)) + DELIMITER


def decode_body(body: bytes) -> Frame | FrameError:
    """Check and split a decoded body; a bad one gives a FrameError, never raises."""
    if len(body) < _OVERHEAD:
        return FrameError(f"frame of {len(body)} bytes is shorter than 10", len(body))
    command, status, seq, length = _HEADER.unpack_from(body)
    if length != len(body) - _OVERHEAD:
        return FrameError(
            f"length field {length} does not match payload of "
            f"{len(body) - _OVERHEAD} bytes",
            len(body),
        )
    (crc,) = _CRC.unpack_from(body, len(body) - _CRC.size)
    if crc != zlib.crc32(body[: -_CRC.size]):
        return FrameError(f"CRC mismatch in frame with seq {seq}", len(body))
    return Frame(command, status, seq, bytes(body[_HEADER.size : -_CRC.size]))


class FrameDecoder:
    """Split a byte stream into frames at 0x00 delimiters.

    Feed it bytes as they arrive. It returns every frame those bytes complete: a
    `Frame`, or a `FrameError` for bytes that fail COBS decoding, length or CRC
    checks. Empty frames (two delimiters in a row) are skipped. Arbitrary input never
    raises, which a property test of the parser checks.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overflow = False

    def reset(self) -> None:
        """Drop a partly received frame."""
        self._buffer.clear()
        self._overflow = False

    @property
    def pending(self) -> int:
        """Bytes of a frame received so far, without its delimiter."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Add received bytes; return the frames and errors they complete."""
        results: list[Frame | FrameError] = []
        *complete, tail = bytes(data).split(DELIMITER)
        for chunk in complete:
            self._append(chunk)
            result = self._finish()
            if result is not None:
                results.append(result)
        self._append(tail)
        return results

    def _append(self, chunk: bytes) -> None:
        # Only the length of an oversized frame matters, so its bytes are not kept.
        if self._overflow or len(self._buffer) + len(chunk) > MAX_ENCODED:
            self._overflow = True
            self._buffer.clear()
            return
        self._buffer += chunk

    def _finish(self) -> Frame | FrameError | None:
        encoded = bytes(self._buffer)
        overflow = self._overflow
        self.reset()
        if overflow:
            return FrameError(f"frame longer than {MAX_ENCODED} bytes", MAX_ENCODED)
        if not encoded:
            return None
        try:
            body = cobs.decode(encoded)
        except cobs.DecodeError as err:
            return FrameError(f"COBS decoding failed: {err}", len(encoded))
        result = decode_body(body)
        if isinstance(result, FrameError):
            return FrameError(result.reason, len(encoded))
        return result


def nak_frame() -> Frame:
    """Return the frame a device sends for a frame that failed its checks."""
    return Frame(command=NAK_COMMAND, status=FRAME_ERROR_STATUS, seq=0)

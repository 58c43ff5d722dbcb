"""Payloads of the protocol's bulk commands: PROGRAM and MVM.

Cell blocks and vector batches travel as packed little-endian records, built and
parsed with numpy structured arrays (docs/serial-protocol.md gives the layouts).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from backends.serial_commands import CELL_DTYPE, RECORD_DTYPE, PayloadError

REPLY_SUMMARY, REPLY_ALL_CELLS = 0, 1
_PROGRAM_HEAD = struct.Struct("<BBHfH")
_PROGRAM_SUMMARY = struct.Struct("<HHIHH")
_MVM_HEAD = struct.Struct("<HHHHH")
_MVM_REPLY_HEAD = struct.Struct("<HH")

PROGRAM_REQUEST_BYTES = (_PROGRAM_HEAD.size, CELL_DTYPE.itemsize)
"""Fixed bytes and bytes per cell of a PROGRAM request."""

PROGRAM_REPLY_BYTES = (_PROGRAM_SUMMARY.size, RECORD_DTYPE.itemsize)
"""Fixed bytes and bytes per listed cell of a PROGRAM reply."""

MVM_REQUEST_HEAD = _MVM_HEAD.size
MVM_REPLY_HEAD = _MVM_REPLY_HEAD.size


@dataclass(frozen=True)
class ProgramRequest:
    """A block of cells to write-verify in the selected tile."""

    cells: np.ndarray
    """Structured array of CELL_DTYPE: row, col and target conductance in µS."""

    tolerance_us: float
    """Verify tolerance in µS."""

    max_pulses: int
    reply_mode: int = REPLY_SUMMARY

    def encode(self) -> bytes:
        head = _PROGRAM_HEAD.pack(
            self.reply_mode, 0, self.max_pulses, self.tolerance_us, len(self.cells)
        )
        return head + np.ascontiguousarray(self.cells, dtype=CELL_DTYPE).tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> ProgramRequest:
        if len(payload) < _PROGRAM_HEAD.size:
            raise PayloadError(f"PROGRAM request of {len(payload)} bytes has no header")
        mode, _, max_pulses, tolerance, count = _PROGRAM_HEAD.unpack_from(payload)
        expected = _PROGRAM_HEAD.size + count * CELL_DTYPE.itemsize
        if len(payload) != expected:
            raise PayloadError(
                f"PROGRAM request for {count} cells has {len(payload)} bytes, "
                f"expected {expected}"
            )
        cells = np.frombuffer(payload, CELL_DTYPE, offset=_PROGRAM_HEAD.size).copy()
        return cls(cells, tolerance, max_pulses, mode)


def make_cells(rows, cols, targets_us) -> np.ndarray:
    """Pack cell addresses and target conductances (µS) into a CELL_DTYPE array."""
    cells = np.empty(len(targets_us), dtype=CELL_DTYPE)
    cells["row"] = rows
    cells["col"] = cols
    cells["target_us"] = targets_us
    return cells


@dataclass(frozen=True)
class ProgramReply:
    """Outcome of a PROGRAM command."""

    count: int
    verified: int
    pulses: int
    rounds: int
    records: np.ndarray
    """Structured array of RECORD_DTYPE: index in the request, flags, last read µS."""

    def encode(self) -> bytes:
        head = _PROGRAM_SUMMARY.pack(
            self.count, self.verified, self.pulses, self.rounds, len(self.records)
        )
        return head + np.ascontiguousarray(self.records, dtype=RECORD_DTYPE).tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> ProgramReply:
        if len(payload) < _PROGRAM_SUMMARY.size:
            raise PayloadError(f"PROGRAM reply of {len(payload)} bytes has no summary")
        count, verified, pulses, rounds, listed = _PROGRAM_SUMMARY.unpack_from(payload)
        expected = _PROGRAM_SUMMARY.size + listed * RECORD_DTYPE.itemsize
        if len(payload) != expected:
            raise PayloadError(
                f"PROGRAM reply listing {listed} cells has {len(payload)} bytes, "
                f"expected {expected}"
            )
        offset = _PROGRAM_SUMMARY.size
        records = np.frombuffer(payload, RECORD_DTYPE, offset=offset).copy()
        return cls(count, verified, pulses, rounds, records)


@dataclass(frozen=True)
class MvmRequest:
    """A batch of input vectors for word lines `row0..` read on bit lines `col0..`."""

    row0: int
    col0: int
    cols: int
    voltages_v: np.ndarray
    """Read voltages in V, shape (batch, rows)."""

    def encode(self) -> bytes:
        batch, rows = self.voltages_v.shape
        head = _MVM_HEAD.pack(self.row0, rows, self.col0, self.cols, batch)
        return head + np.ascontiguousarray(self.voltages_v, dtype="<f4").tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> MvmRequest:
        if len(payload) < _MVM_HEAD.size:
            raise PayloadError(f"MVM request of {len(payload)} bytes has no header")
        row0, rows, col0, cols, batch = _MVM_HEAD.unpack_from(payload)
        expected = _MVM_HEAD.size + 4 * batch * rows
        if len(payload) != expected:
            raise PayloadError(
                f"MVM request of {batch} x {rows} voltages has {len(payload)} bytes, "
                f"expected {expected}"
            )
        voltages = np.frombuffer(payload, "<f4", offset=_MVM_HEAD.size).copy()
        return cls(row0, col0, cols, voltages.reshape(batch, rows))


def encode_currents(currents_ua: np.ndarray) -> bytes:
    """Encode MVM's reply from currents in µA of shape (batch, cols)."""
    batch, cols = currents_ua.shape
    data = np.ascontiguousarray(currents_ua, dtype="<f4").tobytes()
    return _MVM_REPLY_HEAD.pack(batch, cols) + data


def decode_currents(payload: bytes) -> np.ndarray:
    """Decode MVM's reply into currents in µA of shape (batch, cols)."""
    if len(payload) < _MVM_REPLY_HEAD.size:
        raise PayloadError(f"MVM reply of {len(payload)} bytes has no header")
    batch, cols = _MVM_REPLY_HEAD.unpack_from(payload)
    expected = _MVM_REPLY_HEAD.size + 4 * batch * cols
    if len(payload) != expected:
        raise PayloadError(
            f"MVM reply of {batch} x {cols} currents has {len(payload)} bytes, "
            f"expected {expected}"
        )
    currents = np.frombuffer(payload, "<f4", offset=_MVM_REPLY_HEAD.size).copy()
    return currents.reshape(batch, cols)

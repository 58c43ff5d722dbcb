"""The array's commands as host-side calls, split into frames that fit the link.

`ArrayClient` splits PROGRAM, READ, STUCK_MAP and MVM on any number of cells or
vectors into requests no larger than the link's payload budget. It selects tiles as
needed, and selects again when the device reports that a reset cleared its selection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from backends.serial_commands import (
    FLAG_STUCK,
    FLAG_VERIFIED,
    Command,
    DeviceInfo,
    DeviceStatus,
    PayloadError,
    Rect,
    Status,
    decode_conductances,
    decode_stuck_map,
    encode_hello_request,
    encode_tile,
)
from backends.serial_errors import (
    DeviceStatusError,
    LinkTimeoutError,
    MalformedReplyError,
)
from backends.serial_link import SerialLink
from backends.serial_protocol import MAX_PAYLOAD, PROTOCOL_MAJOR, PROTOCOL_MINOR
from backends.serial_transfers import (
    MVM_REPLY_HEAD,
    MVM_REQUEST_HEAD,
    PROGRAM_REPLY_BYTES,
    PROGRAM_REQUEST_BYTES,
    REPLY_ALL_CELLS,
    MvmRequest,
    ProgramReply,
    ProgramRequest,
    decode_currents,
    make_cells,
)

logger = logging.getLogger(__name__)


@dataclass
class ProgramResult:
    """Outcome of programming a list of cells, over as many frames as it took."""

    verified: np.ndarray
    """Per cell: verified within tolerance."""

    stuck: np.ndarray
    """Per cell: the device reported it stuck."""

    achieved_us: np.ndarray
    """Per cell: last verify read in µS, NaN where the reply did not list the cell."""

    pulses: int = 0
    rounds: int = 0


class ArrayClient:
    """Commands of one device, over a `SerialLink`."""

    def __init__(self, link: SerialLink) -> None:
        self.link = link
        self.info: DeviceInfo | None = None
        self._tile: int | None = None

    def hello(self) -> DeviceInfo:
        """Exchange versions and learn the array's geometry and limits."""
        request = encode_hello_request(PROTOCOL_MAJOR, PROTOCOL_MINOR)
        reply = self.link.request(Command.HELLO, request, check=False)
        if reply.status == Status.VERSION_MISMATCH:
            info = self._decode(DeviceInfo.decode, reply.payload, "HELLO")
            raise DeviceStatusError(
                f"device on {self.link.name} speaks protocol {info.major}.{info.minor}, "
                f"this memdeploy speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: upgrade "
                "memdeploy or the firmware so that the major versions match",
                status=reply.status,
                command="HELLO",
            )
        self.link.check_status(Command.HELLO, reply)
        info = self._decode(DeviceInfo.decode, reply.payload, "HELLO")
        _check_device_info(info, self.link.name)
        self.info = info
        self.link.budget.maximum = min(info.max_payload, MAX_PAYLOAD)
        self.link.budget.current = self.link.budget.maximum
        self._tile = None
        return info

    def status(self) -> DeviceStatus:
        """Return the device's counters and state."""
        reply = self.link.request(Command.STATUS)
        return self._decode(DeviceStatus.decode, reply.payload, "STATUS")

    def reset(self) -> None:
        """Reset the device's volatile state."""
        self.link.request(Command.RESET)
        self._tile = None

    def select_tile(self, tile: int) -> None:
        """Select a tile for the commands that follow."""
        self.link.request(Command.SELECT_TILE, encode_tile(tile))
        self._tile = tile

    def _tile_request(self, tile: int, command: Command, payload: bytes):
        if self._tile != tile:
            self.select_tile(tile)
        try:
            return self.link.request(command, payload)
        except DeviceStatusError as err:
            if err.status != Status.NO_TILE_SELECTED:
                raise
            logger.warning(
                "device on %s lost its tile selection (reset?); selecting tile %d again",
                self.link.name,
                tile,
            )
            self.select_tile(tile)
            return self.link.request(command, payload)

    def program(
        self, tile, rows, cols, targets_us, *, tolerance_us, max_pulses, reply_mode
    ):
        """Write-verify cells of a tile (arrays of rows, cols and targets in µS)."""
        count = len(targets_us)
        result = ProgramResult(
            verified=np.zeros(count, dtype=bool),
            stuck=np.zeros(count, dtype=bool),
            achieved_us=np.full(count, np.nan),
        )
        cells = make_cells(rows, cols, targets_us)

        def send(start: int, stop: int) -> None:
            request = ProgramRequest(
                cells[start:stop], tolerance_us, max_pulses, reply_mode
            )
            reply_frame = self._tile_request(tile, Command.PROGRAM, request.encode())
            reply = self._decode(ProgramReply.decode, reply_frame.payload, "PROGRAM")
            self._merge(result, reply, start, stop)

        fixed, per_cell = PROGRAM_REQUEST_BYTES
        if reply_mode == REPLY_ALL_CELLS:
            per_cell = max(per_cell, PROGRAM_REPLY_BYTES[1])
        self._chunked(count, fixed, per_cell, send, "PROGRAM")
        return result

    @staticmethod
    def _merge(result: ProgramResult, reply: ProgramReply, start: int, stop: int):
        if reply.count != stop - start or np.any(reply.records["index"] >= reply.count):
            raise MalformedReplyError(
                f"PROGRAM reply covers {reply.count} cells, expected {stop - start}",
                command="PROGRAM",
            )
        # Cells a summary reply does not list were verified.
        result.verified[start:stop] = True
        positions = start + reply.records["index"].astype(np.int64)
        flags = reply.records["flags"]
        result.verified[positions] = (flags & FLAG_VERIFIED) != 0
        result.stuck[positions] = (flags & FLAG_STUCK) != 0
        result.achieved_us[positions] = reply.records["achieved_us"]
        result.pulses += reply.pulses
        result.rounds += reply.rounds

    def _chunked(
        self, total: int, fixed: int, per_item: int, send, command_name: str
    ) -> None:
        """Call send(start, stop) over items, each call within the payload budget.

        A chunk that fails every retry is split and sent again as new requests, as long
        as the shrunken budget makes it smaller. A single item that fails raises.
        """
        start = 0
        while start < total:
            count = self._fit(total - start, fixed, per_item)
            try:
                send(start, start + count)
            except LinkTimeoutError:
                if self._fit(total - start, fixed, per_item) >= count:
                    raise
                logger.warning(
                    "%s of %d items failed every retry; sending it in smaller frames",
                    command_name,
                    count,
                )
                continue
            start += count

    def _fit(self, remaining: int, fixed: int, per_item: int) -> int:
        return max(1, min(remaining, (self.link.budget.current - fixed) // per_item))

    def read(self, tile: int, rect: Rect) -> np.ndarray:
        """Read a rectangle's conductances in µS as a (rows, cols) float32 array."""
        return self._read_rect(
            tile, rect, Command.READ, 4, decode_conductances, np.float32
        )

    def stuck_map(self, tile: int, rect: Rect) -> np.ndarray:
        """Read a rectangle's stuck codes (0 free, 1 at g_min, 2 at g_max)."""
        codes = self._read_rect(
            tile, rect, Command.STUCK_MAP, 1, decode_stuck_map, np.uint8
        )
        if codes.size and codes.max() > STUCK_AT_G_MAX:
            raise MalformedReplyError(
                f"STUCK_MAP reply from {self.link.name} for tile {tile} contains code "
                f"{codes.max()}, expected 0 (free), 1 (stuck at g_min) or 2 (stuck at "
                "g_max): host and firmware disagree on the protocol",
                command="STUCK_MAP",
            )
        return codes

    def _read_rect(self, tile, rect: Rect, command, cell_bytes, decode, dtype):
        values = np.empty((rect.rows, rect.cols), dtype=dtype)
        pieces = _RectPieces(rect)
        while not pieces.done:
            piece = pieces.next(max(1, self.link.budget.current // cell_bytes))
            try:
                reply = self._tile_request(tile, command, piece.encode())
            except LinkTimeoutError:
                if (
                    piece.cells == 1
                    or self.link.budget.current // cell_bytes >= piece.cells
                ):
                    raise
                continue
            block = self._decode(decode, reply.payload, command.name, piece)
            values[
                piece.row0 - rect.row0 : piece.row0 - rect.row0 + piece.rows,
                piece.col0 - rect.col0 : piece.col0 - rect.col0 + piece.cols,
            ] = block
            pieces.advance(piece)
        return values

    def mvm(self, tile: int, row0: int, col0: int, cols: int, voltages_v: np.ndarray):
        """Return bit-line currents (batch, cols) in µA for voltages (batch, rows) in V."""
        batch, rows = voltages_v.shape
        currents = np.empty((batch, cols), dtype=np.float32)

        def send(start: int, stop: int) -> None:
            request = MvmRequest(row0, col0, cols, voltages_v[start:stop])
            reply = self._tile_request(tile, Command.MVM, request.encode())
            block = self._decode(decode_currents, reply.payload, "MVM")
            if block.shape != (stop - start, cols):
                raise MalformedReplyError(
                    f"MVM reply has shape {block.shape}, expected {(stop - start, cols)}",
                    command="MVM",
                )
            if not np.isfinite(block).all():
                raise MalformedReplyError(
                    f"MVM reply from {self.link.name} for tile {tile} contains NaN or "
                    "infinite currents, expected finite currents in µA: check the "
                    "device's ADC and firmware",
                    command="MVM",
                )
            currents[start:stop] = block

        # NOTE: one vector is never split, so a tile with many rows needs a budget of
        # 4 x rows bytes even on a noisy link.
        fixed = max(MVM_REQUEST_HEAD, MVM_REPLY_HEAD)
        self._chunked(batch, fixed, 4 * max(rows, cols), send, "MVM")
        return currents

    @staticmethod
    def _decode(decode, payload: bytes, command_name: str, *args):
        try:
            return decode(payload, *args)
        except PayloadError as err:
            raise MalformedReplyError(
                f"malformed {command_name} reply: {err}; host and firmware disagree on the "
                "protocol",
                command=command_name,
            ) from err


STUCK_AT_G_MAX = 2
"""Largest stuck-map code: 0 free, 1 stuck at g_min, 2 stuck at g_max."""

MIN_DEVICE_PAYLOAD = 64
"""Smallest max_payload a device may report, in bytes: a PROGRAM request for a few
cells and every fixed-size reply fit in it."""


def _check_device_info(info: DeviceInfo, port: str) -> None:
    """Raise MalformedReplyError for a HELLO reply no array could send."""
    problems = []
    if not MIN_DEVICE_PAYLOAD <= info.max_payload <= MAX_PAYLOAD:
        problems.append(
            f"max_payload {info.max_payload}, expected {MIN_DEVICE_PAYLOAD} to "
            f"{MAX_PAYLOAD} bytes"
        )
    if info.tiles < 1 or info.rows < 1 or info.cols < 2:
        problems.append(
            f"{info.tiles} tiles of {info.rows}x{info.cols} cells, expected at least "
            "1 tile of 1 row and 2 columns (one differential pair)"
        )
    window = (info.g_min_us, info.g_max_us)
    if not (np.isfinite(window).all() and 0 <= info.g_min_us < info.g_max_us):
        problems.append(
            f"conductance range {info.g_min_us} to {info.g_max_us} µS, expected finite "
            "values with 0 <= g_min < g_max"
        )
    if not (np.isfinite(info.v_read_v) and info.v_read_v > 0):
        problems.append(
            f"read voltage {info.v_read_v} V, expected a finite value above 0"
        )
    if problems:
        raise MalformedReplyError(
            f"HELLO reply from {port} states " + "; ".join(problems) + ": the device "
            "or its firmware is misconfigured",
            command="HELLO",
        )


def compare_with_profile(info: DeviceInfo, profile, port: str) -> None:
    """Log the device, and warn where its geometry or range differ from the profile."""
    logger.info(
        "connected to %s on %s: %d tiles of %dx%d cells, %g to %g µS, firmware %s",
        info.device_id, port, info.tiles, info.rows, info.cols,
        info.g_min_us, info.g_max_us, info.firmware,
    )  # fmt: skip
    if (info.rows, info.cols) != (profile.tile.rows, profile.tile.cols):
        logger.warning(
            "device tiles are %dx%d but profile %s states %dx%d; using the device's",
            info.rows, info.cols, profile.name, profile.tile.rows, profile.tile.cols,
        )  # fmt: skip
    window = (profile.conductance.g_min_us, profile.conductance.g_max_us)
    if not np.allclose((info.g_min_us, info.g_max_us), window, rtol=1e-3):
        logger.warning(
            "device conductance range %g to %g µS differs from profile %s (%g to "
            "%g µS); targets follow the device",
            info.g_min_us, info.g_max_us, profile.name, *window,
        )  # fmt: skip


class _RectPieces:
    """Walks a rectangle row-major in pieces: whole rows, or parts of one row."""

    def __init__(self, rect: Rect) -> None:
        self.rect = rect
        self.row = rect.row0
        self.col = rect.col0

    @property
    def done(self) -> bool:
        return self.row >= self.rect.row0 + self.rect.rows

    def next(self, max_cells: int) -> Rect:
        rect = self.rect
        if self.col == rect.col0 and rect.cols <= max_cells:
            rows = min(rect.row0 + rect.rows - self.row, max_cells // rect.cols)
            return Rect(self.row, rect.col0, rows, rect.cols)
        cols = min(rect.col0 + rect.cols - self.col, max_cells)
        return Rect(self.row, self.col, 1, cols)

    def advance(self, piece: Rect) -> None:
        end_col = piece.col0 + piece.cols
        if piece.col0 == self.rect.col0 and piece.cols == self.rect.cols:
            self.row += piece.rows
        elif end_col >= self.rect.col0 + self.rect.cols:
            self.row, self.col = self.row + 1, self.rect.col0
        else:
            self.col = end_col

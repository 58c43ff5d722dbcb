"""The protocol side of the emulated array: frames in, replies out.

`EmulatedDevice` implements docs/serial-protocol.md and nothing beyond it: it parses
frames, sends a NAK for bad ones, replays its stored reply to a resent request, checks
each command completely before touching a cell, and clears its volatile state on a
reset. The cells themselves are an `ArrayPhysics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from backends.emulator.physics import ArrayPhysics
from backends.serial_commands import (
    FLAG_STUCK,
    FLAG_VERIFIED,
    FLAG_WORN,
    NO_TILE,
    RECORD_DTYPE,
    Command,
    DeviceInfo,
    DeviceStatus,
    PayloadError,
    Rect,
    Status,
    decode_hello_request,
    decode_tile,
)
from backends.serial_protocol import (
    MAX_PAYLOAD,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    REPLY_BIT,
    Frame,
    FrameDecoder,
    FrameError,
    encode_body,
    encode_frame,
    nak_frame,
)
from backends.serial_transfers import (
    REPLY_ALL_CELLS,
    REPLY_SUMMARY,
    MvmRequest,
    ProgramReply,
    ProgramRequest,
    encode_currents,
)

logger = logging.getLogger(__name__)

TILE_COMMANDS = {Command.PROGRAM, Command.READ, Command.MVM, Command.STUCK_MAP}
FIRMWARE = "memdeploy-emulator 1"


class CommandRejected(Exception):
    """A command failed its checks; `status` goes into the reply."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _StoredReply:
    seq: int
    request_crc: bytes
    wire: bytes


class EmulatedDevice:
    """A device that speaks the serial array protocol over an `ArrayPhysics`.

    Args:
        physics: The cells behind the protocol.
        device_id: Name reported by HELLO.
        max_payload: Largest payload in bytes the device accepts and sends.
    """

    def __init__(
        self, physics: ArrayPhysics, *, device_id: str, max_payload: int = MAX_PAYLOAD
    ) -> None:
        self.physics = physics
        self.device_id = device_id
        self.max_payload = max_payload
        self.boot_id = 1
        self.resets = 0
        self._decoder = FrameDecoder()
        self._clear_volatile_state()

    def _clear_volatile_state(self) -> None:
        self.selected_tile: int | None = None
        self.frames_ok = 0
        self.frames_bad = 0
        self.replays = 0
        self._stored: _StoredReply | None = None
        self._decoder.reset()

    def reset(self) -> None:
        """Lose the volatile state, as a reset or power loss does; cells are kept."""
        self._clear_volatile_state()
        self.boot_id += 1
        self.resets += 1
        logger.info("emulated device reset (boot id %d)", self.boot_id)

    @property
    def pending_bytes(self) -> int:
        """Bytes of a partly received frame."""
        return self._decoder.pending

    def drop_partial_frame(self) -> None:
        """Drop a partly received frame, as the frame gap rule requires."""
        self._decoder.reset()

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Split received bytes into frames and framing errors."""
        return self._decoder.feed(data)

    def handle(self, item: Frame | FrameError) -> bytes | None:
        """Return the wire bytes of the reply to a received frame, or None for no reply."""
        if isinstance(item, FrameError):
            self.frames_bad += 1
            logger.debug("framing error (%s), sending NAK", item.reason)
            return encode_frame(nak_frame())
        if item.is_reply:
            return None
        self.frames_ok += 1

        request_crc = encode_body(item)[-4:]
        stored = self._stored
        if stored and stored.seq == item.seq and stored.request_crc == request_crc:
            self.replays += 1
            logger.debug("seq %d resent, replaying the stored reply", item.seq)
            return stored.wire

        status, payload = self._execute(item)
        reply = Frame(item.command | REPLY_BIT, int(status), item.seq, payload)
        wire = encode_frame(reply)
        self._stored = _StoredReply(item.seq, request_crc, wire)
        if item.command == Command.RESET and status == Status.OK:
            self.reset()
        return wire

    def _execute(self, frame: Frame) -> tuple[Status, bytes]:
        try:
            command = Command(frame.command)
        except ValueError:
            return Status.UNKNOWN_COMMAND, b""
        try:
            if command in TILE_COMMANDS and self.selected_tile is None:
                raise CommandRejected(Status.NO_TILE_SELECTED, "no tile selected")
            payload = getattr(self, f"_do_{command.name.lower()}")(frame.payload)
        except PayloadError as err:
            logger.debug("%s rejected: %s", command.name, err)
            return Status.BAD_LENGTH, b""
        except CommandRejected as err:
            logger.debug("%s rejected: %s", command.name, err)
            payload = self._info().encode() if command == Command.HELLO else b""
            return err.status, payload
        except Exception:
            # A fault in the emulator must reach the host as a status, not kill the
            # server thread.
            logger.exception("%s failed inside the emulated device", command.name)
            return Status.DEVICE_FAULT, b""
        return Status.OK, payload

    def _info(self) -> DeviceInfo:
        physics = self.physics
        return DeviceInfo(
            PROTOCOL_MAJOR, PROTOCOL_MINOR, self.max_payload, physics.tiles,
            physics.rows, physics.cols, self.physics.profile.weight_levels or 0,
            physics.g_min_us, physics.g_max_us, physics.v_read_v, self.boot_id,
            self.device_id, FIRMWARE,
        )  # fmt: skip

    def _do_hello(self, payload: bytes) -> bytes:
        major, _ = decode_hello_request(payload)
        if major != PROTOCOL_MAJOR:
            raise CommandRejected(Status.VERSION_MISMATCH, f"host speaks {major}.x")
        return self._info().encode()

    def _do_status(self, payload: bytes) -> bytes:
        _expect_empty(payload, "STATUS")
        tile = NO_TILE if self.selected_tile is None else self.selected_tile
        tracks_wear = 1
        return DeviceStatus(
            self.boot_id, tile, self.frames_ok, self.frames_bad, self.replays,
            self.physics.pulses_total, self.resets, tracks_wear,
        ).encode()  # fmt: skip

    def _do_select_tile(self, payload: bytes) -> bytes:
        tile = decode_tile(payload)
        if tile >= self.physics.tiles:
            raise CommandRejected(
                Status.BAD_ADDRESS, f"tile {tile} of {self.physics.tiles}"
            )
        self.selected_tile = tile
        return b""

    def _do_reset(self, payload: bytes) -> bytes:
        _expect_empty(payload, "RESET")
        return b""

    def _do_program(self, payload: bytes) -> bytes:
        request = ProgramRequest.decode(payload)
        cells = request.cells
        self._check_addresses(cells["row"], cells["col"])
        self._check_program_values(request)

        outcome = self._program_in_order(request)
        flags = (
            outcome["verified"] * FLAG_VERIFIED
            + outcome["stuck"] * FLAG_STUCK
            + outcome["worn"] * FLAG_WORN
        )
        if request.reply_mode == REPLY_SUMMARY:
            listed = np.flatnonzero(~outcome["verified"])
        else:
            listed = np.arange(len(cells))
        records = np.empty(len(listed), dtype=RECORD_DTYPE)
        records["index"] = listed
        records["flags"] = flags[listed]
        records["achieved_us"] = outcome["achieved"][listed]
        # The reply carries rounds as a u16 and pulses as a u32. max_pulses = 65535,
        # or a cell listed several times, can exceed them, so both saturate.
        reply = ProgramReply(
            len(cells), int(outcome["verified"].sum()),
            min(int(outcome["pulses"].sum()), 0xFFFFFFFF),
            min(outcome["rounds"], 0xFFFF), records,
        )  # fmt: skip
        return self._fit(reply.encode())

    def _check_program_values(self, request: ProgramRequest) -> None:
        targets = request.cells["target_us"]
        physics = self.physics
        if request.reply_mode not in (REPLY_SUMMARY, REPLY_ALL_CELLS):
            raise CommandRejected(Status.BAD_VALUE, f"reply mode {request.reply_mode}")
        if not (request.tolerance_us > 0) or request.max_pulses < 1:
            raise CommandRejected(Status.BAD_VALUE, "tolerance or max_pulses")
        in_range = (targets >= physics.g_min_us) & (targets <= physics.g_max_us)
        if not np.all(np.isfinite(targets) & in_range):
            raise CommandRejected(Status.BAD_VALUE, "target outside [g_min, g_max]")

    def _program_in_order(self, request: ProgramRequest) -> dict:
        """Program the block in runs of distinct cells, so repeats apply in order."""
        cells = request.cells
        count = len(cells)
        result = {
            "achieved": np.zeros(count),
            "pulses": np.zeros(count, dtype=np.int64),
            "verified": np.zeros(count, dtype=bool),
            "stuck": np.zeros(count, dtype=bool),
            "worn": np.zeros(count, dtype=bool),
            "rounds": 0,
        }
        for run in _distinct_runs(cells["row"], cells["col"]):
            outcome = self.physics.program(
                self.selected_tile, cells["row"][run], cells["col"][run],
                cells["target_us"][run], request.tolerance_us, request.max_pulses,
            )  # fmt: skip
            result["achieved"][run] = outcome.achieved_us
            result["pulses"][run] = outcome.pulses
            result["verified"][run] = outcome.verified
            result["stuck"][run] = outcome.stuck
            result["worn"][run] = outcome.worn
            result["rounds"] += outcome.rounds
        return result

    def _do_read(self, payload: bytes) -> bytes:
        rect = self._checked_rect(payload, bytes_per_cell=4)
        grid = np.ix_(
            np.arange(rect.row0, rect.row0 + rect.rows),
            np.arange(rect.col0, rect.col0 + rect.cols),
        )
        return self.physics.read(self.selected_tile, *grid).astype("<f4").tobytes()

    def _do_stuck_map(self, payload: bytes) -> bytes:
        rect = self._checked_rect(payload, bytes_per_cell=1)
        codes = self.physics.stuck_map(
            self.selected_tile, rect.row0, rect.col0, rect.rows, rect.cols
        )
        return codes.astype(np.uint8).tobytes()

    def _do_mvm(self, payload: bytes) -> bytes:
        request = MvmRequest.decode(payload)
        rows = request.voltages_v.shape[1]
        self._check_rect(Rect(request.row0, request.col0, rows, request.cols))
        voltages = request.voltages_v
        if not np.all(
            np.isfinite(voltages) & (np.abs(voltages) <= self.physics.v_read_v)
        ):
            raise CommandRejected(Status.BAD_VALUE, "voltage beyond v_read_v")
        self._fit(bytes(4 + 4 * len(voltages) * request.cols))
        currents = self.physics.mvm(
            self.selected_tile, request.row0, request.col0, request.cols, voltages
        )
        return encode_currents(currents)

    def _checked_rect(self, payload: bytes, bytes_per_cell: int) -> Rect:
        rect = Rect.decode(payload)
        self._check_rect(rect)
        self._fit(bytes(rect.cells * bytes_per_cell))
        return rect

    def _check_rect(self, rect: Rect) -> None:
        physics = self.physics
        inside = (
            rect.rows > 0
            and rect.cols > 0
            and rect.row0 + rect.rows <= physics.rows
            and rect.col0 + rect.cols <= physics.cols
        )
        if not inside:
            raise CommandRejected(Status.BAD_ADDRESS, f"rectangle {rect}")

    def _check_addresses(self, rows: np.ndarray, cols: np.ndarray) -> None:
        if np.any(rows >= self.physics.rows) or np.any(cols >= self.physics.cols):
            raise CommandRejected(Status.BAD_ADDRESS, "cell outside the tile")

    def _fit(self, payload: bytes) -> bytes:
        if len(payload) > self.max_payload:
            raise CommandRejected(Status.REPLY_TOO_LARGE, f"{len(payload)} bytes")
        return payload


def _expect_empty(payload: bytes, command: str) -> None:
    if payload:
        raise PayloadError(f"{command} request has {len(payload)} bytes, expected 0")


def _distinct_runs(rows: np.ndarray, cols: np.ndarray) -> list[slice]:
    """Cut a block into consecutive runs in which no cell address repeats."""
    runs, start, seen = [], 0, set()
    for index, address in enumerate(zip(rows.tolist(), cols.tolist())):
        if address in seen:
            runs.append(slice(start, index))
            start, seen = index, set()
        seen.add(address)
    runs.append(slice(start, len(rows)))
    return runs

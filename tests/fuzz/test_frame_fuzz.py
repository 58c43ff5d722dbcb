"""Fuzzing the serial protocol's parsers on both sides of the link.

- The frame decoder takes random, mutated and spliced byte streams and never raises.
- The emulated device takes frames with a valid CRC but random commands, lengths
  and fields, and replies to every one with a known status, never with a
  DEVICE_FAULT (which would mean an unhandled error inside the device).
- The host's payload decoders take random payloads and raise only PayloadError.
- The host's client takes random replies with a valid CRC and raises only
  SerialLinkError subclasses.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from cobs import cobs
from hypothesis import given
from hypothesis import strategies as st

from backends.emulator.device import EmulatedDevice
from backends.emulator.physics import ArrayPhysics
from backends.serial_client import ArrayClient
from backends.serial_commands import (
    Command,
    DeviceInfo,
    DeviceStatus,
    PayloadError,
    Rect,
    Status,
    decode_conductances,
    decode_hello_request,
    decode_stuck_map,
    decode_tile,
)
from backends.serial_errors import SerialLinkError
from backends.serial_link import SerialLink
from backends.serial_protocol import (
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
)
from backends.serial_transfers import (
    MvmRequest,
    ProgramReply,
    ProgramRequest,
    decode_currents,
)
from memdeploy.profiles import load_profile

from .budget import fuzz_settings

frames = st.builds(
    Frame,
    command=st.integers(0, 255),
    status=st.integers(0, 255),
    seq=st.integers(0, 65535),
    payload=st.binary(max_size=300),
)


@st.composite
def mutated_stream(draw) -> bytes:
    """Valid frames on the wire, then bytes flipped, cut, duplicated or inserted."""
    wire = bytearray(
        b"".join(encode_frame(frame) for frame in draw(st.lists(frames, max_size=4)))
    )
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(wire)))
        edit = draw(st.sampled_from(["flip", "cut", "insert", "zero", "repeat"]))
        if edit == "flip" and position < len(wire):
            wire[position] ^= draw(st.integers(1, 255))
        elif edit == "cut":
            del wire[position : position + draw(st.integers(1, 20))]
        elif edit == "insert":
            wire[position:position] = draw(st.binary(min_size=1, max_size=20))
        elif edit == "zero":
            wire[position:position] = b"\x00"
        else:
            wire += wire[position:]
    return bytes(wire)


@fuzz_settings(300)
@given(mutated_stream(), st.lists(st.integers(1, 64), max_size=8))
def test_mutated_stream_never_raises_in_decoder(wire, chunk_sizes):
    decoder = FrameDecoder()
    items = []
    start = 0
    for size in [*chunk_sizes, len(wire)]:
        items += decoder.feed(wire[start : start + size])
        start += size

    assert all(isinstance(item, (Frame, FrameError)) for item in items)
    for frame in (item for item in items if isinstance(item, Frame)):
        assert len(frame.payload) <= MAX_PAYLOAD


def u16(value: int) -> bytes:
    return struct.pack("<H", value)


@st.composite
def request_payloads(draw, command: int) -> bytes:
    """A payload laid out like `command`'s, with random and boundary field values."""
    small = st.integers(0, 40) | st.sampled_from([0, 1, 31, 32, 33, 0xFFFF])
    f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
    if command == Command.HELLO:
        return bytes([draw(st.integers(0, 3)), draw(st.integers(0, 255))])
    if command == Command.SELECT_TILE:
        return u16(draw(st.integers(0, 3) | st.sampled_from([0xFFFF])))
    if command in (Command.READ, Command.STUCK_MAP):
        return b"".join(u16(draw(small)) for _ in range(4))
    if command == Command.PROGRAM:
        count = draw(st.integers(0, 24))
        head = struct.pack(
            "<BBHfH", draw(st.integers(0, 2)), 0, draw(st.integers(0, 60)),
            draw(f32 | st.sampled_from([2.0, 1e-30])), count,
        )  # fmt: skip
        cells = b"".join(
            u16(draw(small)) + u16(draw(small))
            + struct.pack("<f", draw(f32 | st.floats(8, 90, width=32)))
            for _ in range(count)
        )  # fmt: skip
        return head + cells
    if command == Command.MVM:
        rows, batch = draw(st.integers(0, 8)), draw(st.integers(0, 4))
        head = struct.pack("<HHHHH", draw(small), rows, draw(small), draw(small), batch)
        volts = st.floats(-0.25, 0.25, width=32) | f32
        return head + b"".join(
            struct.pack("<f", draw(volts)) for _ in range(rows * batch)
        )
    return draw(st.binary(max_size=40))


@st.composite
def requests(draw) -> Frame:
    command = draw(st.sampled_from([*map(int, Command), 0x00, 0x09, 0x7F, 0xC4]))
    if draw(st.integers(0, 4)) == 0:
        payload = draw(st.binary(max_size=200))
    else:
        payload = draw(request_payloads(command))
    return Frame(
        command, draw(st.integers(0, 255)), draw(st.integers(0, 65535)), payload
    )


@pytest.fixture
def device() -> EmulatedDevice:
    physics = ArrayPhysics(load_profile("lab-array-32x32"), tiles=2, seed=0)
    return EmulatedDevice(physics, device_id="fuzz")


@fuzz_settings(400)
@given(st.lists(requests(), min_size=1, max_size=6))
def test_device_answers_every_valid_frame_with_known_status(device, sent):
    for request in sent:
        wire = device.handle(request)

        if request.is_reply:
            assert wire is None
            continue
        (reply,) = FrameDecoder().feed(wire)
        assert isinstance(reply, Frame)
        assert reply.seq == request.seq
        assert reply.command == request.command | 0x80
        assert reply.status in set(map(int, Status)) - {Status.DEVICE_FAULT}
        assert len(reply.payload) <= device.max_payload


@fuzz_settings(200)
@given(st.binary(max_size=300))
def test_device_naks_random_bytes(device, data):
    for item in device.feed(data):
        wire = device.handle(item)
        if isinstance(item, FrameError):
            assert FrameDecoder().feed(wire)[0].is_nak


RECT = Rect(0, 0, 2, 3)
DECODERS = [
    DeviceInfo.decode, DeviceStatus.decode, ProgramReply.decode, ProgramRequest.decode,
    MvmRequest.decode, Rect.decode, decode_currents, decode_tile, decode_hello_request,
    lambda payload: decode_conductances(payload, RECT),
    lambda payload: decode_stuck_map(payload, RECT),
]  # fmt: skip


@fuzz_settings(300)
@given(st.sampled_from(range(len(DECODERS))), st.binary(max_size=120))
def test_payload_decoders_raise_only_payload_error(which, payload):
    try:
        DECODERS[which](payload)
    except PayloadError:
        pass


class RandomReplyPort:
    """A port double that replies to each request with a frame drawn by Hypothesis."""

    def __init__(self, data) -> None:
        self.timeout = 0.0
        self._data = data
        self._pending = b""

    def write(self, wire: bytes) -> int:
        body = cobs.decode(wire.rstrip(b"\x00").split(b"\x00")[-1])
        command, _, seq = struct.unpack_from("<BBH", body)
        draw = self._data.draw
        if draw(st.integers(0, 9)) == 0:
            self._pending += draw(st.binary(max_size=60))  # line noise
        status = draw(st.sampled_from([0, 0, 0, 5, 6, 9, 0x42]))
        payload = draw(st.binary(max_size=120) | st.sampled_from([b"", bytes(31)]))
        self._pending += encode_frame(Frame(command | 0x80, status, seq, payload))
        return len(wire)

    def read(self, size: int) -> bytes:
        data, self._pending = self._pending[:size], self._pending[size:]
        return data


@fuzz_settings(200)
@given(
    st.data(), st.sampled_from(["hello", "status", "read", "stuck", "program", "mvm"])
)
def test_client_raises_only_link_errors_on_random_replies(data, call):
    link = SerialLink(RandomReplyPort(data), timeout_s=0.05, retries=0, name="fuzz")
    client = ArrayClient(link)
    rect = Rect(0, 0, 2, 4)
    calls = {
        "hello": client.hello,
        "status": client.status,
        "read": lambda: client.read(0, rect),
        "stuck": lambda: client.stuck_map(0, rect),
        "program": lambda: client.program(
            0,
            np.arange(3),
            np.zeros(3, int),
            np.full(3, 40.0),
            tolerance_us=2.0,
            max_pulses=5,
            reply_mode=1,
        ),  # fmt: skip
        "mvm": lambda: client.mvm(0, 0, 0, 2, np.zeros((2, 3), np.float32)),
    }

    try:
        calls[call]()
    except SerialLinkError:
        pass

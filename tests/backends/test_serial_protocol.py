"""Framing and payload codecs of the serial array protocol, checked against its page."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.serial_commands import (
    CELL_DTYPE,
    RECORD_DTYPE,
    Command,
    DeviceInfo,
    DeviceStatus,
    PayloadError,
    Rect,
    Status,
    decode_conductances,
    decode_stuck_map,
)
from backends.serial_protocol import (
    MAX_ENCODED,
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
    encode_currents,
    make_cells,
)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "serial-protocol.md"

frames = st.builds(
    Frame,
    command=st.integers(0, 255),
    status=st.integers(0, 255),
    seq=st.integers(0, 65535),
    payload=st.binary(max_size=600),
)


def page_table(heading: str) -> list[list[str]]:
    """Return the rows of the first table after `heading` in the protocol page."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]


def hex_bytes(cell: str) -> bytes:
    return b"" if cell == "(empty)" else bytes.fromhex(cell.strip("`"))


@given(frames)
def test_frame_survives_encoding(frame):
    decoded = FrameDecoder().feed(encode_frame(frame))

    assert decoded == [frame]


@given(st.lists(frames, max_size=4), st.data())
def test_frames_survive_arbitrary_chunking(sent, data):
    wire = b"".join(encode_frame(frame) for frame in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = FrameDecoder()

    received = []
    for start, stop in zip([0, *cuts], [*cuts, len(wire)]):
        received += decoder.feed(wire[start:stop])

    assert received == sent


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_random_bytes_give_framing_errors_not_exceptions(data):
    items = FrameDecoder().feed(data)

    assert all(isinstance(item, (Frame, FrameError)) for item in items)
    assert len(items) <= data.count(0)
    # A random frame passes CRC-32 with probability 2**-32; a valid one must re-encode.
    for frame in (item for item in items if isinstance(item, Frame)):
        assert encode_frame(frame)[:-1] in data


def test_every_single_byte_corruption_is_detected():
    wire = encode_frame(Frame(0x04, 0, 77, bytes(range(40))))

    for position in range(len(wire) - 1):
        for flip in (0x01, 0x80, wire[position]):
            corrupted = bytearray(wire)
            corrupted[position] ^= flip
            items = FrameDecoder().feed(bytes(corrupted))
            assert items
            assert all(isinstance(item, FrameError) for item in items)


def test_decoder_recovers_after_garbage():
    frame = Frame(0x82, 0, 9, b"\x00\x01")

    items = FrameDecoder().feed(b"\x13\x37\x00" + encode_frame(frame))

    assert isinstance(items[0], FrameError)
    assert items[1] == frame


def test_oversized_frame_is_a_framing_error():
    items = FrameDecoder().feed(b"\x01" * (MAX_ENCODED + 5) + b"\x00")

    assert len(items) == 1
    assert "longer than" in items[0].reason


def test_largest_payload_encodes_within_limit():
    wire = encode_frame(Frame(0x85, 0, 1, bytes(MAX_PAYLOAD)))

    assert len(wire) - 1 <= MAX_ENCODED
    assert FrameDecoder().feed(wire)[0].payload == bytes(MAX_PAYLOAD)


def test_payload_over_limit_is_rejected():
    with pytest.raises(ValueError, match="4097 bytes exceeds"):
        encode_frame(Frame(0x04, 0, 1, bytes(MAX_PAYLOAD + 1)))


def test_crc_is_the_ieee_crc32_of_the_page():
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_status_table_of_page_matches_codes():
    rows = page_table("## Status codes")

    assert {name: int(code, 16) for code, name, *_ in rows} == {
        status.name: status.value for status in Status
    }


def test_command_table_of_page_matches_codes():
    rows = page_table("## Commands")

    assert {name: int(code, 16) for code, name, *_ in rows} == {
        command.name: command.value for command in Command
    }


@pytest.mark.parametrize(
    "row", page_table("## Example frames"), ids=lambda r: r[0][:40]
)
def test_example_frame_of_page_matches_encoder(row):
    _, command, status, seq, payload, wire = row
    frame = Frame(int(command, 16), int(status, 16), int(seq), hex_bytes(payload))

    assert encode_frame(frame) == hex_bytes(wire)
    assert FrameDecoder().feed(hex_bytes(wire)) == [frame]


def test_device_info_round_trip():
    info = DeviceInfo(1, 0, 4096, 8, 32, 32, 8, 8.0, 90.0, 0.25, 7, "array-1", "2.1")

    assert DeviceInfo.decode(info.encode()) == info


def test_device_info_cut_inside_text_is_rejected():
    payload = DeviceInfo(
        1, 0, 4096, 8, 32, 32, 8, 8.0, 90.0, 0.25, 7, "a", "b"
    ).encode()

    with pytest.raises(PayloadError, match="inside a text field"):
        DeviceInfo.decode(payload[:-2])


def test_device_status_round_trip():
    status = DeviceStatus(3, 0xFFFF, 10, 2, 1, 2**40, 1, 1)

    assert DeviceStatus.decode(status.encode()) == status


def test_status_of_wrong_length_is_rejected():
    with pytest.raises(
        PayloadError, match="STATUS reply payload has 3 bytes, expected 31"
    ):
        DeviceStatus.decode(b"\x00\x01\x02")


def test_program_request_round_trip():
    cells = make_cells([0, 31], [5, 6], [8.0, 90.0])
    request = ProgramRequest(cells, 2.0, 30, 1)

    decoded = ProgramRequest.decode(request.encode())

    assert decoded.cells.tobytes() == cells.tobytes()
    assert (decoded.tolerance_us, decoded.max_pulses, decoded.reply_mode) == (
        2.0,
        30,
        1,
    )
    assert len(request.encode()) == 10 + 8 * 2


def test_program_request_with_missing_cell_is_rejected():
    payload = ProgramRequest(make_cells([0], [0], [8.0]), 2.0, 30).encode()

    with pytest.raises(PayloadError, match="for 1 cells has 17 bytes, expected 18"):
        ProgramRequest.decode(payload[:-1])


def test_program_reply_round_trip():
    records = np.zeros(2, dtype=RECORD_DTYPE)
    records["index"] = [3, 9]
    records["flags"] = [2, 0]
    records["achieved_us"] = [90.0, 12.5]
    reply = ProgramReply(10, 8, 41, 6, records)

    decoded = ProgramReply.decode(reply.encode())

    assert (decoded.count, decoded.verified, decoded.pulses, decoded.rounds) == (
        10,
        8,
        41,
        6,
    )
    assert decoded.records.tobytes() == records.tobytes()


def test_mvm_request_and_reply_round_trip():
    voltages = np.array([[0.1, -0.2, 0.0], [0.05, 0.05, 0.05]], dtype=np.float32)
    request = MvmRequest(4, 6, 10, voltages)
    currents = np.arange(20, dtype=np.float32).reshape(2, 10)

    decoded = MvmRequest.decode(request.encode())

    assert (decoded.row0, decoded.col0, decoded.cols) == (4, 6, 10)
    assert np.array_equal(decoded.voltages_v, voltages)
    assert np.array_equal(decode_currents(encode_currents(currents)), currents)


def test_mvm_reply_of_wrong_size_is_rejected():
    payload = encode_currents(np.zeros((2, 3), dtype=np.float32))

    with pytest.raises(PayloadError, match="2 x 3 currents has 27 bytes, expected 28"):
        decode_currents(payload[:-1])


def test_read_and_stuck_map_replies_decode_row_major():
    rect = Rect(1, 2, 2, 3)
    values = np.arange(6, dtype="<f4")

    conductances = decode_conductances(values.tobytes(), rect)
    codes = decode_stuck_map(bytes([0, 1, 2, 0, 0, 2]), rect)

    assert conductances[1, 0] == 3.0
    assert codes[0, 2] == 2
    assert Rect.decode(rect.encode()) == rect


def test_read_reply_of_wrong_size_is_rejected():
    with pytest.raises(PayloadError, match="READ reply has 5 values, expected 6"):
        decode_conductances(bytes(20), Rect(0, 0, 2, 3))


def test_cell_records_are_packed():
    assert CELL_DTYPE.itemsize == 8
    assert RECORD_DTYPE.itemsize == 7

"""HTTP/2 framing (RFC 9113 §4, §6): the lean encoder and the incremental reader."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodemesh.protocols.errors import ErrorCode, ProtocolError
from nodemesh.protocols.frames import (
    FRAME_HEADER_LEN,
    Frame,
    FrameReader,
    FrameType,
    data_frame_header,
    encode_frame,
    encode_settings,
    parse_settings,
)

frames = st.lists(
    st.tuples(
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 2**31 - 1),
        st.binary(max_size=300),
    ),
    max_size=12,
)


@given(frames, st.lists(st.integers(1, 400), max_size=30))
def test_frames_survive_any_split_of_the_byte_stream(
    items: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    """RFC 9113 §4.1: a frame is a 9-octet header (24-bit length, type, flags, 31-bit stream id)
    followed by `length` octets; TCP may deliver it in any pieces."""
    wire = b"".join(encode_frame(t, f, s, p) for t, f, s, p in items)
    reader = FrameReader(max_frame_size=1 << 20)
    got: list[Frame] = []
    pos = 0
    for cut in cuts:
        got += reader.feed(wire[pos : pos + cut])
        pos += cut
    got += reader.feed(wire[pos:])
    assert [(f.type, f.flags, f.stream_id, f.payload) for f in got] == items
    assert reader.buffered == 0


@given(st.integers(0, 2**24 - 1), st.integers(1, 2**31 - 1), st.booleans())
def test_data_frame_header_is_the_nine_octet_header(length: int, stream_id: int, end: bool) -> None:
    """RFC 9113 §6.1: DATA is type 0x0; END_STREAM is flag 0x1."""
    header = data_frame_header(length, stream_id, end)
    assert len(header) == FRAME_HEADER_LEN
    assert int.from_bytes(header[:3], "big") == length
    assert header[3] == FrameType.DATA
    assert header[4] == (1 if end else 0)
    assert int.from_bytes(header[5:], "big") == stream_id


def test_a_frame_longer_than_max_frame_size_is_a_frame_size_error() -> None:
    """RFC 9113 §4.2: "An endpoint MUST send an error code of FRAME_SIZE_ERROR if a frame exceeds
    the size defined in SETTINGS_MAX_FRAME_SIZE"; it is detected from the header alone."""
    reader = FrameReader(max_frame_size=16_384)
    header_only = encode_frame(FrameType.DATA, 0, 1, b"x" * 16_385)[:FRAME_HEADER_LEN]
    with pytest.raises(ProtocolError) as exc:
        reader.feed(header_only)
    assert exc.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert exc.value.is_connection_error


def test_settings_payload_must_be_a_multiple_of_six() -> None:
    """RFC 9113 §6.5: "A SETTINGS frame with a length other than a multiple of 6 octets MUST be
    treated as a connection error of type FRAME_SIZE_ERROR"."""
    assert parse_settings(encode_settings([(4, 65535), (5, 16384)])[FRAME_HEADER_LEN:]) == [
        (4, 65535),
        (5, 16384),
    ]
    with pytest.raises(ProtocolError) as exc:
        parse_settings(b"\x00" * 7)
    assert exc.value.code is ErrorCode.FRAME_SIZE_ERROR

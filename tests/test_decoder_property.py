"""Property tests of the incremental decoder: any bytes, split anywhere.

Whatever arrives, the decoder yields frames or raises RemoteProtocolError, never any
other exception, and how the stream is split into reads changes nothing.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbloop.core.protocol import Frame, FrameDecoder, RemoteProtocolError
from hbloop.core.wire import (
    HEADER_ONLY_TYPES,
    HEADER_SIZE,
    HEADER_STRUCT,
    KNOWN_TYPES,
    Code,
    FrameType,
)

# A small maximum payload, so that FRAME_TOO_LARGE is as reachable as the other errors.
MAX_PAYLOAD = 64

# The machine is shared and slow at times: no per-example deadline, and enough examples
# to cover each header check many times over.
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def frames_bytes(draw: st.DrawFn, valid_only: bool = False) -> bytes:
    """One frame: well-formed, or with a header field pushed out of range."""
    ftype = draw(st.sampled_from(sorted(KNOWN_TYPES)))
    size = 0 if ftype in HEADER_ONLY_TYPES else draw(st.integers(0, MAX_PAYLOAD))
    payload = draw(st.binary(min_size=size, max_size=size))
    flags = 0
    length = size
    if not valid_only:
        flags = draw(st.sampled_from([0, 0, 0, 1, 0x80]))
        ftype = draw(st.sampled_from([ftype, ftype, ftype, 0, 9, 0xFF]))
        length = draw(st.sampled_from([size, size, size, size + 1, MAX_PAYLOAD + 1, 0xFFFFFFFF]))
    return HEADER_STRUCT.pack(length, ftype, flags) + payload


# Streams: pure noise, or concatenated (possibly bad) frames with noise at the end.
streams = st.one_of(
    st.binary(max_size=512),
    st.builds(
        lambda frames, tail: b"".join(frames) + tail,
        st.lists(frames_bytes(), max_size=8),
        st.binary(max_size=16),
    ),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def model_decode(data: bytes) -> tuple[list[Frame], int | None]:
    """A slow, obviously correct reading of protocol.md section 1: the frames before
    the first bad header, and that header's code (None if the stream is clean)."""
    frames: list[Frame] = []
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        length, ftype, flags = HEADER_STRUCT.unpack_from(data, pos)
        # Rule F1, in its order, then F3 for PING and PONG.
        if flags:
            return frames, Code.RESERVED_BITS
        if ftype not in KNOWN_TYPES:
            return frames, Code.UNKNOWN_TYPE
        if length > MAX_PAYLOAD:
            return frames, Code.FRAME_TOO_LARGE
        if length and ftype in (FrameType.PING, FrameType.PONG):
            return frames, Code.MALFORMED
        end = pos + HEADER_SIZE + length
        if end > len(data):
            break
        frames.append((ftype, data[pos + HEADER_SIZE : end]))
        pos = end
    return frames, None


def feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[list[Frame], int | None, int]:
    """Feed ``data`` split at ``cuts``: the frames, the error code if any, and the
    number of bytes left buffered."""
    decoder = FrameDecoder(MAX_PAYLOAD)
    frames: list[Frame] = []
    for piece in split(data, cuts):
        try:
            frames.extend(decoder.feed(memoryview(piece)))
        except RemoteProtocolError as exc:
            return frames, exc.code, decoder.buffered
    return frames, None, decoder.buffered


@SETTINGS
@given(data=streams, cuts=st.lists(st.integers(0, 600), max_size=20))
def test_any_bytes_split_anywhere_yield_frames_or_the_typed_error(
    data: bytes, cuts: list[int]
) -> None:
    # Any exception but RemoteProtocolError propagates and fails the test.
    frames, code, buffered = feed_in_pieces(data, cuts)
    expected_frames, expected_code = model_decode(data)
    # The first bad header is found wherever the stream is split...
    assert code == expected_code
    # ...and frames yielded before it are exactly the stream's leading frames. (A read
    # that contains a bad header is refused whole, so a prefix is all that is promised.)
    assert frames == expected_frames[: len(frames)]
    if code is None:
        assert frames == expected_frames
        consumed = sum(HEADER_SIZE + len(payload) for _, payload in frames)
        assert buffered == len(data) - consumed


@SETTINGS
@given(
    frames=st.lists(frames_bytes(valid_only=True), min_size=1, max_size=10),
    cuts=st.lists(st.integers(0, 1000), max_size=30),
)
def test_a_valid_stream_decodes_the_same_however_it_is_split(
    frames: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(frames)
    whole = FrameDecoder(MAX_PAYLOAD).feed(data)
    pieces, code, buffered = feed_in_pieces(data, cuts)
    assert code is None
    assert buffered == 0
    assert pieces == whole
    assert len(whole) == len(frames)
    assert all(ftype in KNOWN_TYPES for ftype, _ in whole)


@SETTINGS
@given(data=streams)
def test_one_byte_at_a_time_equals_all_at_once(data: bytes) -> None:
    decoder = FrameDecoder(MAX_PAYLOAD)
    frames: list[Frame] = []
    code = None
    for i in range(len(data)):
        try:
            frames.extend(decoder.feed(data[i : i + 1]))
        except RemoteProtocolError as exc:
            code = exc.code
            break
    expected_frames, expected_code = model_decode(data)
    assert code == expected_code
    # Byte by byte, no read holds more than one header: every frame before the bad one
    # is delivered.
    assert frames == expected_frames

"""The sans-IO core: incremental decoding, payload parsing, role rules."""

from __future__ import annotations

import ssl
import struct
import time

import pytest

from hbloop.core.protocol import (
    FrameDecoder,
    RemoteProtocolError,
    looks_like_tls,
    parse_close,
    parse_error,
    parse_hello,
    parse_welcome,
    token_problem,
)
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_TOKEN_BYTES,
    PING_FRAME,
    PONG_FRAME,
    Code,
    FrameType,
    Scheme,
    Welcome,
    encode_auth,
    encode_close,
    encode_data,
    encode_error,
    encode_frame,
    encode_hello,
    encode_welcome,
)

# The linear-time test: its piece size, and the CPU time 16 MiB of them may take.
LINEAR_PIECE = 1024
LINEAR_CPU_BOUND = 1.0

STREAM = [
    encode_hello("alice", 5000),
    encode_welcome(Welcome(1, Scheme.SERVER, 5000, 15000)),
    PING_FRAME,
    PONG_FRAME,
    encode_data(b"payload"),
    encode_data(b""),
    encode_close(Code.GOING_AWAY),
    encode_error(Code.SERVER_FULL, "full"),
    encode_auth("fresh.token"),
]
STREAM_BYTES = b"".join(STREAM)
EXPECTED = [(frame[4], frame[HEADER_SIZE:]) for frame in STREAM]


def decoder() -> FrameDecoder:
    return FrameDecoder(DEFAULT_MAX_PAYLOAD)


def test_every_frame_type_round_trips() -> None:
    assert {ftype for ftype, _ in EXPECTED} == set(FrameType)
    assert decoder().feed(STREAM_BYTES) == EXPECTED


def test_coalesced_input_yields_every_frame_in_one_feed() -> None:
    frames = decoder().feed(PING_FRAME * 100)
    assert frames == [(FrameType.PING, b"")] * 100


@pytest.mark.parametrize("split", range(1, len(STREAM_BYTES)))
def test_a_split_at_any_byte_changes_nothing(split: int) -> None:
    dec = decoder()
    frames = dec.feed(STREAM_BYTES[:split]) + dec.feed(STREAM_BYTES[split:])
    assert frames == EXPECTED
    assert dec.buffered == 0


def test_byte_at_a_time() -> None:
    dec = decoder()
    frames = [frame for byte in STREAM_BYTES for frame in dec.feed(bytes([byte]))]
    assert frames == EXPECTED


def test_memoryview_input_is_copied_out() -> None:
    buf = bytearray(encode_data(b"abc"))
    frames = decoder().feed(memoryview(buf))
    buf[:] = b"\0" * len(buf)
    assert frames == [(FrameType.DATA, b"abc")]


def header(length: int, ftype: int, flags: int = 0) -> bytes:
    return struct.pack(">IBB", length, ftype, flags)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (header(0, FrameType.PING, 0x01), Code.RESERVED_BITS),
        (header(0, FrameType.PING, 0x80), Code.RESERVED_BITS),
        (header(0, 0x00), Code.UNKNOWN_TYPE),
        (header(0, 0x09), Code.UNKNOWN_TYPE),
        (header(0, 0xFF), Code.UNKNOWN_TYPE),
        (header(DEFAULT_MAX_PAYLOAD + 1, FrameType.DATA), Code.FRAME_TOO_LARGE),
        (header(0xFFFFFFFF, FrameType.DATA), Code.FRAME_TOO_LARGE),
        (header(1, FrameType.PING) + b"x", Code.MALFORMED),
        (header(1, FrameType.PONG), Code.MALFORMED),
    ],
)
def test_bad_headers_are_refused_with_their_code(data: bytes, code: Code) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decoder().feed(data)
    assert info.value.code == code


def test_oversized_length_is_refused_before_any_payload_arrives() -> None:
    dec = decoder()
    with pytest.raises(RemoteProtocolError) as info:
        dec.feed(header(10 * DEFAULT_MAX_PAYLOAD, FrameType.DATA))
    assert info.value.code == Code.FRAME_TOO_LARGE
    assert dec.buffered == 0


def test_held_bytes_cost_linear_time_however_the_stream_is_split() -> None:
    """A 16 MiB frame fed 1 KiB at a time: copying everything held for each piece
    costs seconds of CPU (main's decoder passed 1 s after 7.5 MiB), appending to one
    buffer about 0.05 s (process_time, which
    other load on the machine does not inflate; checked as it goes, so that a
    quadratic decoder fails within the bound rather than minutes later)."""
    size = 16 * 1024 * 1024
    frame = encode_data(bytes(size))
    decoding = FrameDecoder(size)
    frames = []
    started = time.process_time()
    for offset in range(0, len(frame), LINEAR_PIECE):
        frames += decoding.feed(frame[offset : offset + LINEAR_PIECE])
        assert time.process_time() - started < LINEAR_CPU_BOUND, f"{offset} bytes in"
    assert frames == [(FrameType.DATA, bytes(size))]
    assert decoding.buffered == 0


def test_frames_past_a_limit_are_held_for_a_feed_without_data() -> None:
    decoding = decoder()
    assert decoding.feed(PING_FRAME * 3 + PONG_FRAME[:2], limit=2) == [(FrameType.PING, b"")] * 2
    assert decoding.buffered == HEADER_SIZE + 2
    assert decoding.feed(b"", limit=2) == [(FrameType.PING, b"")]
    assert decoding.feed(PONG_FRAME[2:]) == [(FrameType.PONG, b"")]
    assert decoding.buffered == 0


def test_max_payload_is_inclusive() -> None:
    frame = encode_frame(FrameType.DATA, b"x" * 1024)
    assert FrameDecoder(1024).feed(frame) == [(FrameType.DATA, b"x" * 1024)]
    with pytest.raises(RemoteProtocolError):
        FrameDecoder(1023).feed(frame)


def hello_payload(version: int = 1, interval_ms: int = 0, name: bytes = b"n") -> bytes:
    return struct.pack(">BIB", version, interval_ms, len(name)) + name


def test_parse_hello() -> None:
    hello = parse_hello(hello_payload(1, 2500, "zoë".encode()))
    assert (hello.version, hello.interval_ms, hello.name) == (1, 2500, "zoë")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", Code.MALFORMED),
        (hello_payload(version=3), Code.UNSUPPORTED_VERSION),
        (hello_payload(version=0), Code.UNSUPPORTED_VERSION),
        (b"\x03", Code.UNSUPPORTED_VERSION),  # the version is judged before the shape
        (b"\x01\x00\x00", Code.MALFORMED),
        (hello_payload(name=b"abc")[:-1], Code.MALFORMED),
        (hello_payload(name=b"abc") + b"x", Code.MALFORMED),
        (hello_payload(name=b""), Code.BAD_NAME),
        (hello_payload(name=b"x" * 65), Code.BAD_NAME),
        (hello_payload(name=b"\xff\xfe"), Code.BAD_NAME),
        (hello_payload(name=b"evil\nINFO forged"), Code.BAD_NAME),
        (hello_payload(name=b"del\x7f"), Code.BAD_NAME),
    ],
)
def test_bad_hellos(payload: bytes, code: Code) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_hello(payload)
    assert info.value.code == code


def with_token(token: bytes, name: bytes = b"n") -> bytes:
    return hello_payload(name=name) + struct.pack(">H", len(token)) + token


def test_parse_hello_with_a_token() -> None:
    hello = parse_hello(with_token(b"eyJ.eyJ.sig-_~", name="zoë".encode()))
    assert (hello.name, hello.token) == ("zoë", "eyJ.eyJ.sig-_~")
    assert parse_hello(hello_payload()).token is None
    longest = "t" * MAX_TOKEN_BYTES
    assert parse_hello(encode_hello("n", 0, token=longest)[HEADER_SIZE:]).token == longest


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (hello_payload() + b"\x00", Code.MALFORMED),  # half a token length
        (with_token(b"abc")[:-1], Code.MALFORMED),
        (with_token(b"abc") + b"x", Code.MALFORMED),
        (with_token(b"abc", name=b""), Code.BAD_NAME),  # the name is judged first
        (with_token(b""), Code.UNAUTHORIZED),
        (with_token(b"t" * (MAX_TOKEN_BYTES + 1)), Code.UNAUTHORIZED),
        (with_token(b"two words"), Code.UNAUTHORIZED),
        (with_token(b"line\nbreak"), Code.UNAUTHORIZED),
        (with_token("é".encode()), Code.UNAUTHORIZED),
    ],
)
def test_bad_tokens(payload: bytes, code: Code) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_hello(payload)
    assert info.value.code == code


def test_token_problem_names_the_rule() -> None:
    assert token_problem(b"a.b.c") is None
    assert token_problem(b"") == f"token must be 1 to {MAX_TOKEN_BYTES} bytes"
    assert token_problem(b"a\x7f") == "token must be printable ASCII without spaces"


def real_client_hello() -> bytes:
    """The first bytes a real TLS client sends, made by OpenSSL in memory."""
    client = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost"
    )
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_a_tls_client_on_a_plain_port_is_told_so() -> None:
    hello = real_client_hello()
    assert looks_like_tls(hello[:HEADER_SIZE])
    with pytest.raises(RemoteProtocolError) as info:
        decoder().feed(hello)
    assert info.value.code == Code.RESERVED_BITS
    assert "looks like TLS" in info.value.message


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n", header(0, FrameType.PING, 0x01), bytes.fromhex("160301000501")[:5]],
)
def test_other_bad_input_is_not_called_tls(data: bytes) -> None:
    assert not looks_like_tls(data[:HEADER_SIZE])
    if len(data) >= HEADER_SIZE:
        with pytest.raises(RemoteProtocolError) as info:
            decoder().feed(data)
        assert "TLS" not in info.value.message


def test_parse_welcome_and_its_checks() -> None:
    payload = encode_welcome(Welcome(1, Scheme.CLIENT, 100, 300))[HEADER_SIZE:]
    assert parse_welcome(payload) == Welcome(1, Scheme.CLIENT, 100, 300)
    for bad, code in [
        (payload[:-1], Code.MALFORMED),
        (struct.pack(">BBII", 2, 0, 100, 300), Code.UNSUPPORTED_VERSION),
        (struct.pack(">BBII", 1, 7, 100, 300), Code.MALFORMED),
        (struct.pack(">BBII", 1, 0, 300, 300), Code.MALFORMED),
        (struct.pack(">BBII", 1, 0, 0, 300), Code.MALFORMED),
    ]:
        with pytest.raises(RemoteProtocolError) as info:
            parse_welcome(bad)
        assert info.value.code == code


def test_parse_close_and_error() -> None:
    assert parse_close(b"\x00\x01") == Code.GOING_AWAY
    assert parse_close(b"\x12\x34") == 0x1234  # unknown codes pass through
    assert parse_error(b"\x01\x03full") == (Code.SERVER_FULL, "full")
    assert parse_error(b"\x01\x03\xff") == (Code.SERVER_FULL, "\ufffd")
    for bad in (b"", b"\x00", b"\x00\x00\x00"):
        with pytest.raises(RemoteProtocolError):
            parse_close(bad)
    with pytest.raises(RemoteProtocolError):
        parse_error(b"\x01")


def test_frames_before_a_bad_header_travel_with_the_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decoder().feed(PING_FRAME + encode_data(b"x") + header(0, 0x42))
    assert info.value.code == Code.UNKNOWN_TYPE
    assert info.value.frames == [(FrameType.PING, b""), (FrameType.DATA, b"x")]

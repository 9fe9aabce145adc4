"""The construct schema of record and the struct fast path agree."""

from __future__ import annotations

import pytest

from hbloop.core.protocol import parse_hello
from hbloop.core.schema import (
    CLOSE,
    ERROR,
    FRAME,
    HEADER,
    HELLO,
    PROPERTY,
    PROPERTY_VALUES,
    TYPED_FRAME,
    WELCOME,
)
from hbloop.core.wire import (
    CODE_STRUCT,
    HEADER_SIZE,
    HEADER_STRUCT,
    HELLO_FIXED,
    MAX_TOKEN_BYTES,
    PING_FRAME,
    PONG_FRAME,
    PROPERTY_HEADER,
    TOKEN_LENGTH,
    U32_VALUE,
    WELCOME_STRUCT,
    Code,
    FrameType,
    Prop,
    Scheme,
    Welcome,
    encode_close,
    encode_data,
    encode_error,
    encode_frame,
    encode_hello,
    encode_welcome,
)

FRAMES = [
    encode_hello("alice", 10_000),
    encode_hello("ünïcødé-名前", 0),
    encode_hello("x" * 64, 0xFFFFFFFF),
    encode_hello("alice", 10_000, token="a.jwt.token"),
    encode_hello("x" * 64, 0, token="t" * MAX_TOKEN_BYTES),
    encode_welcome(Welcome(1, Scheme.CLIENT, 10_000, 30_000)),
    encode_welcome(Welcome(1, Scheme.SERVER, 2_000, 6_000)),
    PING_FRAME,
    PONG_FRAME,
    encode_data(b""),
    encode_data(b"hello"),
    encode_data(bytes(range(256)) * 4),
    encode_close(Code.NORMAL),
    encode_close(Code.GOING_AWAY),
    encode_error(Code.SERVER_FULL, "full"),
    encode_error(Code.BAD_NAME, ""),
]


def test_the_fixed_struct_formats_are_the_schemas_layouts() -> None:
    """wire.py writes each fixed layout of the schema out as a struct format, so that
    the per-frame path never imports construct: each packs what the schema builds."""
    assert HEADER_STRUCT.pack(5, FrameType.DATA, 0) == HEADER.build(
        {"length": 5, "type": "DATA", "flags": 0}
    )
    assert HEADER_STRUCT.size == HEADER.sizeof() == HEADER_SIZE
    welcome = {"scheme": "SERVER", "interval_ms": 2_000, "timeout_ms": 6_000}
    assert WELCOME_STRUCT.pack(1, Scheme.SERVER, 2_000, 6_000) == WELCOME.build(welcome)
    hello = {"interval_ms": 7, "name": "ab", "token": "t"}
    packed_hello = HELLO_FIXED.pack(1, 7, 2) + b"ab" + TOKEN_LENGTH.pack(1) + b"t"
    assert packed_hello == HELLO.build(hello)
    assert PROPERTY_HEADER.pack(Prop.TOKEN, 3) + b"abc" == PROPERTY.build(
        {"id": Prop.TOKEN, "value": b"abc"}
    )
    assert U32_VALUE.pack(70_000) == PROPERTY_VALUES[Prop.MAX_PAYLOAD].build(70_000)
    assert CODE_STRUCT.pack(Code.TIMEOUT) == CLOSE.build({"code": Code.TIMEOUT})


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: FrameType(f[4]).name)
def test_header_struct_agrees_with_construct(frame: bytes) -> None:
    parsed = HEADER.parse(frame)
    assert HEADER_STRUCT.unpack_from(frame) == (parsed.length, int(parsed.type), parsed.flags)
    assert parsed.length == len(frame) - HEADER_SIZE


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: FrameType(f[4]).name)
def test_construct_rebuilds_the_fast_path_bytes(frame: bytes) -> None:
    generic = FRAME.parse(frame)
    assert (
        FRAME.build({"type": generic.type, "flags": 0, "payload_bytes": generic.payload_bytes})
        == frame
    )
    typed = TYPED_FRAME.parse(frame)
    assert typed.type == FrameType(frame[4]).name


@pytest.mark.parametrize("token", [None, "k", "header.claims.signature"])
def test_hello_payload_matches_schema(token: str | None) -> None:
    fields = {"version": 1, "interval_ms": 1234, "name": "alice", "token": token}
    frame = encode_hello("alice", 1234, token=token)
    assert HELLO.parse(frame[HEADER_SIZE:]) == fields
    assert HELLO.build(fields) == frame[HEADER_SIZE:]


def test_hello_without_a_token_is_unchanged() -> None:
    # The credential is an addition: a HELLO without one is byte for byte version 1's.
    assert encode_hello("alice", 10_000) == bytes.fromhex("0000000b010001000027100561 6c696365")
    with_token = encode_hello("alice", 10_000, token="k")
    assert with_token[HEADER_SIZE:] == encode_hello("alice", 10_000)[HEADER_SIZE:] + b"\x00\x01k"


def test_a_hello_never_shows_its_token() -> None:
    hello = parse_hello(encode_hello("alice", 0, token="s3cret")[HEADER_SIZE:])
    assert hello.token == "s3cret"
    assert "s3cret" not in repr(hello)


def test_welcome_payload_matches_schema() -> None:
    frame = encode_welcome(Welcome(1, Scheme.SERVER, 500, 1500))
    parsed = WELCOME.parse(frame[HEADER_SIZE:])
    assert (parsed.version, parsed.scheme, parsed.interval_ms, parsed.timeout_ms) == (
        1,
        "SERVER",
        500,
        1500,
    )


def test_close_and_error_payloads_match_schema() -> None:
    assert CLOSE.parse(encode_close(Code.TIMEOUT)[HEADER_SIZE:]).code == Code.TIMEOUT
    error = ERROR.parse(encode_error(Code.MALFORMED, "bad")[HEADER_SIZE:])
    assert (error.code, error.message) == (Code.MALFORMED, "bad")


def test_error_message_is_capped_without_splitting_a_character() -> None:
    frame = encode_error(Code.MALFORMED, "é" * 500)
    message = ERROR.parse(frame[HEADER_SIZE:]).message
    assert message == "é" * 100  # 200 bytes of two-byte characters


def test_heartbeats_are_header_only() -> None:
    assert PING_FRAME == encode_frame(FrameType.PING) == bytes.fromhex("000000000300")
    assert bytes.fromhex("000000000400") == PONG_FRAME

"""The Python codec against tests/vectors.json, through construct and the fast path.

The JSON is the committed statement of the wire format (tests/gen_vectors.py wrote
it from protocol.md's tables); these tests read it and never regenerate it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from construct import ConstructError, GreedyRange

from hbloop.core.policy import grant, grant_problems
from hbloop.core.protocol import (
    FrameDecoder,
    RemoteProtocolError,
    parse_close,
    parse_error,
    parse_hello,
    parse_welcome,
)
from hbloop.core.wire import (
    FRAME,
    HEADER,
    HEADER_SIZE,
    HEADER_STRUCT,
    TYPED_FRAME,
    Code,
    FrameType,
    Scheme,
)

from conftest import ROOT

VECTORS: dict[str, Any] = json.loads((ROOT / "tests" / "vectors.json").read_text("utf-8"))
MAX_PAYLOAD: int = VECTORS["max_payload"]
Fields = dict[str, Any]


def _name(vector: dict[str, Any]) -> str:
    return str(vector["name"])


def _code_name(code: int) -> str | None:
    return Code(code).name if code in Code._value2member_map_ else None


def fast_fields(ftype: int, payload: bytes) -> Fields:
    """Decode a payload with the struct fast path, in the vectors' field names."""
    kind = FrameType(ftype)
    if kind is FrameType.HELLO:
        hello = parse_hello(payload)
        return {
            "version": hello.version,
            "interval_ms": hello.interval_ms,
            "name": hello.name,
            "token": hello.token,
        }
    if kind is FrameType.WELCOME:
        welcome = parse_welcome(payload)
        return {
            "version": welcome.version,
            "scheme": int(welcome.scheme),
            "interval_ms": welcome.interval_ms,
            "timeout_ms": welcome.timeout_ms,
        }
    if kind is FrameType.DATA:
        return {"data_hex": payload.hex()}
    if kind is FrameType.CLOSE:
        code = parse_close(payload)
        return {"code": code, "code_name": _code_name(code)}
    if kind is FrameType.ERROR:
        code, message = parse_error(payload)
        return {"code": code, "code_name": _code_name(code), "message": message}
    return {}


def fast_decode(data: bytes) -> tuple[str, Fields]:
    frames = FrameDecoder(MAX_PAYLOAD).feed(data)
    assert len(frames) == 1
    ftype, payload = frames[0]
    return FrameType(ftype).name, fast_fields(ftype, payload)


def construct_fields(kind: str, payload: Any) -> Fields:
    """The same fields, from construct's parse of TYPED_FRAME."""
    if kind == "HELLO":
        return {
            "version": payload.version,
            "interval_ms": payload.interval_ms,
            "name": payload.name,
            "token": payload.token,
        }
    if kind == "WELCOME":
        return {
            "version": payload.version,
            "scheme": int(Scheme[str(payload.scheme)]),
            "interval_ms": payload.interval_ms,
            "timeout_ms": payload.timeout_ms,
        }
    if kind == "DATA":
        return {"data_hex": bytes(payload).hex()}
    if kind == "CLOSE":
        return {"code": payload.code, "code_name": _code_name(payload.code)}
    if kind == "ERROR":
        return {
            "code": payload.code,
            "code_name": _code_name(payload.code),
            "message": payload.message,
        }
    return {}


def construct_payload(kind: str, fields: Fields) -> Any:
    """What TYPED_FRAME.build needs to rebuild a vector from its fields."""
    if kind == "WELCOME":
        return {**fields, "scheme": Scheme(fields["scheme"]).name}
    if kind == "DATA":
        return bytes.fromhex(fields["data_hex"])
    if kind in ("CLOSE", "ERROR"):
        return {key: value for key, value in fields.items() if key != "code_name"}
    return fields or None


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=_name)
def test_valid_vector_fast_path(vector: dict[str, Any]) -> None:
    assert fast_decode(bytes.fromhex(vector["hex"])) == (vector["type"], vector["fields"])


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=_name)
def test_valid_vector_construct(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    parsed = TYPED_FRAME.parse(data)
    kind = str(parsed.type)
    assert (kind, parsed.flags, parsed.length) == (vector["type"], 0, len(data) - HEADER_SIZE)
    assert construct_fields(kind, parsed.payload) == vector["fields"]
    rebuilt = TYPED_FRAME.build(
        {
            "length": parsed.length,
            "type": kind,
            "flags": 0,
            "payload": construct_payload(kind, vector["fields"]),
        }
    )
    assert rebuilt == data


@pytest.mark.parametrize("vector", VECTORS["malformed"], ids=_name)
def test_malformed_vector_fast_path(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    # A header error must be raised from the header alone, before any payload.
    fed = data[:HEADER_SIZE] if vector["stage"] == "header" else data
    with pytest.raises(RemoteProtocolError) as raised:
        fast_decode(fed)
    assert raised.value.code.name == vector["error"]


@pytest.mark.parametrize("vector", VECTORS["malformed"], ids=_name)
def test_malformed_vector_construct(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    header = HEADER.parse(data[:HEADER_SIZE])
    # construct and struct read the same header, whatever is wrong with it.
    assert (header.length, int(header.type), header.flags) == HEADER_STRUCT.unpack(
        data[:HEADER_SIZE]
    )
    if vector["stage"] == "shape":
        with pytest.raises(ConstructError):
            TYPED_FRAME.parse(data)


@pytest.mark.parametrize("vector", VECTORS["streams"], ids=_name)
def test_stream_vector(vector: dict[str, Any]) -> None:
    decoder = FrameDecoder(MAX_PAYLOAD)
    frames = [frame for chunk in vector["chunks"] for frame in decoder.feed(bytes.fromhex(chunk))]
    expected = [bytes.fromhex(frame) for frame in vector["frames"]]
    assert [(t, p) for t, p in frames] == [(f[4], f[HEADER_SIZE:]) for f in expected]
    assert decoder.buffered == vector["pending"]
    whole = b"".join(bytes.fromhex(chunk) for chunk in vector["chunks"])
    complete = whole[: len(whole) - vector["pending"]]
    by_construct = GreedyRange(FRAME).parse(complete)
    assert [(int(f.type), f.payload_bytes) for f in by_construct] == frames


@pytest.mark.parametrize("vector", VECTORS["grants"]["valid"], ids=_name)
def test_grant_vector(vector: dict[str, Any]) -> None:
    config = vector["config"]
    args = (
        config["interval_ms"],
        config["timeout_ms"],
        config["min_interval_ms"],
        config["max_interval_ms"],
    )
    assert grant_problems(*args) == []
    assert grant(*args, vector["request_ms"]) == (vector["interval_ms"], vector["timeout_ms"])


@pytest.mark.parametrize("vector", VECTORS["grants"]["invalid"], ids=_name)
def test_invalid_configuration_vector(vector: dict[str, Any]) -> None:
    config = vector["config"]
    assert grant_problems(
        config["interval_ms"],
        config["timeout_ms"],
        config["min_interval_ms"],
        config["max_interval_ms"],
    )


def test_every_frame_type_and_error_code_has_a_vector() -> None:
    assert {v["type"] for v in VECTORS["valid"]} == {t.name for t in FrameType}
    decoder_errors = {v["error"] for v in VECTORS["malformed"]}
    assert decoder_errors == {
        "RESERVED_BITS",
        "UNKNOWN_TYPE",
        "FRAME_TOO_LARGE",
        "MALFORMED",
        "UNSUPPORTED_VERSION",
        "BAD_NAME",
        "UNAUTHORIZED",
    }
    assert VECTORS["codes"] == {code.name: int(code) for code in Code}
    assert VECTORS["types"] == {t.name: int(t) for t in FrameType}


def test_protocol_md_examples_are_vectors() -> None:
    examples = (ROOT / "protocol.md").read_text("utf-8").split("## 7. Examples")[1]
    examples = examples.split("## 8.")[0]
    shown = re.findall(r"`((?:[0-9a-f]{2} )+[0-9a-f]{2})`", examples)
    known = {v["hex"] for v in VECTORS["valid"] + VECTORS["malformed"]}
    assert len(shown) >= 10
    assert [hexes for hexes in shown if hexes not in known] == []

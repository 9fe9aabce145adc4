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
    parse_auth,
    parse_close,
    parse_error,
    parse_hello,
    parse_welcome,
)
from hbloop.core.schema import FRAME, HEADER, PROPERTY_VALUES, TYPED_FRAME
from hbloop.core.wire import (
    HEADER_SIZE,
    HEADER_STRUCT,
    MUST_UNDERSTAND,
    VERSION_2,
    Code,
    FrameType,
    Hello,
    Prop,
    Scheme,
    Welcome,
)

from conftest import ROOT

VECTORS: dict[str, Any] = json.loads((ROOT / "tests" / "vectors.json").read_text("utf-8"))
MAX_PAYLOAD: int = VECTORS["max_payload"]
Fields = dict[str, Any]


def _name(vector: dict[str, Any]) -> str:
    return str(vector["name"])


def _code_name(code: int) -> str | None:
    return Code(code).name if code in Code._value2member_map_ else None


def hello_fields(hello: Hello) -> Fields:
    return {
        "version": hello.version,
        "interval_ms": hello.interval_ms,
        "name": hello.name,
        "token": hello.token,
    }


def welcome_fields(welcome: Welcome) -> Fields:
    return {
        "version": welcome.version,
        "scheme": int(welcome.scheme),
        "interval_ms": welcome.interval_ms,
        "timeout_ms": welcome.timeout_ms,
    }


def fast_fields(ftype: int, payload: bytes) -> Fields:
    """Decode a payload with the struct fast path, in the vectors' field names."""
    kind = FrameType(ftype)
    if kind is FrameType.HELLO:
        return hello_fields(parse_hello(payload))
    if kind is FrameType.WELCOME:
        return welcome_fields(parse_welcome(payload))
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


V2: dict[str, list[dict[str, Any]]] = VECTORS["v2"]
V2_FIELDS = {
    "HELLO": ("token", "max_payload"),
    "WELCOME": ("max_payload", "reconnect_window_ms", "reauth"),
    "AUTH": ("token",),
}


def v2_fast_fields(ftype: int, payload: bytes) -> Fields:
    """A version 2 HELLO or WELCOME through the fast path, in the vectors' names (the
    raw properties are construct's business: the fast path keeps only known ones)."""
    if ftype == FrameType.AUTH:
        return {"token": parse_auth(payload)}
    if ftype == FrameType.HELLO:
        hello = parse_hello(payload)
        return {**hello_fields(hello), "max_payload": hello.max_payload}
    welcome = parse_welcome(payload, VERSION_2)
    return {
        **welcome_fields(welcome),
        "max_payload": welcome.max_payload,
        "reconnect_window_ms": welcome.reconnect_window_ms,
        "reauth": welcome.reauth,
    }


def construct_property_values(kind: str, properties: Any) -> Fields:
    """The registered properties' values as construct's PROPERTY_VALUES decode them."""
    names = {"token": Prop.TOKEN, "max_payload": Prop.MAX_PAYLOAD}
    if kind == "WELCOME":
        names = {"max_payload": Prop.MAX_PAYLOAD, "reconnect_window_ms": Prop.RECONNECT_WINDOW}
        values: Fields = {"reauth": Prop.REAUTH in {p.id & ~MUST_UNDERSTAND for p in properties}}
    else:
        values = {}
    if kind == "AUTH":
        names = {"token": Prop.TOKEN}
    by_id = {p.id & ~MUST_UNDERSTAND: p.value for p in properties}
    for field, ident in names.items():
        raw = by_id.get(ident)
        parsed = None if raw is None else PROPERTY_VALUES[ident].parse(raw)
        values[field] = parsed
    return values


@pytest.mark.parametrize("vector", V2["valid"], ids=_name)
def test_v2_valid_vector_fast_path(vector: dict[str, Any]) -> None:
    frames = FrameDecoder(MAX_PAYLOAD).feed(bytes.fromhex(vector["hex"]))
    assert [FrameType(t).name for t, _ in frames] == [vector["type"]]
    expected = {k: v for k, v in vector["fields"].items() if k != "properties"}
    assert v2_fast_fields(*frames[0]) == expected


@pytest.mark.parametrize("vector", V2["valid"], ids=_name)
def test_v2_valid_vector_construct(vector: dict[str, Any]) -> None:
    """construct, the schema of record, reads the same fields and property values as
    the fast path, and rebuilds the bytes from the raw properties."""
    data = bytes.fromhex(vector["hex"])
    parsed = TYPED_FRAME.parse(data)
    kind = str(parsed.type)
    fields = dict(vector["fields"])
    raw = fields.pop("properties")
    assert [{"id": p.id, "value_hex": p.value.hex()} for p in parsed.payload.properties] == raw
    values = {name: fields.pop(name) for name in V2_FIELDS[kind]}
    assert construct_property_values(kind, parsed.payload.properties) == values
    payload = {
        **fields,
        "properties": [{"id": p["id"], "value": bytes.fromhex(p["value_hex"])} for p in raw],
    }
    if kind == "WELCOME":
        payload["scheme"] = Scheme(fields["scheme"]).name
        assert int(Scheme[str(parsed.payload.scheme)]) == fields["scheme"]
    assert {k: parsed.payload[k] for k in fields if k != "scheme"} == {
        k: v for k, v in fields.items() if k != "scheme"
    }
    rebuilt = TYPED_FRAME.build(
        {"length": parsed.length, "type": kind, "flags": 0, "payload": payload}
    )
    assert rebuilt == data


@pytest.mark.parametrize("vector", V2["malformed"], ids=_name)
def test_v2_malformed_vector(vector: dict[str, Any]) -> None:
    """Refused by the fast path with its code; construct refuses the shape errors."""
    data = bytes.fromhex(vector["hex"])
    frames = FrameDecoder(MAX_PAYLOAD).feed(data)
    with pytest.raises(RemoteProtocolError) as raised:
        v2_fast_fields(*frames[0])
    assert raised.value.code.name == vector["error"]
    if vector["stage"] == "shape":
        with pytest.raises(ConstructError):
            TYPED_FRAME.parse(data)


def test_v2_vectors_cover_every_property_case() -> None:
    names = " ".join(v["name"] for v in V2["valid"] + V2["malformed"])
    for case in ("unknown property, skipped", "repeated", "cut short", "must-understand"):
        assert case in names
    assert {v["error"] for v in V2["malformed"]} == {
        "MALFORMED",
        "UNSUPPORTED_PROPERTY",
        "UNSUPPORTED_VERSION",
        "BAD_NAME",
        "UNAUTHORIZED",
    }


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
    # AUTH is version 2's alone (A1): its vectors are in 'v2'.
    assert {v["type"] for v in VECTORS["valid"]} == {t.name for t in FrameType} - {"AUTH"}
    assert "AUTH" in {v["type"] for v in V2["valid"]}
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
    groups = (VECTORS["valid"], VECTORS["malformed"], V2["valid"], V2["malformed"])
    known = {v["hex"] for group in groups for v in group}
    assert len(shown) >= 10
    assert [hexes for hexes in shown if hexes not in known] == []

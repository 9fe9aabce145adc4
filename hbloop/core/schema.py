"""The schema of record of the hbloop wire format, declared with ``construct``.

These declarations are the contract: protocol.md documents them, tests/vectors.json
is checked against them, and ``hbloop.core.wire``'s ``struct`` formats, which the
per-frame path uses, are proved to agree with them on every vector
(tests/test_wire.py). Nothing on a server's or client's path imports this module:
construct is slow to import and slower to parse, and it is here to be read, to
document and to validate.
"""

from __future__ import annotations

from typing import Any

from construct import (
    Bytes,
    Check,
    Const,
    Enum,
    FixedSized,
    GreedyBytes,
    GreedyRange,
    GreedyString,
    Int8ub,
    Int16ub,
    Int32ub,
    PascalString,
    Pass,
    Prefixed,
    Rebuild,
    Select,
    Struct,
    Subconstruct,
    Switch,
    Terminated,
    len_,
    stream_iseof,
    this,
)

from hbloop.core.wire import (
    AUTH_PROPS,
    HELLO_PROPS,
    MUST_UNDERSTAND,
    VERSION_1,
    VERSION_2,
    WELCOME_PROPS,
    FrameType,
    Prop,
    Scheme,
)

FrameTypeField = Enum(Int8ub, FrameType)

HEADER = Struct(
    "length" / Int32ub,
    "type" / FrameTypeField,
    "flags" / Int8ub,  # reserved: MUST be zero in version 1
)


class Trailing(Subconstruct):  # type: ignore[misc]  # construct is untyped
    """``subcon`` if the payload goes on, else None; None builds nothing.

    construct's ``Optional`` would also turn a *malformed* field into None and build
    nothing for a value it cannot build; this one fails loudly instead.
    """

    def __init__(self, subcon: Any) -> None:
        super().__init__(subcon)
        self.flagbuildnone = True

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        if stream_iseof(stream):
            return None
        return self.subcon._parsereport(stream, context, path)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        return None if obj is None else self.subcon._build(obj, stream, context, path)


HELLO = Struct(
    "version" / Const(VERSION_1, Int8ub),
    "interval_ms" / Int32ub,  # 0 asks for the server's default
    "name" / PascalString(Int8ub, "utf8"),
    # The credential is there only when the payload goes on after the name, so that a
    # HELLO without one is byte for byte what it always was.
    "token" / Trailing(PascalString(Int16ub, "ascii")),
    Terminated,
)

WELCOME = Struct(
    "version" / Const(VERSION_1, Int8ub),
    "scheme" / Enum(Int8ub, Scheme),
    "interval_ms" / Int32ub,
    "timeout_ms" / Int32ub,
    Terminated,
)

# Version 2: the fixed fields of version 1, then typed properties to the end of the
# payload. A property is an identifier (its top bit MUST_UNDERSTAND), a u16 length and
# that many bytes; a receiver skips one it does not know unless that bit is set.
PROPERTY = Struct("id" / Int16ub, "value" / Prefixed(Int16ub, GreedyBytes))

# The value of each registered property, inside its length.
PROPERTY_VALUES = {
    Prop.TOKEN: GreedyString("ascii"),
    Prop.MAX_PAYLOAD: Int32ub,
    Prop.RECONNECT_WINDOW: Int32ub,
    Prop.REAUTH: Bytes(0),
}


def _block_rule(known: frozenset[Prop]) -> Any:
    """The property block's shape beyond its framing: no identifier twice (with or
    without MUST_UNDERSTAND), and each known fixed-size property of its size."""

    def holds(ctx: Any) -> bool:
        ids = [p.id & ~MUST_UNDERSTAND for p in ctx.properties]
        sizes = [
            (PROPERTY_VALUES[i].sizeof(), len(p.value))
            for i, p in zip(ids, ctx.properties, strict=True)
            if i in known and i != Prop.TOKEN
        ]
        return len(set(ids)) == len(ids) and all(want == got for want, got in sizes)

    return Check(holds)


HELLO_V2 = Struct(
    "version" / Const(VERSION_2, Int8ub),
    "interval_ms" / Int32ub,
    "name" / PascalString(Int8ub, "utf8"),
    "properties" / GreedyRange(PROPERTY),
    Terminated,
    _block_rule(HELLO_PROPS),
)

WELCOME_V2 = Struct(
    "version" / Const(VERSION_2, Int8ub),
    "scheme" / Enum(Int8ub, Scheme),
    "interval_ms" / Int32ub,
    "timeout_ms" / Int32ub,
    "properties" / GreedyRange(PROPERTY),
    Terminated,
    _block_rule(WELCOME_PROPS),
)

# AUTH (version 2 only): a property block and nothing else.
AUTH = Struct(
    "properties" / GreedyRange(PROPERTY),
    Terminated,
    _block_rule(AUTH_PROPS),
)

CLOSE = Struct("code" / Int16ub, Terminated)

ERROR = Struct("code" / Int16ub, "message" / GreedyString("utf8"))

EMPTY = Struct(Terminated)

FRAME = Struct(
    "length" / Rebuild(Int32ub, len_(this.payload_bytes)),
    "type" / FrameTypeField,
    "flags" / Int8ub,
    "payload_bytes" / Bytes(this.length),
)

PAYLOADS = {
    # The version byte picks the layout.
    FrameType.HELLO: Select(HELLO, HELLO_V2),
    FrameType.WELCOME: Select(WELCOME, WELCOME_V2),
    FrameType.PING: EMPTY,
    FrameType.PONG: EMPTY,
    FrameType.DATA: GreedyBytes,
    FrameType.CLOSE: CLOSE,
    FrameType.ERROR: ERROR,
    FrameType.AUTH: AUTH,
}

# A whole frame with its payload decoded by type: what protocol.md documents.
TYPED_FRAME = Struct(
    "length" / Int32ub,
    "type" / FrameTypeField,
    "flags" / Int8ub,
    # construct's Enum yields names, so the switch is keyed by name.
    "payload"
    / FixedSized(
        this.length, Switch(this.type, {t.name: sub for t, sub in PAYLOADS.items()}, default=Pass)
    ),
)

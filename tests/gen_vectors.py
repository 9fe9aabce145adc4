"""Write tests/vectors.json: the protocol's test vectors, built from protocol.md by hand.

The bytes are packed here with ``struct`` straight from the tables in protocol.md, not
with hbloop's encoders, so that tests/test_vectors.py checks the codec against an
independent statement of the format. Run ``python tests/gen_vectors.py`` after
changing a vector and commit the JSON; the tests read the JSON, they never
regenerate it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

OUT = Path(__file__).with_name("vectors.json")

# The receiver limit the FRAME_TOO_LARGE vectors are stated against: the hbloop
# server's default maximum payload (protocol.md, F2).
MAX_PAYLOAD = 65536

# Every receiver must accept payloads of this size (F2), so a DATA frame of exactly
# this length is valid everywhere.
MIN_MAX_PAYLOAD = 1024

TYPES = {
    "HELLO": 1,
    "WELCOME": 2,
    "PING": 3,
    "PONG": 4,
    "DATA": 5,
    "CLOSE": 6,
    "ERROR": 7,
    "AUTH": 8,
}
CODES = {
    "NORMAL": 0x0000,
    "GOING_AWAY": 0x0001,
    "TIMEOUT": 0x0002,
    "HANDSHAKE_TIMEOUT": 0x0003,
    "TAKEN_OVER": 0x0004,
    "CREDENTIALS_EXPIRED": 0x0005,
    "UNSUPPORTED_VERSION": 0x0101,
    "BAD_NAME": 0x0102,
    "SERVER_FULL": 0x0103,
    "UNAUTHORIZED": 0x0104,
    "NAME_TAKEN": 0x0105,
    "UNSUPPORTED_PROPERTY": 0x0106,
    "FRAME_TOO_LARGE": 0x0201,
    "UNKNOWN_TYPE": 0x0202,
    "RESERVED_BITS": 0x0203,
    "MALFORMED": 0x0204,
    "HELLO_REQUIRED": 0x0205,
    "DUPLICATE_HELLO": 0x0206,
    "UNEXPECTED_FRAME": 0x0207,
    "TOO_MANY_PINGS": 0x0208,
}
CODE_NAMES = {value: name for name, value in CODES.items()}


def frame(ftype: int, payload: bytes = b"", flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">IBB", len(payload) if length is None else length, ftype, flags) + payload


# The longest credential HELLO may carry (protocol.md, Authentication and TLS).
MAX_TOKEN_BYTES = 4096

# A real credential: an ES256 JWT for "alice" made by PyJWT (header, claims, signature).
JWT = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJhbGljZSIsImV4cCI6MTc2NDU0NzIwMH0"
    ".N18cM9CtfwO5RHdUlU2G30_cSC2ij_R7jl_pr1LlCULSWm2q7WCvJ0-KV7S35Q1qBrBzakDC0mCEJO3Uzar-dA"
)


def hello_payload(
    name: bytes, interval_ms: int = 10000, version: int = 1, token: bytes | None = None
) -> bytes:
    payload = struct.pack(">BIB", version, interval_ms, len(name)) + name
    return payload if token is None else payload + struct.pack(">H", len(token)) + token


# Version 2's properties (protocol.md section 1, Properties): identifier u16, whose top
# bit asks the receiver to refuse what it does not know, length u16, value.
MUST_UNDERSTAND = 0x8000
TOKEN, MAX_PAYLOAD_PROP, RECONNECT_WINDOW, REAUTH = 0x0001, 0x0002, 0x0003, 0x0004


def prop(ident: int, value: bytes) -> bytes:
    return struct.pack(">HH", ident, len(value)) + value


def props_of(raw: bytes) -> list[dict[str, object]]:
    """A property block as the vectors list it: each id with its value, in order."""
    props: list[dict[str, object]] = []
    while raw:
        ident, length = struct.unpack_from(">HH", raw)
        props.append({"id": ident, "value_hex": raw[4 : 4 + length].hex()})
        raw = raw[4 + length :]
    return props


def hello_v2(name: bytes, interval_ms: int = 10000, props: bytes = b"") -> bytes:
    return struct.pack(">BIB", 2, interval_ms, len(name)) + name + props


def welcome_v2(props: bytes = b"", scheme: int = 0, interval: int = 10000) -> bytes:
    return struct.pack(">BBII", 2, scheme, interval, 3 * interval) + props


def spaced(data: bytes) -> str:
    return data.hex(" ")


def valid_vectors() -> list[dict[str, object]]:
    vectors: list[dict[str, object]] = []

    def add(name: str, ftype: str, payload: bytes, fields: dict[str, object]) -> None:
        data = frame(TYPES[ftype], payload)
        vectors.append({"name": name, "hex": spaced(data), "type": ftype, "fields": fields})

    for label, name, interval, token in (
        ("alice", "alice", 10000, None),
        ("default interval, non-ASCII name", "dévice-7", 0, None),
        ("64-byte name (the longest)", "n" * 64, 500, None),
        ("1-byte name, largest interval", "x", 0xFFFFFFFF, None),
        ("alice with a 1-byte token", "alice", 10000, "k"),
        ("alice with a JWT", "alice", 10000, JWT),
        ("non-ASCII name, every token character", "dévice-7", 0, bytes(range(0x21, 0x7F)).decode()),
        (f"with a {MAX_TOKEN_BYTES}-byte token (the longest)", "x", 0, "t" * MAX_TOKEN_BYTES),
        ("name with accents, two scripts and punctuation", "café-日本_7", 0, None),
    ):
        add(
            f"HELLO {label}",
            "HELLO",
            hello_payload(name.encode(), interval, token=None if token is None else token.encode()),
            {"version": 1, "interval_ms": interval, "name": name, "token": token},
        )
    for scheme, interval, timeout in (
        (0, 10000, 30000),
        (1, 2000, 6000),
        (1, 100, 300),
        (0, 5000, 10000),  # exactly twice the interval: the least a client accepts (H3)
    ):
        add(
            f"WELCOME scheme {scheme} interval {interval} timeout {timeout}",
            "WELCOME",
            struct.pack(">BBII", 1, scheme, interval, timeout),
            {"version": 1, "scheme": scheme, "interval_ms": interval, "timeout_ms": timeout},
        )
    add("PING", "PING", b"", {})
    add("PONG", "PONG", b"", {})
    for data in (b"hi", b"", bytes(range(256)), b"x" * MIN_MAX_PAYLOAD):
        add(f"DATA of {len(data)} bytes", "DATA", data, {"data_hex": data.hex()})
    for code in (0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x7ABC):
        add(
            f"CLOSE {CODE_NAMES.get(code, 'unknown code (accepted as a generic close)')}",
            "CLOSE",
            struct.pack(">H", code),
            {"code": code, "code_name": CODE_NAMES.get(code)},
        )
    for code, message in (
        (0x0103, "full"),
        (0x0204, ""),
        (0x0102, "name contains control characters"),
        (0x0104, "token expired"),
        (0x0105, "name online elsewhere"),
        (0x0999, "unknown code, accepted as a generic error"),
        (0x0201, "é" * 100),
    ):
        add(
            f"ERROR {CODE_NAMES.get(code, hex(code))} with a {len(message.encode())}-byte message",
            "ERROR",
            struct.pack(">H", code) + message.encode(),
            {"code": code, "code_name": CODE_NAMES.get(code), "message": message},
        )
    return vectors


def malformed_vectors() -> list[dict[str, object]]:
    vectors: list[dict[str, object]] = []

    def add(name: str, data: bytes, error: str, stage: str) -> None:
        vectors.append({"name": name, "hex": spaced(data), "error": error, "stage": stage})

    # Header errors: detectable from the 6 header bytes alone (F1, F3), in the order
    # flags, type, length, empty-payload types.
    add("PING with flag bit 0x01", frame(3, flags=0x01), "RESERVED_BITS", "header")
    add("DATA with flag bit 0x80", frame(5, b"hi", flags=0x80), "RESERVED_BITS", "header")
    add("flags and type both wrong: flags win", frame(0x09, flags=1), "RESERVED_BITS", "header")
    add("type 0x00", frame(0x00), "UNKNOWN_TYPE", "header")
    # 0x08 is version 2's AUTH: a version 1 connection answers it UNKNOWN_TYPE too
    # (A1), but from its state, not from the header; see the 'v2' AUTH vectors.
    add("type 0x09", frame(0x09), "UNKNOWN_TYPE", "header")
    add("type 0x0a", frame(0x0A), "UNKNOWN_TYPE", "header")
    add("type 0xff with a payload", frame(0xFF, b"abc"), "UNKNOWN_TYPE", "header")
    add(
        "unknown type and huge length: type wins",
        frame(0x09, length=0xFFFFFFFF),
        "UNKNOWN_TYPE",
        "header",
    )
    add(
        f"DATA of {MAX_PAYLOAD + 1} bytes, header only",
        frame(5, length=MAX_PAYLOAD + 1),
        "FRAME_TOO_LARGE",
        "header",
    )
    add("DATA of 1 MiB + 1, header only", frame(5, length=0x100001), "FRAME_TOO_LARGE", "header")
    add(
        "HELLO of 2^32-1 bytes, header only",
        frame(1, length=0xFFFFFFFF),
        "FRAME_TOO_LARGE",
        "header",
    )
    add("PING with a 1-byte payload", frame(3, b"\x00"), "MALFORMED", "header")
    add("PONG with a payload, header only", frame(4, length=4), "MALFORMED", "header")
    # A TLS ClientHello sent to a plain port: record type 0x16, version 3.x, and the
    # handshake type (ClientHello, 1) lands in flags. Receivers may say "looks like TLS".
    add(
        "TLS ClientHello record on a plain port",
        bytes.fromhex("16 03 01 02 00 01 00 01 fc 03 03"),
        "RESERVED_BITS",
        "header",
    )

    # HELLO: version first, then shape, then the name (H2).
    add(
        "HELLO version 3",
        frame(1, hello_payload(b"alice", version=3)),
        "UNSUPPORTED_VERSION",
        "content",
    )
    add(
        "HELLO version 0",
        frame(1, hello_payload(b"alice", version=0)),
        "UNSUPPORTED_VERSION",
        "content",
    )
    add(
        "HELLO version 3, 1-byte payload: version first",
        frame(1, b"\x03"),
        "UNSUPPORTED_VERSION",
        "content",
    )
    add("HELLO with an empty payload", frame(1), "MALFORMED", "shape")
    add(
        "HELLO of 5 bytes (no name length)", frame(1, b"\x01\x00\x00\x27\x10"), "MALFORMED", "shape"
    )
    add(
        "HELLO name length 5, 4 name bytes",
        frame(1, struct.pack(">BIB", 1, 10000, 5) + b"alic"),
        "MALFORMED",
        "shape",
    )
    add(
        "HELLO name length 3, 5 name bytes",
        frame(1, struct.pack(">BIB", 1, 10000, 3) + b"alice"),
        "MALFORMED",
        "shape",
    )
    add("HELLO with an empty name", frame(1, hello_payload(b"")), "BAD_NAME", "content")
    add("HELLO with a 65-byte name", frame(1, hello_payload(b"n" * 65)), "BAD_NAME", "content")
    add("HELLO name not UTF-8", frame(1, hello_payload(b"\xff\xfe")), "BAD_NAME", "content")
    add(
        "HELLO name with a truncated UTF-8 sequence",
        frame(1, hello_payload(b"d\xc3")),
        "BAD_NAME",
        "content",
    )
    add("HELLO name with a newline", frame(1, hello_payload(b"a\nb")), "BAD_NAME", "content")
    add("HELLO name with NUL", frame(1, hello_payload(b"a\x00")), "BAD_NAME", "content")
    add("HELLO name with DEL (0x7f)", frame(1, hello_payload(b"a\x7f")), "BAD_NAME", "content")
    # Not only C0: any character of Unicode category Cc (C1 too), Cf (format), Zl or
    # Zp can reorder, hide or split the log line a name is written into.
    for label, char in (
        ("U+202E RIGHT-TO-LEFT OVERRIDE (Cf)", "\u202e"),
        ("U+200B ZERO WIDTH SPACE (Cf)", "\u200b"),
        ("U+0085 NEXT LINE (C1, Cc)", "\x85"),
        ("U+2028 LINE SEPARATOR (Zl)", "\u2028"),
        # Unassigned (Cn) code points are refused too, so that receivers on different
        # Unicode versions agree: U+0890 is Cf from Unicode 14.0 and unassigned before.
        ("U+0890 ARABIC POUND MARK ABOVE (Cf since Unicode 14.0)", "\u0890"),
        ("U+0378, unassigned (Cn)", "\u0378"),
    ):
        name = f"a{char}b".encode()
        add(f"HELLO name with {label}", frame(1, hello_payload(name)), "BAD_NAME", "content")

    # HELLO with a credential: the token's length is part of the shape; its form is the
    # credential step of H2, after the name.
    name_then = hello_payload(b"alice")
    add(
        "HELLO with 1 byte after the name (half a token length)",
        frame(1, name_then + b"\x00"),
        "MALFORMED",
        "shape",
    )
    add(
        "HELLO token length 10, 9 token bytes",
        frame(1, name_then + struct.pack(">H", 10) + b"k" * 9),
        "MALFORMED",
        "shape",
    )
    add(
        "HELLO token length 2, 3 token bytes",
        frame(1, name_then + struct.pack(">H", 2) + b"kkk"),
        "MALFORMED",
        "shape",
    )
    add(
        "HELLO version 3 with a token: version first",
        frame(1, hello_payload(b"alice", version=3, token=b"k")),
        "UNSUPPORTED_VERSION",
        "content",
    )
    add(
        "HELLO bad name and bad token: name first",
        frame(1, hello_payload(b"a\nb", token=b"")),
        "BAD_NAME",
        "content",
    )
    add(
        "HELLO with an empty token",
        frame(1, hello_payload(b"alice", token=b"")),
        "UNAUTHORIZED",
        "content",
    )
    add(
        f"HELLO with a {MAX_TOKEN_BYTES + 1}-byte token",
        frame(1, hello_payload(b"alice", token=b"t" * (MAX_TOKEN_BYTES + 1))),
        "UNAUTHORIZED",
        "content",
    )
    for label, token in (
        ("a space", b"abc def"),
        ("a newline", b"abc\ndef"),
        ("NUL", b"abc\x00"),
        ("DEL (0x7f)", b"abc\x7f"),
        ("a non-ASCII byte", "abcé".encode()),
    ):
        add(
            f"HELLO token with {label}",
            frame(1, hello_payload(b"alice", token=token)),
            "UNAUTHORIZED",
            "content",
        )

    # WELCOME, checked by the client (H3).
    welcome = struct.pack(">BBII", 1, 0, 10000, 30000)
    add("WELCOME of 9 bytes", frame(2, welcome[:-1]), "MALFORMED", "shape")
    add("WELCOME of 11 bytes", frame(2, welcome + b"\x00"), "MALFORMED", "shape")
    add(
        "WELCOME version 2",
        frame(2, struct.pack(">BBII", 2, 0, 10000, 30000)),
        "UNSUPPORTED_VERSION",
        "content",
    )
    add(
        "WELCOME scheme 2",
        frame(2, struct.pack(">BBII", 1, 2, 10000, 30000)),
        "MALFORMED",
        "content",
    )
    add(
        "WELCOME interval 0", frame(2, struct.pack(">BBII", 1, 0, 0, 30000)), "MALFORMED", "content"
    )
    add(
        "WELCOME timeout not above the interval",
        frame(2, struct.pack(">BBII", 1, 1, 5000, 5000)),
        "MALFORMED",
        "content",
    )
    add(
        "WELCOME timeout 1 ms under twice the interval (T2)",
        frame(2, struct.pack(">BBII", 1, 0, 5000, 9999)),
        "MALFORMED",
        "content",
    )

    # CLOSE and ERROR shapes (F3).
    add("CLOSE with an empty payload", frame(6), "MALFORMED", "shape")
    add("CLOSE with 1 byte", frame(6, b"\x00"), "MALFORMED", "shape")
    add("CLOSE with 3 bytes", frame(6, b"\x00\x00\x00"), "MALFORMED", "shape")
    add("ERROR with an empty payload", frame(7), "MALFORMED", "shape")
    add("ERROR with 1 byte", frame(7, b"\x01"), "MALFORMED", "shape")
    return vectors


def granted(d: int, e: int, lmin: int, lmax: int, r: int) -> tuple[int, int]:
    """T1, written out again from protocol.md: integers only."""
    interval = d if r == 0 else min(max(r, lmin), lmax)
    return interval, (interval * e + d - 1) // d


def grant_vectors() -> dict[str, list[dict[str, object]]]:
    """T1 and T2: what each request is granted, and configurations to refuse."""
    valid = []
    for name, (d, e, lmin, lmax), r in (
        ("the default request", (10000, 30000, 100, 300000), 0),
        ("a request within bounds", (10000, 30000, 100, 300000), 2000),
        ("a request below the minimum", (10000, 30000, 100, 300000), 1),
        ("a request above the maximum", (10000, 30000, 100, 300000), 0xFFFFFFFF),
        ("a fractional ratio rounds up", (3000, 7000, 100, 300000), 1000),
        ("0.1 s / 0.28 s asked 1 s: floating point gave 2801", (100, 280, 100, 300000), 1000),
        (
            "a product past 2^53 needs wide integers",
            (1_000_000_000, 2_000_000_001, 1, 2_147_483_000),
            2_147_483_000,
        ),
        ("the largest grant that fits the u32 timeout", (1000, 2000, 1, 2147483647), 2147483647),
    ):
        interval, timeout = granted(d, e, lmin, lmax, r)
        valid.append(
            {
                "name": name,
                "config": {
                    "interval_ms": d,
                    "timeout_ms": e,
                    "min_interval_ms": lmin,
                    "max_interval_ms": lmax,
                },
                "request_ms": r,
                "interval_ms": interval,
                "timeout_ms": timeout,
            }
        )
    invalid = [
        {
            "name": name,
            "config": {
                "interval_ms": d,
                "timeout_ms": e,
                "min_interval_ms": lmin,
                "max_interval_ms": lmax,
            },
        }
        for name, (d, e, lmin, lmax) in (
            ("timeout under twice the interval", (10000, 19999, 100, 300000)),
            ("interval below the minimum", (50, 150, 100, 300000)),
            ("interval above the maximum", (500000, 1500000, 100, 300000)),
            ("minimum above the maximum", (3000, 9000, 5000, 1000)),
            ("minimum of 0 ms", (1000, 3000, 0, 300000)),
            (
                "the largest grant's timeout past 2^32 - 1",
                (1_500_000_000, 4_500_000_000, 100, 1_500_000_000),
            ),
        )
    ]
    return {"valid": valid, "invalid": invalid}


def stream_vectors() -> list[dict[str, object]]:
    hello = frame(1, hello_payload(b"alice"))
    ping = frame(3)
    data = frame(5, b"hi")
    close = frame(6, b"\x00\x00")
    four = [hello, ping, data, close]
    whole = b"".join(four)
    streams = [
        ("every byte in its own segment", [whole[i : i + 1] for i in range(len(whole))], four, 0),
        ("four frames coalesced in one segment", [whole], four, 0),
        (
            "split inside the header, then inside the payload",
            [hello[:3], hello[3:9], hello[9:] + ping],
            [hello, ping],
            0,
        ),
        ("a frame and a partial header left pending", [data + ping[:4]], [data], 4),
    ]
    return [
        {
            "name": name,
            "chunks": [chunk.hex() for chunk in chunks],
            "frames": [f.hex() for f in frames],
            "pending": pending,
        }
        for name, chunks, frames, pending in streams
    ]


def v2_valid_vectors() -> list[dict[str, object]]:
    """Version 2's HELLO and WELCOME: the fields, the raw properties in order, and the
    values of the registered ones (an unknown property is listed and skipped)."""
    vectors: list[dict[str, object]] = []

    def add(name: str, ftype: str, payload: bytes, fields: dict[str, object]) -> None:
        start = {"HELLO": 6 + payload[5] if payload else 0, "WELCOME": 10, "AUTH": 0}[ftype]
        props = props_of(payload[start:])
        data = frame(TYPES[ftype], payload)
        vectors.append(
            {
                "name": name,
                "hex": spaced(data),
                "type": ftype,
                "fields": {
                    **({} if ftype == "AUTH" else {"version": 2}),
                    **fields,
                    "properties": props,
                },
            }
        )

    u32 = struct.Struct(">I").pack
    for label, props, token, max_payload in (
        ("no properties", b"", None, None),
        ("a token", prop(TOKEN, b"k"), "k", None),
        (
            "a JWT and a maximum payload",
            prop(TOKEN, JWT.encode()) + prop(2, u32(65536)),
            JWT,
            65536,
        ),
        ("maximum payload before the token", prop(2, u32(1024)) + prop(TOKEN, b"k"), "k", 1024),
        (
            "an unknown property, skipped",
            prop(0x7001, b"future") + prop(2, u32(4096)),
            None,
            4096,
        ),
        ("an empty unknown property, skipped", prop(0x0FFF, b""), None, None),
        (
            "a known property with the must-understand bit",
            prop(MUST_UNDERSTAND | MAX_PAYLOAD_PROP, u32(2048)),
            None,
            2048,
        ),
        (
            "a WELCOME-only property, unknown in HELLO, skipped",
            prop(RECONNECT_WINDOW, u32(30000)),
            None,
            None,
        ),
        (
            f"the longest token ({MAX_TOKEN_BYTES} bytes)",
            prop(TOKEN, b"t" * MAX_TOKEN_BYTES),
            "t" * MAX_TOKEN_BYTES,
            None,
        ),
    ):
        add(
            f"HELLO v2 with {label}",
            "HELLO",
            hello_v2(b"alice", props=props),
            {"interval_ms": 10000, "name": "alice", "token": token, "max_payload": max_payload},
        )
    for label, props, max_payload, window in (
        ("no properties", b"", None, None),
        ("the server's maximum payload", prop(2, u32(65536)), 65536, None),
        (
            "a maximum payload and a reconnect window",
            prop(2, u32(65536)) + prop(RECONNECT_WINDOW, u32(30000)),
            65536,
            30000,
        ),
        (
            "hbloop's server at its defaults (a 10 s drain period, R7; AUTH taken, A1)",
            prop(2, u32(65536)) + prop(RECONNECT_WINDOW, u32(10000)) + prop(REAUTH, b""),
            65536,
            10000,
        ),
        (
            "a reconnect window of 0 (a server that closes its peers at once)",
            prop(RECONNECT_WINDOW, u32(0)),
            None,
            0,
        ),
        ("an unknown property, skipped", prop(0x0042, b"\x01\x02"), None, None),
        ("a HELLO-only property, unknown in WELCOME, skipped", prop(TOKEN, b"k"), None, None),
    ):
        add(
            f"WELCOME v2 with {label}",
            "WELCOME",
            welcome_v2(props),
            {
                "scheme": 0,
                "interval_ms": 10000,
                "timeout_ms": 30000,
                "max_payload": max_payload,
                "reconnect_window_ms": window,
                "reauth": REAUTH in {p["id"] for p in props_of(props)},
            },
        )
    for label, props, token in (
        ("the server's answer: an empty block (A3)", b"", None),
        ("a fresh token (A1)", prop(TOKEN, JWT.encode()), JWT),
        ("a token and an unknown property, skipped", prop(0x7001, b"x") + prop(TOKEN, b"k"), "k"),
    ):
        add(f"AUTH with {label}", "AUTH", props, {"token": token})
    return vectors


def v2_malformed_vectors() -> list[dict[str, object]]:
    """Version 2 frames a receiver refuses: HELLO as a server judges it (H2), WELCOME
    as a client that sent a version 2 HELLO judges it (H3)."""
    vectors: list[dict[str, object]] = []

    def add(name: str, data: bytes, error: str, stage: str) -> None:
        vectors.append({"name": name, "hex": spaced(data), "error": error, "stage": stage})

    u32 = struct.Struct(">I").pack
    for label, props, error, stage in (
        ("a property header cut short", b"\x00\x02\x00", "MALFORMED", "shape"),
        ("a property value cut short", prop(2, u32(4096))[:-1], "MALFORMED", "shape"),
        ("a length past the frame", struct.pack(">HH", 0x7001, 9) + b"abc", "MALFORMED", "shape"),
        ("a repeated property", prop(TOKEN, b"k") + prop(TOKEN, b"k"), "MALFORMED", "shape"),
        (
            "a property repeated with and without the must-understand bit",
            prop(2, u32(4096)) + prop(MUST_UNDERSTAND | 2, u32(4096)),
            "MALFORMED",
            "shape",
        ),
        (
            "a repeated unknown property",
            prop(0x7001, b"") + prop(0x7001, b""),
            "MALFORMED",
            "shape",
        ),
        ("a maximum payload of 2 bytes", prop(2, b"\x04\x00"), "MALFORMED", "shape"),
        ("a maximum payload under 1024", prop(2, u32(1023)), "MALFORMED", "content"),
        (
            "an unknown must-understand property",
            prop(MUST_UNDERSTAND | 0x7001, b"x"),
            "UNSUPPORTED_PROPERTY",
            "content",
        ),
        (
            "a WELCOME-only property with the must-understand bit",
            prop(MUST_UNDERSTAND | RECONNECT_WINDOW, u32(1000)),
            "UNSUPPORTED_PROPERTY",
            "content",
        ),
        ("an empty token", prop(TOKEN, b""), "UNAUTHORIZED", "content"),
        ("a token with a space", prop(TOKEN, b"a b"), "UNAUTHORIZED", "content"),
        (
            f"a {MAX_TOKEN_BYTES + 1}-byte token",
            prop(TOKEN, b"t" * (MAX_TOKEN_BYTES + 1)),
            "UNAUTHORIZED",
            "content",
        ),
    ):
        add(f"HELLO v2 with {label}", frame(1, hello_v2(b"alice", props=props)), error, stage)
    add(
        "HELLO v2 name length past the frame",
        frame(1, struct.pack(">BIB", 2, 0, 9) + b"alice"),
        "MALFORMED",
        "shape",
    )
    add(
        "HELLO v2 bad name and an unknown must-understand property: the property first",
        frame(1, hello_v2(b"a\nb", props=prop(MUST_UNDERSTAND | 0x7001, b""))),
        "UNSUPPORTED_PROPERTY",
        "content",
    )
    add(
        "HELLO v2 bad name and an empty token: the name first",
        frame(1, hello_v2(b"a\nb", props=prop(TOKEN, b""))),
        "BAD_NAME",
        "content",
    )
    add(
        "HELLO v2 with a property cut short and a bad name: the shape first",
        frame(1, hello_v2(b"", props=b"\x00")),
        "MALFORMED",
        "shape",
    )
    for label, payload, error, stage in (
        ("of 9 bytes", welcome_v2()[:-1], "MALFORMED", "shape"),
        (
            "version 1 to a version 2 HELLO",
            struct.pack(">BBII", 1, 0, 10000, 30000),
            "UNSUPPORTED_VERSION",
            "content",
        ),
        ("scheme 2", welcome_v2(scheme=2), "MALFORMED", "content"),
        ("with a property cut short", welcome_v2(prop(2, u32(65536))[:-2]), "MALFORMED", "shape"),
        ("with a repeated property", welcome_v2(prop(3, u32(1)) * 2), "MALFORMED", "shape"),
        ("with a reconnect window of 8 bytes", welcome_v2(prop(3, bytes(8))), "MALFORMED", "shape"),
        (
            "with an unknown must-understand property",
            welcome_v2(prop(MUST_UNDERSTAND | 0x0042, b"")),
            "UNSUPPORTED_PROPERTY",
            "content",
        ),
    ):
        add(f"WELCOME v2 {label}", frame(2, payload), error, stage)
    add(
        "WELCOME v2 with a REAUTH of 1 byte",
        frame(2, welcome_v2(prop(REAUTH, b"\x00"))),
        "MALFORMED",
        "shape",
    )
    for label, props, error, stage in (
        ("a property cut short", prop(TOKEN, b"k")[:-1], "MALFORMED", "shape"),
        ("a repeated token", prop(TOKEN, b"k") * 2, "MALFORMED", "shape"),
        ("an empty token", prop(TOKEN, b""), "UNAUTHORIZED", "content"),
        (
            "an unknown must-understand property",
            prop(TOKEN, b"k") + prop(MUST_UNDERSTAND | 0x7001, b""),
            "UNSUPPORTED_PROPERTY",
            "content",
        ),
    ):
        add(f"AUTH with {label}", frame(8, props), error, stage)
    return vectors


def accepted_names() -> list[dict[str, object]]:
    """Names that N1 and N2 admit as they are (prepared form, PRECIS
    UsernameCasePreserved): ASCII without spaces (quotes, '=' and '@' included), case
    kept, letters of any script, NFC accents."""
    return [
        {"label": label, "name": name}
        for label, name in (
            ("plain ASCII", "alice"),
            ("ASCII punctuation", "sensor-7.eu_1@edge"),
            ("'=' and quotes: no space, so one token", 'bob"age=999.0s'),
            ("upper case kept", "Bob"),
            ("NFC e with acute (U+00E9)", "caf\u00e9"),
            ("Cyrillic letters", "\u0431\u043e\u0431"),
            ("Han", "\u65e5\u672c"),
        )
    ]


def refused_names() -> list[dict[str, object]]:
    """Names that N1 (the profile's classes) or N2 (not in prepared form) refuse, with
    the statement that refuses them."""
    return [
        {"label": label, "name": name, "statement": statement}
        for label, name, statement in (
            ("with a space (U+0020)", "bob age=999.0s", "N1"),
            ("with NO-BREAK SPACE (U+00A0) after bob", "bob\u00a0", "N1"),
            ("HANGUL FILLER (U+3164) alone", "\u3164", "N1"),
            ("BRAILLE PATTERN BLANK (U+2800), a symbol", "a\u2800", "N1"),
            ("with a symbol (U+2665 BLACK HEART SUIT)", "i\u2665u", "N1"),
            ("NFD: e then COMBINING ACUTE ACCENT (U+0301)", "cafe\u0301", "N2"),
            ("FULLWIDTH letters (U+FF42 U+FF4F U+FF42)", "\uff42\uff4f\uff42", "N2"),
        )
    ]


def skeleton_pairs() -> list[dict[str, object]]:
    """Pairs of admitted names and whether N3 makes them one identity (their UTS #39
    skeletons are equal)."""
    return [
        {"label": label, "names": [first, second], "same": same}
        for label, first, second, same in (
            ("Cyrillic o (U+043E) for Latin o", "bob", "b\u043eb", True),
            ("Cyrillic a (U+0430) for Latin a", "a-7", "\u0430-7", True),
            ("rn looks like m", "rnodem", "modem", True),
            ("digit 1 looks like l", "paypa1", "paypal", True),
            ("Greek omicron (U+03BF) for Latin o", "bob", "b\u03bfb", True),
            ("case is kept", "bob", "Bob", False),
            ("different names", "alice", "bob", False),
        )
    ]


def main() -> None:
    document = {
        "description": (
            "Test vectors for the hbloop protocol (protocol.md). Hex strings "
            "may contain spaces. 'valid': one frame each, its type and decoded fields "
            "(DATA as data_hex; code_name is null for unknown codes, which receivers "
            "accept). 'malformed': bytes and the error code a receiver with "
            "max_payload must raise; stage 'header' errors are raised from the 6 "
            "header bytes alone, before any payload arrives. 'streams': chunks fed in "
            "order to one decoder, the frames that come out and the bytes left pending. "
            "'grants': the interval and timeout granted for a request under a server "
            "configuration (T1), and configurations a server must refuse (T2). "
            "'valid' and 'malformed' are version 1's vectors: their HELLO and WELCOME "
            "entries carry version 1's layout (a 'version 3' HELLO is refused by a "
            "server speaking 1 and 2), and every other frame is the same in version 2. "
            "'v2' holds version 2's HELLO and WELCOME, in the same form: 'fields' add "
            "'properties' (each 'id' with its 'value_hex', in order, unknown ones too) "
            "and the values of the registered ones (token, max_payload, "
            "reconnect_window_ms, reauth); a v2 WELCOME is judged by a client whose HELLO was "
            "version 2. 'v2' also holds AUTH (version 2 only, A1-A3): 'fields' are its "
            "'token' (null in the server's answer) and 'properties'. 'names': names a server "
            "accepts as they are, names it refuses "
            "with BAD_NAME and the statement that refuses them (N1, N2: a server's "
            "admission check at H2, beyond the section 1 checks of 'malformed'), and "
            "pairs of names with whether their UTS #39 skeletons make them one identity "
            "to a duplicate policy (N3)."
        ),
        "protocol_version": 2,
        "protocol_versions": [1, 2],
        "max_payload": MAX_PAYLOAD,
        "types": TYPES,
        "codes": CODES,
        "valid": valid_vectors(),
        "malformed": malformed_vectors(),
        "streams": stream_vectors(),
        "grants": grant_vectors(),
        "v2": {"valid": v2_valid_vectors(), "malformed": v2_malformed_vectors()},
        "names": {
            "profile": "PRECIS UsernameCasePreserved (RFC 8265, section 3.3)",
            "accepted": accepted_names(),
            "refused": refused_names(),
            "skeletons": skeleton_pairs(),
        },
    }
    OUT.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

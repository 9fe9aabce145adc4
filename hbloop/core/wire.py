"""The hbloop wire format as the per-frame path speaks it: types, codes, limits, and the
``struct`` formats that encode and decode frames.

Every frame is a 6-byte header followed by ``length`` payload bytes::

    +--------+--------+--------+--------+--------+--------+-----------------+
    |            length (u32, big-endian)        |  type  | flags  | payload  |
    +--------+--------+--------+--------+--------+--------+-----------------+

The schema of record is the ``construct`` declaration in ``hbloop.core.schema``:
protocol.md, tests/vectors.json and the tests all agree with it. construct parses a
frame in tens of microseconds, far too slow for a server that answers tens of
thousands of heartbeats a second, and importing it adds about 20 ms to a process's
start-up (``python -X importtime``, quiet machine), so the per-frame path uses the
``struct`` formats below, each the schema's layout written out; tests/test_wire.py
proves both agree on every vector.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

# The versions this implementation speaks (protocol.md H10): a server answers each in
# its own version, a client offers the newest and falls back to version 1 once.
VERSION_1 = 1
VERSION_2 = 2
PROTOCOL_VERSION = VERSION_2
SUPPORTED_VERSIONS = frozenset({VERSION_1, VERSION_2})

HEADER_SIZE = 6

# Names travel in a u8-prefixed field; 64 bytes is room for a device id, a UUID or a
# user@host label while keeping a hostile HELLO small.
MAX_NAME_BYTES = 64

# An ERROR message is for a human reading a log, not a payload channel.
MAX_ERROR_MESSAGE_BYTES = 200

# HELLO may carry a credential (a JWT, say) after the name. An RS256 JWT signed with a
# 4096-bit key has a 683-character signature, and 4 KiB leaves over 3 KB beside it for
# its header and claims; it is also the size a single cookie may have (RFC 6265,
# 6.1), so tokens a fleet already carries in cookies or HTTP headers fit. It bounds
# what an unauthenticated peer can make the server buffer before its HELLO is judged.
MAX_TOKEN_BYTES = 4096

# Default cap on a frame's payload. Heartbeat traffic is tiny; 64 KiB leaves room for
# application DATA while a peer cannot make us buffer more than this per connection.
DEFAULT_MAX_PAYLOAD = 65536

# F2: every receiver accepts payloads at least this large, whatever its setting.
MIN_MAX_PAYLOAD = 1024

# The largest value of the protocol's u32 fields (length, interval_ms, timeout_ms).
U32_MAX = 0xFFFFFFFF

# The length field is a u32, so no configuration may exceed this.
ABSOLUTE_MAX_PAYLOAD = U32_MAX


class FrameType(enum.IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    PING = 0x03
    PONG = 0x04
    DATA = 0x05
    CLOSE = 0x06
    ERROR = 0x07
    AUTH = 0x08  # version 2, OPEN: a fresh credential, and the server's answer (A1-A7)


class Scheme(enum.IntEnum):
    """Which side sends PINGs once the handshake is done."""

    CLIENT = 0  # the client pings, the server answers PONG
    SERVER = 1  # the server pings, the client must answer PONG


class Code(enum.IntEnum):
    """The one registry of reason codes carried by CLOSE and ERROR frames."""

    # 0x00xx: orderly ends, carried by CLOSE.
    NORMAL = 0x0000  # the sender is done with the connection
    GOING_AWAY = 0x0001  # the server is shutting down; reconnect later
    TIMEOUT = 0x0002  # nothing was heard from the receiver within the timeout
    HANDSHAKE_TIMEOUT = 0x0003  # no HELLO arrived within the handshake deadline
    TAKEN_OVER = 0x0004  # a newer connection with the same name replaced this one
    CREDENTIALS_EXPIRED = 0x0005  # the token's exp passed with no fresh one; reconnect with one
    # 0x01xx: handshake refusals, carried by ERROR.
    UNSUPPORTED_VERSION = 0x0101
    BAD_NAME = 0x0102
    SERVER_FULL = 0x0103
    UNAUTHORIZED = 0x0104  # the credential in HELLO is missing, invalid or not for this name
    NAME_TAKEN = 0x0105  # the name is online elsewhere and the server refuses duplicates
    UNSUPPORTED_PROPERTY = 0x0106  # a must-understand property the receiver does not know
    # 0x02xx: protocol violations, carried by ERROR.
    FRAME_TOO_LARGE = 0x0201
    UNKNOWN_TYPE = 0x0202
    RESERVED_BITS = 0x0203
    MALFORMED = 0x0204
    HELLO_REQUIRED = 0x0205
    DUPLICATE_HELLO = 0x0206
    UNEXPECTED_FRAME = 0x0207
    TOO_MANY_PINGS = 0x0208


class Prop(enum.IntEnum):
    """The registry of version 2's handshake properties (protocol.md section 1)."""

    TOKEN = 0x0001  # HELLO: the credential, 1 to 4096 printable ASCII bytes
    MAX_PAYLOAD = 0x0002  # HELLO and WELCOME: the sender's maximum payload once OPEN (u32)
    RECONNECT_WINDOW = 0x0003  # WELCOME: spread reconnects after GOING_AWAY over this (u32 ms)
    REAUTH = 0x0004  # WELCOME: empty; the server takes AUTH on this connection (A1)


# The top bit of a property identifier: a receiver that does not know the property
# must refuse the handshake (UNSUPPORTED_PROPERTY) rather than skip it.
MUST_UNDERSTAND = 0x8000

# Which properties each frame carries; any other is unknown to its receiver.
HELLO_PROPS = frozenset({Prop.TOKEN, Prop.MAX_PAYLOAD})
WELCOME_PROPS = frozenset({Prop.MAX_PAYLOAD, Prop.RECONNECT_WINDOW, Prop.REAUTH})
# A client's AUTH carries TOKEN; the server's answer carries an empty block (A3).
AUTH_PROPS = frozenset({Prop.TOKEN})


# --- the fast path: the schema's layouts as struct formats -------------------------

HEADER_STRUCT = struct.Struct(">IBB")
HELLO_FIXED = struct.Struct(">BIB")  # version, interval_ms, name length
TOKEN_LENGTH = struct.Struct(">H")  # the credential's length, after the name
WELCOME_STRUCT = struct.Struct(">BBII")
PROPERTY_HEADER = struct.Struct(">HH")  # identifier, value length
U32_VALUE = struct.Struct(">I")  # MAX_PAYLOAD, RECONNECT_WINDOW
CODE_STRUCT = struct.Struct(">H")

# The largest HELLO payload that can still be judged (a name the u8 length allows,
# over 64 bytes or not, and the longest token): a server's whole receive limit
# before the handshake (F2), so that a socket that never completes HELLO holds a few
# kilobytes, not a maximum-size frame. A version 2 HELLO must fit it too (H10): with
# the longest name and token that leaves room for every property version 2 defines.
MAX_HELLO_PAYLOAD = HELLO_FIXED.size + 0xFF + TOKEN_LENGTH.size + MAX_TOKEN_BYTES

assert HEADER_STRUCT.size == HEADER_SIZE
assert WELCOME_STRUCT.size == 10

# Plain-int twins of FrameType for the per-frame path, where comparing with a module
# global int is cheaper than looking up an enum member.
T_HELLO = int(FrameType.HELLO)
T_WELCOME = int(FrameType.WELCOME)
T_PING = int(FrameType.PING)
T_PONG = int(FrameType.PONG)
T_DATA = int(FrameType.DATA)
T_CLOSE = int(FrameType.CLOSE)
T_ERROR = int(FrameType.ERROR)
T_AUTH = int(FrameType.AUTH)

HEADER_ONLY_TYPES = frozenset({FrameType.PING, FrameType.PONG})
KNOWN_TYPES = frozenset(int(t) for t in FrameType)


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    return HEADER_STRUCT.pack(len(payload), ftype, 0) + payload


PING_FRAME = encode_frame(FrameType.PING)
PONG_FRAME = encode_frame(FrameType.PONG)
# The server's answer to an AUTH it accepted: an AUTH with an empty block (A3).
AUTH_ACK_FRAME = encode_frame(FrameType.AUTH)


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    interval_ms: int
    name: str
    # A secret: kept out of repr() so that logging a Hello cannot leak it.
    token: str | None = field(default=None, repr=False)
    #: Version 2: the client's maximum payload once OPEN (Prop.MAX_PAYLOAD), if sent.
    max_payload: int | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    version: int
    scheme: Scheme
    interval_ms: int
    timeout_ms: int
    #: Version 2: the server's maximum payload once OPEN (Prop.MAX_PAYLOAD), if sent.
    max_payload: int | None = None
    #: Version 2: spread a reconnect after CLOSE GOING_AWAY over this many ms.
    reconnect_window_ms: int | None = None
    #: Version 2: the server takes AUTH on this connection (Prop.REAUTH, A1).
    reauth: bool = False


def encode_property(ident: int, value: bytes) -> bytes:
    return PROPERTY_HEADER.pack(ident, len(value)) + value


def _u32_property(ident: int, value: int | None) -> bytes:
    return b"" if value is None else encode_property(ident, U32_VALUE.pack(value))


def encode_hello(
    name: str,
    interval_ms: int,
    version: int = VERSION_1,
    *,
    token: str | None = None,
    max_payload: int | None = None,
) -> bytes:
    """A HELLO of ``version``: version 1 carries the token after the name (and no
    maximum payload), version 2 carries both as properties."""
    raw = name.encode("utf-8")
    payload = HELLO_FIXED.pack(version, interval_ms, len(raw)) + raw
    secret = None if token is None else token.encode("ascii")
    if version == VERSION_1:
        if secret is not None:
            payload += TOKEN_LENGTH.pack(len(secret)) + secret
    else:
        if secret is not None:
            payload += encode_property(Prop.TOKEN, secret)
        payload += _u32_property(Prop.MAX_PAYLOAD, max_payload)
    return encode_frame(FrameType.HELLO, payload)


def encode_welcome(welcome: Welcome) -> bytes:
    payload = WELCOME_STRUCT.pack(
        welcome.version, welcome.scheme, welcome.interval_ms, welcome.timeout_ms
    )
    if welcome.version != VERSION_1:
        payload += _u32_property(Prop.MAX_PAYLOAD, welcome.max_payload)
        payload += _u32_property(Prop.RECONNECT_WINDOW, welcome.reconnect_window_ms)
        if welcome.reauth:
            payload += encode_property(Prop.REAUTH, b"")
    return encode_frame(FrameType.WELCOME, payload)


def encode_auth(token: str) -> bytes:
    """A client's AUTH frame: a fresh ``token`` for the OPEN connection (A1)."""
    return encode_frame(FrameType.AUTH, encode_property(Prop.TOKEN, token.encode("ascii")))


def encode_close(code: int) -> bytes:
    return encode_frame(FrameType.CLOSE, CODE_STRUCT.pack(code))


def encode_error(code: int, message: str = "") -> bytes:
    raw = message.encode("utf-8")[:MAX_ERROR_MESSAGE_BYTES]
    # Cutting at a byte bound may split a character; drop the partial tail.
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(FrameType.ERROR, CODE_STRUCT.pack(code) + raw)


def encode_data(payload: bytes) -> bytes:
    return encode_frame(FrameType.DATA, payload)

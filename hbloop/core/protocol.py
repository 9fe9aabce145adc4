"""The sans-IO protocol core: bytes in, frames out, typed errors. No sockets here.

Two kinds of error, as in h11: ``RemoteProtocolError`` means the *peer* broke the
protocol (it carries the code to put in the ERROR frame before closing), while
``LocalProtocolError`` means *our* caller misused the API (sending a payload that is
too large, say). Handling code can then blame the right party.

The decoder checks each header as soon as its six bytes are in: reserved bits, type
and length are all refused before a single payload byte is buffered, so a hostile
length field costs nothing.
"""

from __future__ import annotations

import sys
import unicodedata

from hbloop.core.names import name_problem
from hbloop.core.wire import (
    AUTH_PROPS,
    CODE_STRUCT,
    HEADER_ONLY_TYPES,
    HEADER_SIZE,
    HEADER_STRUCT,
    HELLO_FIXED,
    HELLO_PROPS,
    KNOWN_TYPES,
    MAX_NAME_BYTES,
    MAX_TOKEN_BYTES,
    MIN_MAX_PAYLOAD,
    MUST_UNDERSTAND,
    PROPERTY_HEADER,
    SUPPORTED_VERSIONS,
    TOKEN_LENGTH,
    U32_VALUE,
    VERSION_1,
    WELCOME_PROPS,
    WELCOME_STRUCT,
    Code,
    FrameType,
    Hello,
    Prop,
    Scheme,
    Welcome,
    encode_hello,
)

Frame = tuple[int, bytes]


class ProtocolError(Exception):
    """Base of hbloop's protocol errors."""

    def __init__(self, code: Code, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol; ``code`` goes into the ERROR frame we send.

    Raised by ``FrameDecoder.feed``, it carries in ``frames`` the complete frames that
    came before the violation in the same input, so that they are still acted on.
    """

    def __init__(self, code: Code, message: str = "", frames: list[Frame] | None = None) -> None:
        super().__init__(code, message)
        self.frames: list[Frame] = frames or []


class LocalProtocolError(ProtocolError):
    """Our own caller misused the protocol API (a bug on this side, not the peer's)."""


_EMPTY = b""

# No limit on the frames one feed returns.
UNLIMITED = sys.maxsize

# Peer text shown in a log line or on a terminal is cut to this many characters: more
# than an ERROR message (200 bytes) or a name (64 bytes) holds, so those are whole.
PRINTABLE_LIMIT = 200


def take_frames(
    held: bytearray | None, data: bytes | bytearray | memoryview, max_payload: int, limit: int
) -> tuple[list[Frame], bytearray | None]:
    """The complete frames at the start of ``held`` followed by ``data`` (at most
    ``limit`` of them), and what is left to hold for later: None when nothing is.

    Each header is checked as soon as its six bytes are in, before its payload is
    buffered (F1); the first that fails raises ``RemoteProtocolError`` carrying the
    frames before it. ``held`` is appended to and cut from the front of in place: a
    ``bytearray`` grows by amortized doubling and CPython moves its start rather than
    its bytes to cut, so holding is linear in the bytes fed however they are split (a
    16 MiB frame fed 1 KiB at a time costs about one copy of 16 MiB, not one of
    everything held so far per piece). Data that ends on a frame boundary, the common
    case, is decoded where it lies and nothing is held.
    """
    if held is not None:
        held += data
        data = held
    end = len(data)
    pos = 0
    frames: list[Frame] = []
    unpack = HEADER_STRUCT.unpack_from
    while end - pos >= HEADER_SIZE and len(frames) < limit:
        length, ftype, flags = unpack(data, pos)
        if (
            flags
            or ftype not in KNOWN_TYPES
            or length > max_payload
            or (length and ftype in HEADER_ONLY_TYPES)
        ):
            raise _header_error(bytes(data[pos : pos + HEADER_SIZE]), max_payload, frames)
        stop = pos + HEADER_SIZE + length
        if stop > end:
            break
        frames.append((ftype, bytes(data[pos + HEADER_SIZE : stop]) if length else _EMPTY))
        pos = stop
    if pos == end:
        return frames, None
    if held is None:
        return frames, bytearray(data[pos:])
    if pos:
        del held[:pos]
    return frames, held


class FrameDecoder:
    """Incremental frame decoder for a byte stream split anywhere (``take_frames``
    with the held bytes kept here).

    ``feed`` returns the complete frames as ``(type, payload)`` tuples and keeps any
    partial frame for the next call; with a ``limit`` it returns at most that many and
    keeps the rest too, for a later ``feed`` (with no new data if need be). It raises
    ``RemoteProtocolError`` on the first invalid header; the stream is unusable after
    that.
    """

    __slots__ = ("max_payload", "_held")

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._held: bytearray | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back: an incomplete frame, or frames past a ``limit``."""
        held = self._held
        return 0 if held is None else len(held)

    def feed(self, data: bytes | bytearray | memoryview, limit: int = UNLIMITED) -> list[Frame]:
        try:
            frames, self._held = take_frames(self._held, data, self.max_payload, limit)
        except RemoteProtocolError:
            self._held = None  # the stream cannot be resynchronised
            raise
        return frames


# A TLS client's first record: content type 22 (handshake), record version 3.0 to 3.4
# (TLS 1.3 still writes 3.1 or 3.3 there), two length bytes, then handshake type 1,
# ClientHello. Read as an hbloop header, that type lands in the flags byte.
_TLS_HANDSHAKE_RECORD = 0x16
_TLS_MAJOR_VERSION = 0x03
_TLS_MAX_MINOR_VERSION = 0x04
_TLS_CLIENT_HELLO = 0x01


def looks_like_tls(header: bytes | bytearray | memoryview) -> bool:
    """Whether a refused 6-byte header is the start of a TLS ClientHello, so that a
    TLS client that dialled a plain port is told so rather than only "reserved bits"."""
    return (
        len(header) == HEADER_SIZE
        and header[0] == _TLS_HANDSHAKE_RECORD
        and header[1] == _TLS_MAJOR_VERSION
        and header[2] <= _TLS_MAX_MINOR_VERSION
        and header[5] == _TLS_CLIENT_HELLO
    )


def _header_error(header: bytes, max_payload: int, frames: list[Frame]) -> RemoteProtocolError:
    """The error for a header that failed a check, in protocol.md's order (F1, F3)."""
    length, ftype, flags = HEADER_STRUCT.unpack(header)
    if flags:
        hint = "; looks like TLS: this port speaks plain hbloop" if looks_like_tls(header) else ""
        return RemoteProtocolError(
            Code.RESERVED_BITS, f"flags 0x{flags:02x} must be zero{hint}", frames
        )
    if ftype not in KNOWN_TYPES:
        return RemoteProtocolError(Code.UNKNOWN_TYPE, f"frame type 0x{ftype:02x}", frames)
    if length > max_payload:
        return RemoteProtocolError(
            Code.FRAME_TOO_LARGE, f"payload of {length} bytes exceeds {max_payload}", frames
        )
    return RemoteProtocolError(
        Code.MALFORMED, f"{FrameType(ftype).name} must have an empty payload", frames
    )


# Unicode general categories a peer's text must not put raw into a log line or onto a
# terminal: controls (Cc: C0, DEL and C1, such as NEL), format characters (Cf: bidi
# overrides and isolates, zero-width spaces and joiners, the BOM...) and the line and
# paragraph separators (Zl, Zp). Each can split or forge a log line, or make it read
# differently from its bytes. And code points unassigned in this interpreter's tables
# (Cn): one may be a format character of a later Unicode (protocol.md section 1).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cn"})


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def _is_printable_name(name: str) -> bool:
    # str.isprintable() is False for every unsafe category (and for a few harmless
    # ones, such as a no-break space): a fast path for the common name.
    return name.isprintable() or not any(map(_is_unsafe, name))


def _escape(char: str) -> str:
    """One character as ``escape_unsafe`` shows it: Python's own escapes."""
    if not _is_unsafe(char):
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_unsafe(text: str) -> str:
    """``text`` with the characters of UNSAFE_CATEGORIES escaped (``\\x0a``,
    ``\\u202e``), so that it stays on one line and reads as its characters: what a log
    formatter applies to every message."""
    # The common case, text with nothing to escape, costs no per-character work.
    return text if text.isprintable() else "".join(map(_escape, text))


def printable(text: str, limit: int = PRINTABLE_LIMIT) -> str:
    """``text`` from a peer, safe and unambiguous in a log line or on a terminal:
    backslashes doubled, then ``escape_unsafe``, and cut to ``limit`` characters of
    the original, marked by "...", if longer."""
    safe = escape_unsafe(text[:limit].replace("\\", "\\\\"))
    return safe + "..." if len(text) > limit else safe


# A token is printable ASCII without spaces: every JWT (base64url and dots), API key
# and base64 secret fits, and it can never forge a log line or hide in one.
_TOKEN_CHARACTERS = bytes(range(0x21, 0x7F))


def token_problem(token: bytes) -> str | None:
    """Why ``token`` cannot be a HELLO credential, or None if it can (protocol.md H2)."""
    if not 1 <= len(token) <= MAX_TOKEN_BYTES:
        return f"token must be 1 to {MAX_TOKEN_BYTES} bytes"
    if token.translate(None, _TOKEN_CHARACTERS):
        return "token must be printable ASCII without spaces"
    return None


# The registered properties whose value has a fixed size (protocol.md section 1).
_PROPERTY_SIZES = {
    Prop.MAX_PAYLOAD: U32_VALUE.size,
    Prop.RECONNECT_WINDOW: U32_VALUE.size,
    Prop.REAUTH: 0,
}


def parse_properties(payload: bytes, start: int, known: frozenset[Prop]) -> dict[Prop, bytes]:
    """The version 2 property block from ``start`` to the end of ``payload``: the
    values of the ``known`` properties by identifier. Checked as protocol.md's
    Properties says: the shape first (a property cut short, one repeated, a known one
    of the wrong size: MALFORMED), then an unknown property with the must-understand
    bit (UNSUPPORTED_PROPERTY); other unknown properties are skipped."""
    found: dict[Prop, bytes] = {}
    seen: set[int] = set()
    refused: int | None = None
    pos, end = start, len(payload)
    while pos < end:
        if end - pos < PROPERTY_HEADER.size:
            raise RemoteProtocolError(Code.MALFORMED, "a property header is cut short")
        ident, length = PROPERTY_HEADER.unpack_from(payload, pos)
        pos += PROPERTY_HEADER.size
        if length > end - pos:
            raise RemoteProtocolError(Code.MALFORMED, f"property 0x{ident:04x} is cut short")
        bare = ident & ~MUST_UNDERSTAND
        if bare in seen:
            raise RemoteProtocolError(Code.MALFORMED, f"property 0x{bare:04x} is repeated")
        seen.add(bare)
        if bare in known:
            prop = Prop(bare)
            if _PROPERTY_SIZES.get(prop, length) != length:
                raise RemoteProtocolError(Code.MALFORMED, f"{prop.name} of {length} bytes")
            found[prop] = payload[pos : pos + length]
        elif ident & MUST_UNDERSTAND and refused is None:
            refused = ident
        pos += length
    if refused is not None:
        raise RemoteProtocolError(
            Code.UNSUPPORTED_PROPERTY, f"must-understand property 0x{refused:04x} is unknown"
        )
    return found


def _max_payload(found: dict[Prop, bytes]) -> int | None:
    """A MAX_PAYLOAD property's value: at least the 1024 bytes every receiver takes (F2)."""
    raw = found.get(Prop.MAX_PAYLOAD)
    if raw is None:
        return None
    value = int(U32_VALUE.unpack(raw)[0])
    if value < MIN_MAX_PAYLOAD:
        raise RemoteProtocolError(Code.MALFORMED, f"MAX_PAYLOAD {value} is under {MIN_MAX_PAYLOAD}")
    return value


def _v1_token(payload: bytes, name_end: int) -> bytes | None:
    """Version 1's credential after the name, if the payload goes on (its shape only)."""
    size = len(payload)
    if size == name_end:
        return None
    token_start = name_end + TOKEN_LENGTH.size
    if size < token_start:
        raise RemoteProtocolError(Code.MALFORMED, "HELLO name length disagrees with the frame")
    if size != token_start + TOKEN_LENGTH.unpack_from(payload, name_end)[0]:
        raise RemoteProtocolError(Code.MALFORMED, "HELLO token length disagrees with the frame")
    return payload[token_start:]


def parse_hello(payload: bytes) -> Hello:
    """Decode a HELLO payload of version 1 or 2, checked in the order of protocol.md
    H2: the version, the shape (with version 2's properties), the name, then the form
    of the credential if there is one."""
    if not payload:
        raise RemoteProtocolError(Code.MALFORMED, "empty HELLO")
    if payload[0] not in SUPPORTED_VERSIONS:
        raise RemoteProtocolError(
            Code.UNSUPPORTED_VERSION,
            f"version {payload[0]} is not supported; this server speaks "
            + " and ".join(map(str, sorted(SUPPORTED_VERSIONS))),
        )
    if len(payload) < HELLO_FIXED.size:
        raise RemoteProtocolError(Code.MALFORMED, "HELLO too short")
    version, interval_ms, name_len = HELLO_FIXED.unpack_from(payload)
    name_end = HELLO_FIXED.size + name_len
    max_payload = None
    if version == VERSION_1:
        token = _v1_token(payload, name_end)
    else:
        if len(payload) < name_end:
            raise RemoteProtocolError(Code.MALFORMED, "HELLO name length disagrees with the frame")
        found = parse_properties(payload, name_end, HELLO_PROPS)
        token = found.get(Prop.TOKEN)
        max_payload = _max_payload(found)
    if not 1 <= name_len <= MAX_NAME_BYTES:
        raise RemoteProtocolError(Code.BAD_NAME, f"name must be 1 to {MAX_NAME_BYTES} bytes")
    try:
        name = payload[HELLO_FIXED.size : name_end].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(Code.BAD_NAME, "name is not valid UTF-8") from None
    if not _is_printable_name(name):
        raise RemoteProtocolError(
            Code.BAD_NAME, "name contains control, format or separator characters"
        )
    problem = name_problem(name)
    if problem is not None:
        raise RemoteProtocolError(Code.BAD_NAME, problem)
    if token is None:
        return Hello(version, interval_ms, name, max_payload=max_payload)
    problem = token_problem(token)
    if problem is not None:
        raise RemoteProtocolError(Code.UNAUTHORIZED, problem)
    return Hello(version, interval_ms, name, token.decode("ascii"), max_payload)


def parse_auth(payload: bytes) -> str | None:
    """An AUTH payload's TOKEN, or None for the server's answer (an empty block; A3).
    The block is checked as HELLO's (protocol.md Properties); a token of the wrong
    form is UNAUTHORIZED, as in HELLO (A2)."""
    token = parse_properties(payload, 0, AUTH_PROPS).get(Prop.TOKEN)
    if token is None:
        return None
    problem = token_problem(token)
    if problem is not None:
        raise RemoteProtocolError(Code.UNAUTHORIZED, problem)
    return token.decode("ascii")


def downgrade_hello(frame: bytes) -> bytes:
    """A version 2 HELLO frame said in version 1: the same name, interval and token,
    without the properties version 1 cannot carry (H10's fall-back)."""
    hello = parse_hello(frame[HEADER_SIZE:])
    return encode_hello(hello.name, hello.interval_ms, VERSION_1, token=hello.token)


def parse_welcome(payload: bytes, version: int = VERSION_1) -> Welcome:
    """Decode the WELCOME answering a HELLO of ``version``, checked in the order of
    protocol.md H3: the size, the version, the grant, then version 2's properties."""
    size = len(payload)
    if size != WELCOME_STRUCT.size and (version == VERSION_1 or size < WELCOME_STRUCT.size):
        raise RemoteProtocolError(Code.MALFORMED, f"WELCOME must be {WELCOME_STRUCT.size} bytes")
    answered, scheme, interval_ms, timeout_ms = WELCOME_STRUCT.unpack_from(payload)
    if answered != version:
        raise RemoteProtocolError(
            Code.UNSUPPORTED_VERSION, f"server answered version {answered} to {version}"
        )
    if scheme not in (Scheme.CLIENT, Scheme.SERVER):
        raise RemoteProtocolError(Code.MALFORMED, f"unknown scheme {scheme}")
    if not interval_ms > 0 or timeout_ms < 2 * interval_ms:
        raise RemoteProtocolError(
            Code.MALFORMED, "WELCOME needs 0 < interval and timeout >= 2 x interval (H3, T2)"
        )
    if version == VERSION_1:
        return Welcome(version, Scheme(scheme), interval_ms, timeout_ms)
    found = parse_properties(payload, WELCOME_STRUCT.size, WELCOME_PROPS)
    window = found.get(Prop.RECONNECT_WINDOW)
    return Welcome(
        version,
        Scheme(scheme),
        interval_ms,
        timeout_ms,
        _max_payload(found),
        None if window is None else int(U32_VALUE.unpack(window)[0]),
        Prop.REAUTH in found,
    )


def code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return f"0x{code:04x}"


def parse_close(payload: bytes) -> int:
    """Return the reason code of a CLOSE; unknown codes are passed through."""
    if len(payload) != CODE_STRUCT.size:
        raise RemoteProtocolError(Code.MALFORMED, "CLOSE must carry exactly a u16 code")
    return int(CODE_STRUCT.unpack(payload)[0])


def parse_error(payload: bytes) -> tuple[int, str]:
    """Return the code and message of an ERROR; the message is for humans only."""
    if len(payload) < CODE_STRUCT.size:
        raise RemoteProtocolError(Code.MALFORMED, "ERROR must start with a u16 code")
    (code,) = CODE_STRUCT.unpack_from(payload)
    return int(code), payload[CODE_STRUCT.size :].decode("utf-8", "replace")

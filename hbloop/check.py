"""``hbloop check HOST:PORT``: does a server speak protocol.md? In the spirit of Autobahn.

Each numbered case drives the server through real connections and tests one MUST or
SHOULD statement of protocol.md (its sections' statements, and P1 or P2 when told the
server's duplicate-name policy), reporting what it saw; ``hbloop.conformance`` holds
every MUST of protocol.md to a case here or in ``hbloop.check_client``. The server's scheme
is whatever it grants; the cases of the other scheme are skipped. Plain blocking
sockets with timeouts: a checker is a diagnostic, not a hot path, and each case reads
best as a straight-line script.
"""

from __future__ import annotations

import enum
import itertools
import json
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hbloop.core.policy import CHECK_ANSWER_TIMEOUT, CHECK_MAX_WAIT, CHECK_PROBE_INTERVAL
from hbloop.core.protocol import (
    Frame,
    FrameDecoder,
    RemoteProtocolError,
    code_name,
    parse_close,
    parse_error,
    parse_welcome,
    printable,
)
from hbloop.core.wire import (
    ABSOLUTE_MAX_PAYLOAD,
    CODE_STRUCT,
    HEADER_SIZE,
    HEADER_STRUCT,
    HELLO_FIXED,
    MAX_HELLO_PAYLOAD,
    MAX_NAME_BYTES,
    MAX_TOKEN_BYTES,
    MIN_MAX_PAYLOAD,
    MUST_UNDERSTAND,
    PING_FRAME,
    PONG_FRAME,
    VERSION_2,
    Code,
    FrameType,
    Scheme,
    Welcome,
    encode_auth,
    encode_close,
    encode_data,
    encode_frame,
    encode_hello,
    encode_property,
    encode_welcome,
)

MUST = "MUST"
SHOULD = "SHOULD"

# Asking for a 1 ms interval gets the server's minimum: the quickest timeout to measure.
SHORTEST_INTERVAL_MS = 1

# A close this much before T is still "at T": clock granularity, not a violation.
EARLY_TOLERANCE = 0.02

# A close counts as "within bounds" up to T + max(LATE_SLACK, LATE_RATIO x T) late.
LATE_SLACK = 1.0
LATE_RATIO = 0.5

# Gap between the bytes of the HELLO sent one byte at a time (F4); with TCP_NODELAY
# each byte leaves in its own segment.
TRICKLE_GAP = 0.005

# A HELLO version no server speaks (H2): the highest the byte holds, far past version
# 2, so that the case holds for servers of version 1 and 2 alike.
UNSPOKEN_VERSION = 0xFF

# The checker's own receive limit: large enough for any DATA a server echoes back.
PROBE_MAX_PAYLOAD = 16 * 1024 * 1024

# Bytes read from the server at a time.
RECV_CHUNK = 65536

# The server-scheme case shows at most this many gaps between PINGs: three PINGs are
# expected, and a flooding server's millions would drown the report.
GAPS_SHOWN = 5

# Each probe says HELLO with its own name, CHECK_NAME-N, so that a server refusing or
# replacing duplicate names treats the cases' connections as strangers.
CHECK_NAME = "hbloop-check"

# The name of the C4 case's probe, which waits for the server to be stopped: whoever
# stops it can watch its log for this name.
AWAITING_SHUTDOWN = f"{CHECK_NAME}-awaiting-shutdown"


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


class CaseFailed(Exception):
    """The server broke the statement under test; the message is what was seen."""


class CaseSkipped(Exception):
    """The case does not apply to this server (or would take too long)."""


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    interval: float = CHECK_PROBE_INTERVAL
    max_wait: float = CHECK_MAX_WAIT
    handshake_timeout: float | None = None  # the server's deadline; H5 is skipped without it
    answer_timeout: float = CHECK_ANSWER_TIMEOUT
    duplicates: str | None = None  # the server's duplicate-name policy; P1/P2 skipped without
    tls: ssl.SSLContext | None = None  # connect with TLS (hbloop.tls.client_context)
    token: str | None = None  # the credential every HELLO of the checker carries
    max_handshakes: int | None = None  # the server's handshake cap; SERVER_FULL skipped without
    shutdown_within: float | None = None  # the server is stopped within this; C4 skipped without
    cases: tuple[str, ...] = ()  # by number or statement (``numbered``); every case without

    def probe_name(self, number: int) -> str:
        """Probe ``number``'s name: one of its own, except that a token binds every
        probe to the name it was issued for, CHECK_NAME."""
        return CHECK_NAME if self.token is not None else f"{CHECK_NAME}-{number}"

    def hello(self, name: str, interval_ms: int) -> bytes:
        """A HELLO of the checker's, with its credential if it has one."""
        return encode_hello(name, interval_ms, token=self.token)

    def connect(self) -> socket.socket:
        """A connection to the server, through TLS (its handshake done) if asked."""
        sock = socket.create_connection((self.host, self.port), self.answer_timeout)
        if self.tls is None:
            return sock
        try:
            return self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Result:
    number: int
    statement: str
    level: str
    title: str
    verdict: Verdict
    saw: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.number,
            "statement": self.statement,
            "level": self.level,
            "title": self.title,
            "result": self.verdict.value,
            "saw": self.saw,
        }


def describe_welcome(welcome: Welcome) -> str:
    return (
        f"WELCOME v{welcome.version} {welcome.scheme.name.lower()} pings, "
        f"interval {welcome.interval_ms} ms, timeout {welcome.timeout_ms} ms"
    )


def describe(frame: Frame | None) -> str:
    """One frame, as a human would name it."""
    if frame is None:
        return "the connection closed"
    ftype, payload = frame
    kind = FrameType(ftype)
    try:
        if kind is FrameType.WELCOME:
            return describe_welcome(parse_welcome(payload))
        if kind is FrameType.CLOSE:
            return f"CLOSE {code_name(parse_close(payload))}"
        if kind is FrameType.ERROR:
            code, message = parse_error(payload)
            return f"ERROR {code_name(code)} '{printable(message)}'"
    except RemoteProtocolError as exc:
        return f"invalid {kind.name} ({exc})"
    return f"{kind.name} of {len(payload)} bytes" if payload else kind.name


class Link:
    """One blocking connection to the peer under test (a server for ``hbloop check``, a
    client for ``hbloop check-client``).

    Every wait ends at a deadline (``time.monotonic()``), even while the peer streams
    frames without end. While it waits for an answer, the link answers the peer's
    PINGs (T4), with one PONG for the PINGs read together, so that a flood of PINGs
    gets a trickle of PONGs.
    """

    def __init__(self, sock: socket.socket, answer_timeout: float) -> None:
        self.answer_timeout = answer_timeout
        self.sock = sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder(PROBE_MAX_PAYLOAD)
        self.frames: deque[Frame] = deque()
        self.pings_buffered = 0  # PINGs among ``frames``
        self.closed = False

    def send(self, data: bytes) -> None:
        """Send all of ``data`` within an answer timeout."""
        self.sock.settimeout(self.answer_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise CaseFailed(
                f"the peer read nothing for {self.answer_timeout:g}s: could not send"
            ) from None
        except OSError as exc:
            raise CaseFailed(f"the peer closed the connection ({exc.strerror or exc})") from None

    def recv(self, deadline: float) -> Frame | None:
        """The next frame; None once the server has closed. TimeoutError once
        ``deadline`` has passed: frames already read still come out, but the socket is
        not read past it, so a server sending without end cannot hold the probe."""
        while not self.frames and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(RECV_CHUNK)
            except TimeoutError:
                raise  # an OSError, but not a close
            except OSError:
                data = b""  # a reset is a close, as far as the case is concerned
            if not data:
                self.closed = True
                break
            try:
                frames = self.decoder.feed(data)
            except RemoteProtocolError as exc:
                raise CaseFailed(f"the peer sent an invalid frame: {exc}") from None
            self.frames.extend(frames)
            self.pings_buffered += sum(1 for ftype, _ in frames if ftype == FrameType.PING)
        if not self.frames:
            return None
        frame = self.frames.popleft()
        if frame[0] == FrameType.PING:
            self.pings_buffered -= 1
        return frame

    def recv_ending(self, give_up: float, since: float, after: str) -> Frame | None:
        """The peer's CLOSE or ERROR (None if it closed without either), passing over
        whatever comes before; CaseFailed if the connection is still open at
        ``give_up`` (``since``: when ``after`` happened, for the message)."""
        while True:
            try:
                frame = self.recv(give_up)
            except TimeoutError:
                raise CaseFailed(f"still open {give_up - since:.1f}s after {after}") from None
            if frame is None or frame[0] in (FrameType.CLOSE, FrameType.ERROR):
                return frame

    def answer_ping(self) -> None:
        """PONG for a PING just received, unless a later PING read with it is still
        to come (that one gets the PONG)."""
        if not self.pings_buffered:
            self.send(PONG_FRAME)

    def await_frame(self, what: str, passing: frozenset[FrameType]) -> Frame | None:
        """The next frame whose type is not in ``passing`` (None if the server closed),
        within an answer timeout; the PINGs passed meanwhile are answered."""
        return self.await_frame_within(what, passing, self.answer_timeout)

    def await_frame_within(
        self, what: str, passing: frozenset[FrameType], wait: float
    ) -> Frame | None:
        """``await_frame``, waiting ``wait`` seconds."""
        deadline = time.monotonic() + wait
        passed = 0
        while True:
            try:
                frame = self.recv(deadline)
            except TimeoutError:
                meanwhile = f" ({passed} heartbeat or DATA frames came meanwhile)" if passed else ""
                raise CaseFailed(f"no {what} within {wait:g}s{meanwhile}") from None
            if frame is None or frame[0] not in passing:
                return frame
            passed += 1
            if frame[0] == FrameType.PING:
                self.answer_ping()

    def recv_answer(self) -> Frame | None:
        """The next frame that is not a heartbeat or echoed DATA; fails on silence."""
        return self.await_frame("answer", HEARTBEATS_AND_DATA)

    def expect_welcome(self) -> Welcome:
        frame = self.recv_answer()
        if frame is None or frame[0] != FrameType.WELCOME:
            raise CaseFailed(f"expected WELCOME, got {describe(frame)}")
        try:
            return parse_welcome(frame[1])
        except RemoteProtocolError as exc:
            raise CaseFailed(f"invalid WELCOME: {exc}") from None

    def expect_pong(self) -> None:
        """Wait for PONG, letting PINGs and echoed DATA pass."""
        frame = self.await_frame("PONG", PINGS_AND_DATA)
        if frame is None or frame[0] != FrameType.PONG:
            raise CaseFailed(f"expected PONG, got {describe(frame)}")

    def expect_close(self) -> str:
        """Wait for the server's FIN; fail on anything it sends first but heartbeats."""
        start = time.monotonic()
        frame = self.recv_answer()
        if frame is not None:
            raise CaseFailed(f"expected the connection to close, got {describe(frame)}")
        return f"closed after {(time.monotonic() - start) * 1000:.0f} ms"

    def expect_error(self, code: Code) -> str:
        frame = self.recv_answer()
        if frame is None or frame[0] != FrameType.ERROR:
            raise CaseFailed(f"expected ERROR {code.name}, got {describe(frame)}")
        got, _ = parse_error(frame[1])
        if got != code:
            raise CaseFailed(f"expected ERROR {code.name}, got {describe(frame)}")
        return f"{describe(frame)}, then {self.expect_close()}"

    def close(self) -> None:
        self.sock.close()


class Probe(Link):
    """A link of the checker's to the server under test, saying HELLO as ``name``."""

    def __init__(self, settings: Settings, name: str) -> None:
        super().__init__(settings.connect(), settings.answer_timeout)
        self.settings = settings
        self.name = name

    def hello(self, interval_ms: int) -> Welcome:
        self.send(self.settings.hello(self.name, interval_ms))
        return self.expect_welcome()


HEARTBEATS_AND_DATA = frozenset({FrameType.PING, FrameType.PONG, FrameType.DATA})
PINGS_AND_DATA = frozenset({FrameType.PING, FrameType.DATA})


@dataclass
class Traffic:
    """What a connection kept alive for a while saw."""

    pings: list[float] = field(default_factory=list)  # arrival times of server PINGs
    pongs: int = 0


@dataclass(frozen=True)
class Silence:
    """The timeout measurement shared by the T6 cases."""

    timeout: float
    closed_after: float
    last_frame: Frame | None  # CLOSE, ERROR or None (plain close)


class Checker:
    """Runs the cases against one server and collects their results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.interval_ms = max(1, round(settings.interval * 1000))
        self._welcome: Welcome | None = None
        self._silence: Silence | None = None
        self._probes: list[Probe] = []
        self._names = itertools.count(1)

    # --- connections ---------------------------------------------------------------

    def connect(self) -> Probe:
        try:
            probe = Probe(self.settings, self.settings.probe_name(next(self._names)))
        except OSError as exc:
            raise CaseFailed(f"cannot connect: {exc.strerror or exc}") from None
        self._probes.append(probe)
        return probe

    def open(self, interval_ms: int | None = None) -> tuple[Probe, Welcome]:
        probe = self.connect()
        welcome = probe.hello(self.interval_ms if interval_ms is None else interval_ms)
        return probe, welcome

    @property
    def welcome(self) -> Welcome:
        """The grant for the interval the liveness cases ask for."""
        if self._welcome is None:
            probe, self._welcome = self.open()
            probe.send(encode_close(Code.NORMAL))
        return self._welcome

    def require_scheme(self, scheme: Scheme) -> Welcome:
        welcome = self.welcome
        if welcome.scheme is not scheme:
            raise CaseSkipped(
                f"not applicable: the server grants {welcome.scheme.name.lower()} pings"
            )
        return welcome

    def require_time(self, seconds: float) -> None:
        if seconds > self.settings.max_wait:
            raise CaseSkipped(
                f"would take {seconds:.1f}s, over --max-wait {self.settings.max_wait:g}s"
            )

    def close_all(self) -> None:
        for probe in self._probes:
            probe.close()
        self._probes.clear()

    # --- shared measurements ---------------------------------------------------------

    def keep_alive(
        self, probe: Probe, duration: float, every: float, frame: bytes | None, answer_pings: bool
    ) -> Traffic:
        """Send ``frame`` every ``every`` seconds for ``duration``; fail if the server
        closes or complains meanwhile."""
        traffic = Traffic()
        start = time.monotonic()
        deadline = start + duration
        next_send = start
        while (now := time.monotonic()) < deadline:
            if frame is not None and now >= next_send:
                probe.send(frame)
                next_send += every
            wake = min(next_send, deadline) if frame is not None else deadline
            try:
                got = probe.recv(wake)
            except TimeoutError:
                continue
            if got is None or got[0] in (FrameType.CLOSE, FrameType.ERROR):
                raise CaseFailed(f"{describe(got)} after {time.monotonic() - start:.2f}s")
            if got[0] == FrameType.PING:
                traffic.pings.append(time.monotonic())
                if answer_pings:
                    probe.answer_ping()
            elif got[0] == FrameType.PONG:
                traffic.pongs += 1
        return traffic

    def silence(self) -> Silence:
        """Handshake with the shortest interval, then say nothing; time the close."""
        if self._silence is None:
            probe = self.connect()
            sent_at = time.monotonic()
            welcome = probe.hello(SHORTEST_INTERVAL_MS)
            timeout = welcome.timeout_ms / 1000
            limit = late_limit(timeout)
            self.require_time(limit)
            give_up = sent_at + limit + self.settings.answer_timeout
            frame = probe.recv_ending(give_up, sent_at, "HELLO")
            self._silence = Silence(timeout, time.monotonic() - sent_at, frame)
        return self._silence


def late_limit(timeout: float) -> float:
    return timeout + max(LATE_SLACK, LATE_RATIO * timeout)


# --- the cases ---------------------------------------------------------------------

CaseRun = Callable[[Checker], str]


@dataclass(frozen=True)
class Case:
    statement: str
    level: str
    title: str
    run: Callable[[Any], str]  # a Checker's case, or a check_client.Server's


CASES: list[Case] = []


def case(statement: str, level: str, title: str) -> Callable[[CaseRun], CaseRun]:
    def register(run: CaseRun) -> CaseRun:
        CASES.append(Case(statement, level, title, run))
        return run

    return register


@case("H3", MUST, "HELLO is answered with WELCOME v1, scheme 0 or 1, 0 < 2 x interval <= timeout")
def _welcome(checker: Checker) -> str:
    return describe_welcome(checker.welcome)


@case("T2", MUST, "the granted timeout is at least twice the granted interval")
def _two_intervals(checker: Checker) -> str:
    welcome = checker.welcome
    ratio = welcome.timeout_ms / welcome.interval_ms
    if ratio < 2:
        raise CaseFailed(f"timeout/interval = {ratio:.2f}")
    return f"timeout/interval = {ratio:.2f}"


@case("T1", MUST, "every grant is ceil(I x E / D), exactly, from the default grant D/E")
def _ratio(checker: Checker) -> str:
    default = checker.open(0)[1]
    d, e = default.interval_ms, default.timeout_ms
    seen = [f"{d}/{e} ms by default"]
    for request in (SHORTEST_INTERVAL_MS, checker.interval_ms):
        grant = checker.open(request)[1]
        expected = (grant.interval_ms * e + d - 1) // d  # protocol.md T1, in integers
        seen.append(f"{grant.interval_ms}/{grant.timeout_ms} ms for {request} ms")
        if grant.timeout_ms != expected:
            raise CaseFailed(f"{', '.join(seen)}: expected a timeout of {expected} ms")
    return "interval/timeout " + ", ".join(seen)


@case("F4", MUST, "a HELLO sent one byte per segment is decoded")
def _trickled_hello(checker: Checker) -> str:
    probe = checker.connect()
    for byte in checker.settings.hello(probe.name, checker.interval_ms):
        probe.send(bytes([byte]))
        time.sleep(TRICKLE_GAP)
    return describe_welcome(probe.expect_welcome())


@case("F4", MUST, "HELLO, PING and DATA coalesced in one segment are all decoded")
def _coalesced(checker: Checker) -> str:
    probe = checker.connect()
    probe.send(
        checker.settings.hello(probe.name, checker.interval_ms) + PING_FRAME + encode_data(b"x")
    )
    probe.expect_welcome()
    probe.expect_pong()
    return "WELCOME, then PONG"


@case("T4", MUST, "PING is answered with PONG, whatever the scheme")
def _pong(checker: Checker) -> str:
    probe, _ = checker.open()
    start = time.monotonic()
    probe.send(PING_FRAME)
    probe.expect_pong()
    return f"PONG after {(time.monotonic() - start) * 1000:.1f} ms"


@case("T3", MUST, "client scheme: client PINGs every interval keep it open past the timeout")
def _client_pings(checker: Checker) -> str:
    welcome = checker.require_scheme(Scheme.CLIENT)
    interval, timeout = welcome.interval_ms / 1000, welcome.timeout_ms / 1000
    checker.require_time(timeout + interval)
    probe, _ = checker.open()
    traffic = checker.keep_alive(probe, timeout + interval, interval, PING_FRAME, True)
    if traffic.pongs == 0:
        raise CaseFailed("no PONG for any PING")
    return f"open after {timeout + interval:.2f}s, {traffic.pongs} PONGs"


@case("T3", MUST, "server scheme: the server PINGs about every interval")
def _server_pings(checker: Checker) -> str:
    welcome = checker.require_scheme(Scheme.SERVER)
    interval = welcome.interval_ms / 1000
    duration = 3.5 * interval  # room for three PINGs: two gaps to measure
    checker.require_time(duration)
    probe, _ = checker.open()
    pings = checker.keep_alive(probe, duration, interval, None, True).pings
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    shown = ", ".join(f"{gap * 1000:.0f}" for gap in gaps[:GAPS_SHOWN])
    seen = f"{len(pings)} PINGs, gaps {shown}{', ...' if len(gaps) > GAPS_SHOWN else ''} ms"
    if len(pings) < 2:
        raise CaseFailed(f"{len(pings)} PINGs in {duration:.2f}s")
    if any(not interval - EARLY_TOLERANCE <= gap <= late_limit(interval) for gap in gaps):
        raise CaseFailed(f"{seen}; expected about {welcome.interval_ms} ms")
    return seen


@case("T5", MUST, "DATA alone, with no PING or PONG, keeps the client alive past the timeout")
def _data_liveness(checker: Checker) -> str:
    welcome = checker.welcome
    interval, timeout = welcome.interval_ms / 1000, welcome.timeout_ms / 1000
    checker.require_time(timeout + interval)
    probe, _ = checker.open()
    checker.keep_alive(probe, timeout + interval, interval / 2, encode_data(b"alive"), False)
    return f"open after {timeout + interval:.2f}s of DATA only"


@case("F2", MUST, f"a DATA payload of {MIN_MAX_PAYLOAD} bytes is accepted")
def _max_frame(checker: Checker) -> str:
    probe, _ = checker.open()
    probe.send(encode_data(bytes(MIN_MAX_PAYLOAD)) + PING_FRAME)
    probe.expect_pong()
    return "accepted: the PING after it was answered"


# PINGs sent back to back in the T8 case: far past any sensible number of strikes
# (hbloop's server: 3), so that only a server that never counts them answers them all.
PING_FLOOD = 100

# A code no registry gives out (section 6: receivers accept it) and an ERROR message
# past F5's 200 bytes that is not UTF-8, for the F5 case.
UNKNOWN_CODE = 0x0F0F
LONG_MESSAGE = b"\xff\xfe" + b"m" * 298

# The DATA rate of the T9 case: twice what hbloop's server reads from a peer by
# default (--max-peer-rate 1000), so that a throttling server does throttle.
FLOOD_RATE = 2000

# An identifier no registry will give out (protocol.md, Properties): the highest
# without the must-understand bit, for the F6 cases.
UNKNOWN_PROPERTY = 0x7FFF


def _error_code(frame: Frame | None) -> int | None:
    """The code of an ERROR frame; None for any other answer."""
    if frame is None or frame[0] != FrameType.ERROR:
        return None
    return parse_error(frame[1])[0]


def _v2_answer(checker: Checker, extra: bytes = b"") -> tuple[Probe, Frame | None]:
    """A version 2 HELLO (the checker's token as a property, then ``extra``) and the
    server's answer; skipped for a server that speaks version 1 only (H10)."""
    probe = checker.connect()
    hello = encode_hello(probe.name, checker.interval_ms, VERSION_2, token=checker.settings.token)
    probe.send(encode_frame(FrameType.HELLO, hello[HEADER_SIZE:] + extra))
    frame = probe.recv_answer()
    if _error_code(frame) == Code.UNSUPPORTED_VERSION:
        raise CaseSkipped("the server speaks version 1 only")
    return probe, frame


def _v2_welcome(frame: Frame | None) -> Welcome:
    if frame is None or frame[0] != FrameType.WELCOME:
        raise CaseFailed(f"expected WELCOME, got {describe(frame)}")
    try:
        return parse_welcome(frame[1], VERSION_2)
    except RemoteProtocolError as exc:
        raise CaseFailed(f"invalid version 2 WELCOME: {exc}") from None


@case("H10", MUST, "a version 2 HELLO gets a version 2 WELCOME with the server's MAX_PAYLOAD")
def _version_2(checker: Checker) -> str:
    welcome = _v2_welcome(_v2_answer(checker)[1])
    if welcome.max_payload is None:
        raise CaseFailed(f"{describe_welcome(welcome)} without MAX_PAYLOAD")
    return f"{describe_welcome(welcome)}, MAX_PAYLOAD {welcome.max_payload}"


@case("F6", MUST, "version 2: a HELLO property unknown to the server, without the bit, is skipped")
def _unknown_property(checker: Checker) -> str:
    frame = _v2_answer(checker, encode_property(UNKNOWN_PROPERTY, b"x"))[1]
    return describe_welcome(_v2_welcome(frame))


@case("F6", MUST, "version 2: an unknown must-understand property: ERROR UNSUPPORTED_PROPERTY")
def _must_understand(checker: Checker) -> str:
    probe, frame = _v2_answer(checker, encode_property(MUST_UNDERSTAND | UNKNOWN_PROPERTY, b""))
    if _error_code(frame) != Code.UNSUPPORTED_PROPERTY:
        raise CaseFailed(f"expected ERROR UNSUPPORTED_PROPERTY, got {describe(frame)}")
    return f"{describe(frame)}, then {probe.expect_close()}"


# What the checker offers in AUTH without a token of its own: a server that checks
# no credentials answers any well-formed one (A4).
PLACEHOLDER_TOKEN = "hbloop-check"


@case("A3", MUST, "version 2: AUTH, where WELCOME offered REAUTH, is answered with an empty AUTH")
def _reauth(checker: Checker) -> str:
    probe, frame = _v2_answer(checker)
    if not _v2_welcome(frame).reauth:
        raise CaseSkipped("the server's WELCOME does not offer AUTH (REAUTH)")
    probe.send(encode_auth(checker.settings.token or PLACEHOLDER_TOKEN))
    answer = probe.recv_answer()
    if answer != (FrameType.AUTH, b""):
        raise CaseFailed(f"expected an empty AUTH, got {describe(answer)}")
    return "answered with an empty AUTH"


@case("A2", MUST, "version 2: AUTH without TOKEN (an empty property block) gets MALFORMED")
def _auth_without_token(checker: Checker) -> str:
    probe, frame = _v2_answer(checker)
    if not _v2_welcome(frame).reauth:
        raise CaseSkipped("the server's WELCOME does not offer AUTH (REAUTH)")
    probe.send(encode_frame(FrameType.AUTH, b""))
    return probe.expect_error(Code.MALFORMED)


@case("A1", MUST, "version 1: AUTH is an unknown type: ERROR UNKNOWN_TYPE")
def _auth_in_version_1(checker: Checker) -> str:
    probe, _ = checker.open()
    probe.send(encode_auth(checker.settings.token or PLACEHOLDER_TOKEN))
    return probe.expect_error(Code.UNKNOWN_TYPE)


@dataclass(frozen=True)
class Violation:
    statement: str
    title: str
    sent: bytes
    code: Code
    after_handshake: bool

    @property
    def claim(self) -> str:
        when = " after the handshake" if self.after_handshake else ""
        return f"{self.title}{when}: ERROR {self.code.name}, then close"


# A code point unassigned (Cn) in Unicode 14.0, the version protocol.md names, and in
# every version since: in the Greek block, between U+0377 and U+037A.
UNASSIGNED = 0x0378


def _hello_payload(name: bytes, version: int = 1, name_len: int | None = None) -> bytes:
    return HELLO_FIXED.pack(version, 0, len(name) if name_len is None else name_len) + name


VIOLATIONS = [
    Violation("H1", "PING as the first frame", PING_FRAME, Code.HELLO_REQUIRED, False),
    Violation("H1", "DATA as the first frame", encode_data(b"x"), Code.HELLO_REQUIRED, False),
    Violation(
        "F1",
        "an unknown type as the first frame: the header check comes before H1",
        encode_frame(0x09),
        Code.UNKNOWN_TYPE,
        False,
    ),
    Violation(
        "F2",
        f"before HELLO, a header announcing {MAX_HELLO_PAYLOAD + 1} bytes, sent alone",
        HEADER_STRUCT.pack(MAX_HELLO_PAYLOAD + 1, FrameType.DATA, 0),
        Code.FRAME_TOO_LARGE,
        False,
    ),
    Violation(
        "H2",
        "HELLO version 255 (no server speaks it)",
        encode_frame(FrameType.HELLO, _hello_payload(b"check", version=UNSPOKEN_VERSION)),
        Code.UNSUPPORTED_VERSION,
        False,
    ),
    Violation(
        "H2",
        "HELLO version 255 of 1 byte: the version is checked first",
        encode_frame(FrameType.HELLO, bytes([UNSPOKEN_VERSION])),
        Code.UNSUPPORTED_VERSION,
        False,
    ),
    Violation(
        "H2",
        "HELLO whose name length disagrees with the frame",
        encode_frame(FrameType.HELLO, _hello_payload(b"check", name_len=9)),
        Code.MALFORMED,
        False,
    ),
    Violation(
        "H2",
        "HELLO with an empty name",
        encode_frame(FrameType.HELLO, _hello_payload(b"")),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "H2",
        "HELLO with a 65-byte name",
        encode_frame(FrameType.HELLO, _hello_payload(b"n" * 65)),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "H2",
        "HELLO with a 255-byte name, the longest that fits the pre-handshake limit",
        encode_frame(FrameType.HELLO, _hello_payload(b"n" * 255)),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "H2",
        "HELLO with a name that is not UTF-8",
        encode_frame(FrameType.HELLO, _hello_payload(b"\xff\xfe")),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "H2",
        "HELLO with a control character in the name",
        encode_frame(FrameType.HELLO, _hello_payload(b"a\nb")),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "H2",
        "HELLO with a bidi override (U+202E, a format character) in the name",
        encode_frame(FrameType.HELLO, _hello_payload("a\u202eb".encode())),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "N1",
        "HELLO with a space in the name, which PRECIS usernames exclude",
        encode_frame(FrameType.HELLO, _hello_payload(b"check name")),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "N2",
        "HELLO with a name not in NFC (e, then U+0301 COMBINING ACUTE ACCENT)",
        encode_frame(FrameType.HELLO, _hello_payload("cafe\u0301".encode())),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "F8",
        "HELLO with a line separator (U+2028, Zl) in the name",
        encode_frame(FrameType.HELLO, _hello_payload("a\u2028b".encode())),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "F8",
        "HELLO with a paragraph separator (U+2029, Zp) in the name",
        encode_frame(FrameType.HELLO, _hello_payload("a\u2029b".encode())),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "F8",
        "HELLO with a C1 control (U+0085) in the name",
        encode_frame(FrameType.HELLO, _hello_payload("a\u0085b".encode())),
        Code.BAD_NAME,
        False,
    ),
    Violation(
        "F8",
        f"HELLO with U+{UNASSIGNED:04X}, unassigned in Unicode 14.0 and since, in the name",
        encode_frame(FrameType.HELLO, _hello_payload(f"a{chr(UNASSIGNED)}b".encode())),
        Code.BAD_NAME,
        False,
    ),
    Violation("H4", "a second HELLO", encode_hello(CHECK_NAME, 0), Code.DUPLICATE_HELLO, True),
    Violation(
        "H6",
        "WELCOME sent by the client",
        encode_welcome(Welcome(1, Scheme.CLIENT, 1000, 3000)),
        Code.UNEXPECTED_FRAME,
        True,
    ),
    Violation(
        "F1",
        "a frame with non-zero flags",
        HEADER_STRUCT.pack(0, FrameType.PING, 1),
        Code.RESERVED_BITS,
        True,
    ),
    Violation("F1", "frame type 0x09", encode_frame(0x09), Code.UNKNOWN_TYPE, True),
    Violation(
        "F1",
        "a header announcing 2^32-1 bytes, sent alone",
        HEADER_STRUCT.pack(ABSOLUTE_MAX_PAYLOAD, FrameType.DATA, 0),
        Code.FRAME_TOO_LARGE,
        True,
    ),
    Violation(
        "F3", "PING with a payload", encode_frame(FrameType.PING, b"\x00"), Code.MALFORMED, True
    ),
    Violation(
        "F3", "CLOSE of 3 bytes", encode_frame(FrameType.CLOSE, bytes(3)), Code.MALFORMED, True
    ),
]


def _violation_case(violation: Violation) -> CaseRun:
    def run(checker: Checker) -> str:
        probe = checker.open()[0] if violation.after_handshake else checker.connect()
        probe.send(violation.sent)
        return probe.expect_error(violation.code)

    return run


for _violation in VIOLATIONS:
    case(_violation.statement, MUST, _violation.claim)(_violation_case(_violation))


@case("T6", MUST, "a silent client is closed at the timeout, within [T, T + slack]")
def _timeout(checker: Checker) -> str:
    silence = checker.silence()
    seen = (
        f"{describe(silence.last_frame)} {silence.closed_after * 1000:.0f} ms after HELLO, "
        f"T = {silence.timeout * 1000:.0f} ms"
    )
    if not silence.timeout - EARLY_TOLERANCE <= silence.closed_after <= late_limit(silence.timeout):
        raise CaseFailed(seen)
    return seen


@case("T6", SHOULD, "the server sends CLOSE TIMEOUT before closing a silent client")
def _timeout_close(checker: Checker) -> str:
    last = checker.silence().last_frame
    if last is None or last[0] != FrameType.CLOSE or parse_close(last[1]) != Code.TIMEOUT:
        raise CaseFailed(describe(last))
    return describe(last)


@case("T8", MUST, f"{PING_FLOOD} PINGs back to back: ERROR TOO_MANY_PINGS (strikes are counted)")
def _ping_strikes(checker: Checker) -> str:
    probe, _ = checker.open()
    for _ in range(PING_FLOOD):
        probe.send(PING_FRAME)
    frame = probe.await_frame("ERROR TOO_MANY_PINGS", frozenset({FrameType.PONG}))
    if _error_code(frame) != Code.TOO_MANY_PINGS:
        raise CaseFailed(f"expected ERROR TOO_MANY_PINGS, got {describe(frame)}")
    return f"{describe(frame)}, then {probe.expect_close()}"


@case("C5", MUST, "end of stream inside a frame: ERROR MALFORMED, then close")
def _truncated(checker: Checker) -> str:
    if checker.settings.tls is not None:
        # The case ends the stream with a TCP half-close; on TLS that drops the TLS
        # layer (the checker would then read records as frames), and a close_notify
        # ends the TLS session, not just one direction.
        raise CaseSkipped("needs a plain port: the case half-closes the TCP stream")
    probe, _ = checker.open()
    probe.send(PING_FRAME[:3])
    probe.sock.shutdown(socket.SHUT_WR)
    return probe.expect_error(Code.MALFORMED)


@case("F5", MUST, "ERROR with an unknown code and 300 bytes of non-UTF-8: closed, no reply")
def _long_error(checker: Checker) -> str:
    probe, _ = checker.open()
    probe.send(encode_frame(FrameType.ERROR, CODE_STRUCT.pack(UNKNOWN_CODE) + LONG_MESSAGE))
    return probe.expect_close()


@case("H2", MUST, "past the server's handshake cap: ERROR SERVER_FULL")
def _server_full(checker: Checker) -> str:
    cap = checker.settings.max_handshakes
    if cap is None:
        raise CaseSkipped("needs the server's cap: --max-handshakes N")
    holders = [checker.connect() for _ in range(cap)]  # in their handshake: they say nothing
    seen = checker.connect().expect_error(Code.SERVER_FULL)
    for holder in holders:
        holder.close()
    return f"{seen}; {_welcomed_again(checker)}"


def _welcomed_again(checker: Checker) -> str:
    """Once the holders of the handshake slots have left, a newcomer is welcomed again
    (within an answer timeout: the server frees a slot when it reads the holder's FIN,
    which a busy server may do after accepting the newcomer). The cases after this one
    need the slots back, so the case ends when a HELLO gets through."""
    start = time.monotonic()
    while True:
        probe = checker.connect()
        probe.send(checker.settings.hello(probe.name, checker.interval_ms))
        frame = probe.recv_answer()
        if frame is not None and frame[0] == FrameType.WELCOME:
            return f"welcomed again after {(time.monotonic() - start) * 1000:.0f} ms"
        if _error_code(frame) != Code.SERVER_FULL:
            raise CaseFailed(f"after the holders left: expected WELCOME, got {describe(frame)}")
        if time.monotonic() - start > checker.settings.answer_timeout:
            raise CaseFailed(
                f"still SERVER_FULL {checker.settings.answer_timeout:g}s after the holders left"
            )
        probe.close()


@case("K1", MUST, f"CLOSE with code 0x{UNKNOWN_CODE:04x}, unknown: the server closes, no reply")
def _unknown_close(checker: Checker) -> str:
    probe, _ = checker.open()
    probe.send(encode_close(UNKNOWN_CODE))
    return probe.expect_close()


@case("S1", MUST, "a version 1 HELLO of 4168 bytes (64-byte name, 4096-byte token) is judged")
def _largest_hello(checker: Checker) -> str:
    probe = checker.connect()
    name = probe.name.ljust(MAX_NAME_BYTES, "x")
    probe.send(encode_hello(name, checker.interval_ms, token="t" * MAX_TOKEN_BYTES))
    frame = probe.recv_answer()
    # An authenticating server refuses the made-up token: judged, as S1 asks.
    if frame is not None and (
        frame[0] == FrameType.WELCOME or _error_code(frame) == Code.UNAUTHORIZED
    ):
        return describe(frame)
    raise CaseFailed(f"expected WELCOME or ERROR UNAUTHORIZED, got {describe(frame)}")


@case("S2", MUST, "with --token-file: the checker's token under another name is UNAUTHORIZED")
def _token_for_another_name(checker: Checker) -> str:
    if checker.settings.token is None:
        raise CaseSkipped("needs a token the server accepts: --token-file FILE")
    probe = checker.connect()
    probe.send(encode_hello(f"{CHECK_NAME}-not", checker.interval_ms, token=checker.settings.token))
    return probe.expect_error(Code.UNAUTHORIZED)


@case("T9", MUST, f"{FLOOD_RATE} DATA a second, PINGs on time: the server keeps the client")
def _throttled(checker: Checker) -> str:
    welcome = checker.welcome
    interval, timeout = welcome.interval_ms / 1000, welcome.timeout_ms / 1000
    checker.require_time(timeout + interval)
    probe, _ = checker.open()
    every = interval / 2
    burst = encode_data(b"d") * round(FLOOD_RATE * every) + PING_FRAME
    checker.keep_alive(probe, timeout + interval, every, burst, True)
    return f"open after {timeout + interval:.2f}s of DATA floods"


@case("C2", MUST, "after the client's CLOSE NORMAL the server stops sending and closes")
def _close(checker: Checker) -> str:
    probe, _ = checker.open()
    probe.send(encode_close(Code.NORMAL))
    return probe.expect_close()


@case(
    "H5", MUST, "a partial HELLO is closed at the handshake deadline with CLOSE HANDSHAKE_TIMEOUT"
)
def _handshake_deadline(checker: Checker) -> str:
    deadline = checker.settings.handshake_timeout
    if deadline is None:
        raise CaseSkipped("needs the server's deadline: --handshake-timeout S")
    checker.require_time(late_limit(deadline))
    probe = checker.connect()
    start = time.monotonic()
    probe.send(checker.settings.hello(probe.name, 0)[:5])  # a partial frame proves nothing (T5)
    try:
        frame = probe.recv(start + late_limit(deadline))
    except TimeoutError:
        raise CaseFailed(f"still open after {late_limit(deadline):.1f}s") from None
    elapsed = time.monotonic() - start
    seen = f"{describe(frame)} after {elapsed:.2f}s"
    if (
        frame is None
        or frame[0] != FrameType.CLOSE
        or parse_close(frame[1]) != Code.HANDSHAKE_TIMEOUT
    ):
        raise CaseFailed(seen)
    if not deadline - EARLY_TOLERANCE <= elapsed <= late_limit(deadline):
        raise CaseFailed(f"{seen}, expected about {deadline:g}s")
    return seen


# N3's look-alike: CYRILLIC SMALL LETTER O for the Latin o of the checker's names; the
# two share a UTS #39 skeleton, so a duplicate policy must take them for one name.
LATIN_O, CYRILLIC_O = "o", "\u043e"


def _second_with_same_name(
    checker: Checker, policy: str, look_alike: bool = False
) -> tuple[Probe, Probe]:
    if checker.settings.duplicates != policy:
        raise CaseSkipped(f"needs a server that {policy}s duplicates: --duplicates {policy}")
    first, _ = checker.open()
    second = checker.connect()
    name = first.name.replace(LATIN_O, CYRILLIC_O, 1) if look_alike else first.name
    second.send(encode_hello(name, checker.interval_ms))
    return first, second


@case("P1", MUST, "refuse: a HELLO with a name already connected gets ERROR NAME_TAKEN")
def _duplicate_refused(checker: Checker) -> str:
    first, second = _second_with_same_name(checker, "refuse")
    seen = second.expect_error(Code.NAME_TAKEN)
    first.send(PING_FRAME)
    first.expect_pong()
    return f"{seen}; the first connection still answers PING"


@case("P2", MUST, "replace: the older connection gets CLOSE TAKEN_OVER, the newer WELCOME")
def _duplicate_replaced(checker: Checker) -> str:
    first, second = _second_with_same_name(checker, "replace")
    second.expect_welcome()
    frame = first.recv_answer()
    if frame is None or frame[0] != FrameType.CLOSE or parse_close(frame[1]) != Code.TAKEN_OVER:
        raise CaseFailed(f"the older connection got {describe(frame)}, not CLOSE TAKEN_OVER")
    return f"newer: WELCOME; older: CLOSE TAKEN_OVER, then {first.expect_close()}"


@case(
    "N3", MUST, "refuse: a look-alike (U+043E CYRILLIC o for o) of a connected name gets NAME_TAKEN"
)
def _look_alike_refused(checker: Checker) -> str:
    first, second = _second_with_same_name(checker, "refuse", look_alike=True)
    seen = second.expect_error(Code.NAME_TAKEN)
    first.send(PING_FRAME)
    first.expect_pong()
    return f"{seen}; the first connection still answers PING"


@case(
    "N3", MUST, "replace: a look-alike (U+043E CYRILLIC o for o) of a connected name takes it over"
)
def _look_alike_replaces(checker: Checker) -> str:
    first, second = _second_with_same_name(checker, "replace", look_alike=True)
    second.expect_welcome()
    frame = first.recv_answer()
    if frame is None or frame[0] != FrameType.CLOSE or parse_close(frame[1]) != Code.TAKEN_OVER:
        raise CaseFailed(f"the older connection got {describe(frame)}, not CLOSE TAKEN_OVER")
    return f"look-alike: WELCOME; older: CLOSE TAKEN_OVER, then {first.expect_close()}"


@case("C4", MUST, "stopped during the check: no new connection is accepted after GOING_AWAY")
def _stops_accepting(checker: Checker) -> str:
    wait = checker.settings.shutdown_within
    if wait is None:
        raise CaseSkipped("needs the server stopped during the check: --shutdown-within S")
    probe = checker.connect()
    if checker.settings.token is None:
        probe.name = AWAITING_SHUTDOWN  # a name the log of the server shows: stop it now
    probe.hello(checker.interval_ms)
    start = time.monotonic()
    frame = probe.await_frame_within("CLOSE GOING_AWAY", HEARTBEATS_AND_DATA, wait)
    if frame is None or frame[0] != FrameType.CLOSE or parse_close(frame[1]) != Code.GOING_AWAY:
        raise CaseFailed(f"expected CLOSE GOING_AWAY, got {describe(frame)}")
    try:
        late = checker.connect()
    except CaseFailed as refused:
        return f"CLOSE GOING_AWAY after {time.monotonic() - start:.1f}s; then {refused}"
    late.send(checker.settings.hello(late.name, checker.interval_ms))
    answer = late.recv_answer()
    if answer is not None and answer[0] == FrameType.WELCOME:
        raise CaseFailed("a connection made after CLOSE GOING_AWAY was welcomed")
    return f"CLOSE GOING_AWAY; a later connection got {describe(answer)}"


# --- running and reporting -------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    target: str
    results: list[Result]
    role: str = "server"  # what was checked: "server" (hbloop check) or "client"

    def count(self, level: str, verdict: Verdict) -> int:
        return sum(1 for r in self.results if r.level == level and r.verdict is verdict)

    @property
    def conforms(self) -> bool:
        return self.count(MUST, Verdict.FAIL) == 0

    def summary(self) -> dict[str, object]:
        return {
            level.lower(): {v.value: self.count(level, v) for v in Verdict}
            for level in (MUST, SHOULD)
        } | {"conforms": self.conforms}

    def to_json(self) -> str:
        return json.dumps(
            {
                "target": self.target,
                "cases": [r.as_dict() for r in self.results],
                "summary": self.summary(),
            },
            indent=2,
        )

    def to_text(self) -> str:
        lines = [
            f"{r.number:>3}  {r.statement:<3} {r.level:<6} {r.verdict.value.upper():<4}  "
            f"{r.title} -- {r.saw}"
            for r in self.results
        ]
        counts = "; ".join(
            f"{level}: {self.count(level, Verdict.PASS)} passed, "
            f"{self.count(level, Verdict.FAIL)} failed, {self.count(level, Verdict.SKIP)} skipped"
            for level in (MUST, SHOULD)
        )
        verdict = "conforms" if self.conforms else "does NOT conform"
        lines.append(f"{self.target}: {counts}. The {self.role} {verdict} (every MUST must pass).")
        return "\n".join(lines)


def numbered(cases: list[Case], names: tuple[str, ...] = ()) -> list[tuple[int, Case]]:
    """The cases ``names`` picks, each with its number in ``cases`` (from 1: the report's
    id), in order: a name is a case's number or the ID of its statement (every case of
    that statement; ``t8`` is ``T8``); no names pick every case. ValueError for a name
    that matches no case."""
    every = list(enumerate(cases, start=1))
    if not names:
        return every
    wanted = {name.casefold() for name in names}
    picked = [(n, c) for n, c in every if {str(n), c.statement.casefold()} & wanted]
    matched = {name for n, c in picked for name in (str(n), c.statement.casefold())}
    for name in names:
        if name.casefold() not in matched:
            raise ValueError(
                f"{name!r} is neither a case number (1 to {len(cases)}) nor the statement of a case"
            )
    return picked


def run_case(checker: Checker, number: int, spec: Case) -> Result:
    try:
        verdict, saw = Verdict.PASS, spec.run(checker)
    except CaseSkipped as exc:
        verdict, saw = Verdict.SKIP, str(exc)
    except CaseFailed as exc:
        verdict, saw = Verdict.FAIL, str(exc)
    except OSError as exc:
        verdict, saw = Verdict.FAIL, f"socket error: {exc.strerror or exc}"
    finally:
        checker.close_all()
    return Result(number, spec.statement, spec.level, spec.title, verdict, saw)


def run_checks(settings: Settings) -> Report:
    """Run the cases (every one, or those ``settings.cases`` names); raises OSError
    if the server cannot be reached at all (an ssl.SSLError, one, if TLS fails)."""
    settings.connect().close()
    checker = Checker(settings)
    results = [run_case(checker, n, spec) for n, spec in numbered(CASES, settings.cases)]
    return Report(settings.target, results)

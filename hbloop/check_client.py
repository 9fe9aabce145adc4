"""``hbloop check-client``: does a client speak protocol.md? A scripted server.

Each case takes one connection from the client under test, answers its HELLO as the
case's script says (a good or a bad WELCOME, a PING, a CLOSE, an ERROR, a truncated
frame, silence) and judges what the client does, for one client-side MUST statement.
The client is either spawned afresh for each case (``Harness`` with a command, whose
``{host}`` and ``{port}`` are replaced by the checker's address, also given as
$HBLOOP_HOST and $HBLOOP_PORT) or started by the user and reconnecting by itself
(``--listen PORT``). Reports are those of ``hbloop check``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hbloop.check import (
    EARLY_TOLERANCE,
    LONG_MESSAGE,
    MUST,
    SHOULD,
    TRICKLE_GAP,
    UNKNOWN_CODE,
    UNKNOWN_PROPERTY,
    Case,
    CaseFailed,
    CaseSkipped,
    Link,
    Report,
    Result,
    Verdict,
    describe,
    late_limit,
    numbered,
)
from hbloop.core.policy import (
    CHECK_ANSWER_TIMEOUT,
    CHECK_CLIENT_HANDSHAKE_TIMEOUT,
    CHECK_CLIENT_QUIET_WINDOW,
    CHECK_CLIENT_START_TIMEOUT,
    CHECK_MAX_WAIT,
)
from hbloop.core.protocol import Frame, RemoteProtocolError, parse_close, parse_hello
from hbloop.core.wire import (
    ABSOLUTE_MAX_PAYLOAD,
    CODE_STRUCT,
    HEADER_SIZE,
    HEADER_STRUCT,
    MAX_HELLO_PAYLOAD,
    MUST_UNDERSTAND,
    PING_FRAME,
    VERSION_1,
    VERSION_2,
    WELCOME_STRUCT,
    Code,
    FrameType,
    Hello,
    Scheme,
    Welcome,
    encode_close,
    encode_error,
    encode_frame,
    encode_property,
    encode_welcome,
)

# The grant of the cases that heartbeat: above every client's floor on the interval
# (R5: hbloop's clients refuse less than 100 ms), short enough for a run of seconds;
# the timeout is five intervals, so that a checker late with its PINGs on a loaded
# machine does not make the client give up on it.
GRANT_INTERVAL_MS = 200
GRANT_TIMEOUT_MS = 1000


# The RECONNECT_WINDOW of the R7 case: an hour, so that a client drawing its delay in
# [0, W] reconnects within the quiet window with a chance of 1 in 1200 (3 s of 3600),
# while one that ignores the window reconnects after its R1 delay, within it.
R7_WINDOW_MS = 3_600_000

# The MAX_PAYLOAD a version 2 WELCOME of the checker's states (R6): F2's floor.
CHECK_MAX_PAYLOAD = 1024


# A CLOSE header promising 2 bytes, sent without them: a truncated frame (C5).
TRUNCATED_CLOSE = HEADER_STRUCT.pack(2, FrameType.CLOSE, 0) + b"\x00"


@dataclass(frozen=True)
class Settings:
    command: tuple[str, ...] = ()  # spawn this client for each case; empty: --listen
    host: str = "127.0.0.1"
    port: int = 0
    answer_timeout: float = CHECK_ANSWER_TIMEOUT
    start_timeout: float = CHECK_CLIENT_START_TIMEOUT
    quiet_window: float = CHECK_CLIENT_QUIET_WINDOW
    handshake_timeout: float = CHECK_CLIENT_HANDSHAKE_TIMEOUT
    max_wait: float = CHECK_MAX_WAIT
    cases: tuple[str, ...] = ()  # run these cases, by number or statement; all without


@dataclass
class Attempt:
    """One connection of the client: its link and its HELLO (H1: the first frame)."""

    link: Link
    hello: Hello
    frame: bytes  # the HELLO's bytes, header included


class Server:
    """The checker's listening socket and the connections the client makes to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listener = socket.create_server((settings.host, settings.port))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.links: list[Link] = []
        self.fresh = True  # no connection yet in this case: the start timeout applies

    def accept(self, timeout: float) -> Link | None:
        """The client's next connection; None if none comes within ``timeout``."""
        self.listener.settimeout(timeout)
        try:
            sock, _ = self.listener.accept()
        except TimeoutError:
            return None
        link = Link(sock, self.settings.answer_timeout)
        self.links.append(link)
        return link

    def attempt(self, timeout: float | None = None) -> Attempt:
        """The next connection and its HELLO; fails if either does not come."""
        first = self.settings.start_timeout if self.fresh else self.settings.answer_timeout
        wait = first if timeout is None else timeout
        self.fresh = False
        link = self.accept(wait)
        if link is None:
            raise CaseFailed(f"the client did not connect within {wait:g}s")
        frame = link.recv(time.monotonic() + self.settings.answer_timeout)
        if frame is None or frame[0] != FrameType.HELLO:
            raise CaseFailed(f"H1: expected HELLO first, got {describe(frame)}")
        if len(frame[1]) > MAX_HELLO_PAYLOAD:
            raise CaseFailed(f"F2: a HELLO of {len(frame[1])} bytes, over {MAX_HELLO_PAYLOAD}")
        try:
            hello = parse_hello(frame[1])
        except RemoteProtocolError as exc:
            raise CaseFailed(f"an invalid HELLO: {exc}") from None
        raw = HEADER_STRUCT.pack(len(frame[1]), frame[0], 0) + frame[1]
        return Attempt(link, hello, raw)

    def drop_backlog(self) -> None:
        """Close the connections waiting to be accepted. Called once a spawned client is
        dead: R1's jittered back-off may be all but 0, so a client killed as its case
        ended may have reconnected first, and that connection, closed by its death,
        must not be taken for the next client's."""
        self.listener.settimeout(0)
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.close()

    def close_links(self) -> None:
        for link in self.links:
            link.close()
        self.links.clear()

    def close(self) -> None:
        self.close_links()
        self.listener.close()


def grant(
    hello: Hello,
    scheme: Scheme = Scheme.SERVER,
    interval_ms: int = GRANT_INTERVAL_MS,
    timeout_ms: int = GRANT_TIMEOUT_MS,
    reconnect_window_ms: int | None = None,
) -> Welcome:
    """A valid WELCOME for ``hello``, in its version (version 2 with MAX_PAYLOAD, H10)."""
    v2 = hello.version == VERSION_2
    return Welcome(
        hello.version,
        scheme,
        interval_ms,
        timeout_ms,
        CHECK_MAX_PAYLOAD if v2 else None,
        reconnect_window_ms,
    )


def welcome_frame(payload: bytes) -> bytes:
    return encode_frame(FrameType.WELCOME, payload)


def raw_welcome(version: int, scheme: int, interval_ms: int, timeout_ms: int) -> bytes:
    """A WELCOME as bytes, whatever its fields: for the bad grants of H3."""
    return welcome_frame(WELCOME_STRUCT.pack(version, scheme, interval_ms, timeout_ms))


def opened(server: Server, scheme: Scheme = Scheme.SERVER) -> Attempt:
    """A connection of the client's, answered with a valid WELCOME."""
    attempt = server.attempt()
    attempt.link.send(encode_welcome(grant(attempt.hello, scheme)))
    return attempt


def expect_ending(link: Link, code: Code | None) -> str:
    """The client's ERROR ``code`` (None: nothing), then nothing more and its close
    (C1, C2, C3). Heartbeats before the ERROR pass."""
    deadline = time.monotonic() + link.answer_timeout + late_limit(0)
    seen: list[str] = []
    frame: Frame | None
    while True:
        try:
            frame = link.recv(deadline)
        except TimeoutError:
            raise CaseFailed(f"still open after {link.answer_timeout:g}s{_saw(seen)}") from None
        if code is not None and not seen and frame is not None and frame[0] in HEARTBEATS:
            if frame[0] == FrameType.PING:
                link.answer_ping()
            continue
        if frame is None:
            break
        seen.append(describe(frame))
        if code is None or len(seen) > 1:
            raise CaseFailed(f"expected {_want(code)}, got {', '.join(seen)}")
        if frame[0] != FrameType.ERROR or CODE_STRUCT.unpack_from(frame[1])[0] != code:
            raise CaseFailed(f"expected {_want(code)}, got {seen[0]}")
    if code is not None and not seen:
        raise CaseFailed(f"expected ERROR {code.name}, the connection closed")
    return f"{', then '.join(seen) or 'nothing sent'}, then closed"


HEARTBEATS = frozenset({FrameType.PING, FrameType.PONG})


def _want(code: Code | None) -> str:
    return "nothing but the close" if code is None else f"ERROR {code.name}, then the close"


def _saw(seen: list[str]) -> str:
    return f" (sent {', '.join(seen)})" if seen else ""


def no_reconnect(server: Server) -> str:
    """The client stays away for the quiet window (H8, P4)."""
    window = server.settings.quiet_window
    link = server.accept(window)
    if link is not None:
        raise CaseFailed(f"it reconnected within {window:g}s")
    return f"no reconnect within {window:g}s"


# --- the cases -------------------------------------------------------------------------

ClientRun = Callable[[Server], str]
CASES: list[Case] = []


def case(statement: str, title: str, level: str = MUST) -> Callable[[ClientRun], ClientRun]:
    def register(run: ClientRun) -> ClientRun:
        CASES.append(Case(statement, level, title, run))
        return run

    return register


@case("H1", "the client's first frame is HELLO")
def _hello_first(server: Server) -> str:
    attempt = server.attempt()
    hello = attempt.hello
    return f"HELLO v{hello.version} '{hello.name}', interval {hello.interval_ms} ms"


@case("F2", f"the client's HELLO fits the pre-handshake maximum, {MAX_HELLO_PAYLOAD} bytes")
def _hello_size(server: Server) -> str:
    return f"HELLO of {len(server.attempt().frame) - HEADER_SIZE} bytes"


@case("F7", "a version 2 HELLO carries no property twice (and parses)")
def _hello_properties(server: Server) -> str:
    attempt = server.attempt()
    if attempt.hello.version != VERSION_2:
        raise CaseSkipped("the client speaks version 1")
    return "version 2 HELLO, no property repeated"


@case("T3", "client scheme: after a valid WELCOME the client PINGs within an interval")
def _client_pings(server: Server) -> str:
    attempt = opened(server, Scheme.CLIENT)
    start = time.monotonic()
    limit = late_limit(GRANT_INTERVAL_MS / 1000)
    try:
        frame = attempt.link.await_frame("PING", frozenset({FrameType.DATA}))
    except CaseFailed:
        raise CaseFailed(f"no PING within {server.settings.answer_timeout:g}s") from None
    elapsed = time.monotonic() - start
    if frame is None or frame[0] != FrameType.PING:
        raise CaseFailed(f"expected PING, got {describe(frame)}")
    if elapsed > limit:
        raise CaseFailed(f"first PING after {elapsed * 1000:.0f} ms, interval {GRANT_INTERVAL_MS}")
    return f"first PING after {elapsed * 1000:.0f} ms (interval {GRANT_INTERVAL_MS} ms)"


@case("T4", "server scheme: the client answers the server's PING with PONG")
def _pong(server: Server) -> str:
    link = opened(server).link
    link.send(PING_FRAME)
    link.expect_pong()
    return "PONG"


@case("F4", "a WELCOME sent one byte per segment, then a PING: the client answers PONG")
def _trickled_welcome(server: Server) -> str:
    attempt = server.attempt()
    for byte in encode_welcome(grant(attempt.hello)) + PING_FRAME:
        attempt.link.send(bytes([byte]))
        time.sleep(TRICKLE_GAP)
    attempt.link.expect_pong()
    return "PONG"


@case("T7", "server scheme: PINGs from the server keep the client open, PONGs or not")
def _no_pongs_needed(server: Server) -> str:
    link = opened(server).link
    interval, timeout = GRANT_INTERVAL_MS / 1000, GRANT_TIMEOUT_MS / 1000
    duration = 2 * timeout
    end = time.monotonic() + duration
    while (now := time.monotonic()) < end:
        link.send(PING_FRAME)
        wake = min(now + interval, end)
        while True:
            try:
                frame = link.recv(wake)
            except TimeoutError:
                break
            if frame is None or frame[0] in (FrameType.CLOSE, FrameType.ERROR):
                raise CaseFailed(f"{describe(frame)} while the server PINGed on time")
    return f"open after {duration:g}s of server PINGs, none of its PINGs answered"


@case("T6", "a silent server is closed at the timeout T, with CLOSE TIMEOUT")
def _silent_server(server: Server) -> str:
    link = opened(server).link
    start = time.monotonic()
    timeout = GRANT_TIMEOUT_MS / 1000
    give_up = start + late_limit(timeout) + server.settings.answer_timeout
    frame = link.recv_ending(give_up, start, "WELCOME")
    elapsed = time.monotonic() - start
    seen = f"{describe(frame)} {elapsed * 1000:.0f} ms after WELCOME, T = {GRANT_TIMEOUT_MS} ms"
    if frame is None or frame[0] != FrameType.CLOSE or parse_close(frame[1]) != Code.TIMEOUT:
        raise CaseFailed(seen)
    if not timeout - EARLY_TOLERANCE <= elapsed <= late_limit(timeout):
        raise CaseFailed(seen)
    return seen


@dataclass(frozen=True)
class BadServer:
    """A server frame the client must refuse with ERROR ``code``, then close."""

    statement: str
    title: str
    frames: Callable[[Hello], bytes]  # what the server sends, for this HELLO
    code: Code


def _other_version(hello: Hello) -> int:
    return VERSION_1 if hello.version == VERSION_2 else VERSION_2


def _welcome_then(frame: bytes) -> Callable[[Hello], bytes]:
    return lambda hello: encode_welcome(grant(hello)) + frame


BAD_SERVERS = [
    BadServer(
        "H3",
        "a WELCOME whose timeout is under twice its interval",
        lambda h: raw_welcome(h.version, Scheme.SERVER, 1000, 1999),
        Code.MALFORMED,
    ),
    BadServer(
        "H3",
        "a WELCOME with scheme 2",
        lambda h: raw_welcome(h.version, 2, 1000, 3000),
        Code.MALFORMED,
    ),
    BadServer(
        "H3",
        "a WELCOME with an interval of 0",
        lambda h: raw_welcome(h.version, Scheme.SERVER, 0, 3000),
        Code.MALFORMED,
    ),
    BadServer(
        "H3",
        "a WELCOME of 9 bytes",
        lambda h: welcome_frame(bytes(9)),
        Code.MALFORMED,
    ),
    BadServer(
        "H3",
        "a WELCOME in another version than the HELLO's",
        lambda h: raw_welcome(_other_version(h), Scheme.SERVER, 1000, 3000),
        Code.UNSUPPORTED_VERSION,
    ),
    BadServer("H6", "PING before WELCOME", lambda h: PING_FRAME, Code.UNEXPECTED_FRAME),
    BadServer(
        "H6",
        "a second WELCOME",
        lambda h: encode_welcome(grant(h)) * 2,
        Code.UNEXPECTED_FRAME,
    ),
    BadServer(
        "F1",
        "a frame with non-zero flags",
        _welcome_then(HEADER_STRUCT.pack(0, FrameType.PING, 1)),
        Code.RESERVED_BITS,
    ),
    BadServer(
        "F1", "frame type 0x09", _welcome_then(HEADER_STRUCT.pack(0, 0x09, 0)), Code.UNKNOWN_TYPE
    ),
    BadServer(
        "F1",
        "a header announcing 2^32-1 bytes, sent alone",
        _welcome_then(HEADER_STRUCT.pack(ABSOLUTE_MAX_PAYLOAD, FrameType.DATA, 0)),
        Code.FRAME_TOO_LARGE,
    ),
    BadServer(
        "F3",
        "PING with a payload",
        _welcome_then(encode_frame(FrameType.PING, b"\x00")),
        Code.MALFORMED,
    ),
    BadServer(
        "C3",
        "CLOSE of 3 bytes",
        _welcome_then(encode_frame(FrameType.CLOSE, bytes(3))),
        Code.MALFORMED,
    ),
]


def _bad_server_case(bad: BadServer) -> ClientRun:
    def run(server: Server) -> str:
        attempt = server.attempt()
        attempt.link.send(bad.frames(attempt.hello))
        return expect_ending(attempt.link, bad.code)

    return run


for _bad in BAD_SERVERS:
    case(_bad.statement, f"{_bad.title}: ERROR {_bad.code.name}, then close")(
        _bad_server_case(_bad)
    )


@case("C1", "after its ERROR the client sends nothing more and closes")
def _nothing_after_error(server: Server) -> str:
    attempt = server.attempt()
    attempt.link.send(raw_welcome(attempt.hello.version, Scheme.CLIENT, 1000, 1000))
    return expect_ending(attempt.link, Code.MALFORMED)


def _v2_only(server: Server) -> Attempt:
    attempt = server.attempt()
    if attempt.hello.version != VERSION_2:
        raise CaseSkipped("the client speaks version 1")
    return attempt


@case("F6", "version 2: a WELCOME property unknown to the client, without the bit, is skipped")
def _unknown_property(server: Server) -> str:
    attempt = _v2_only(server)
    welcome = encode_welcome(grant(attempt.hello))
    extra = encode_property(UNKNOWN_PROPERTY, b"x")
    attempt.link.send(welcome_frame(welcome[HEADER_SIZE:] + extra) + PING_FRAME)
    attempt.link.expect_pong()
    return "PONG: the WELCOME was accepted"


@case("F6", "version 2: an unknown must-understand property: ERROR UNSUPPORTED_PROPERTY")
def _must_understand(server: Server) -> str:
    attempt = _v2_only(server)
    welcome = encode_welcome(grant(attempt.hello))
    extra = encode_property(MUST_UNDERSTAND | UNKNOWN_PROPERTY, b"")
    attempt.link.send(welcome_frame(welcome[HEADER_SIZE:] + extra))
    return expect_ending(attempt.link, Code.UNSUPPORTED_PROPERTY)


@case("C5", "end of stream inside a frame: ERROR MALFORMED")
def _truncated(server: Server) -> str:
    link = opened(server).link
    link.send(TRUNCATED_CLOSE)
    link.sock.shutdown(socket.SHUT_WR)
    return expect_ending(link, Code.MALFORMED)


@case("C2", "CLOSE NORMAL: the client closes without replying")
def _close(server: Server) -> str:
    link = opened(server).link
    link.send(encode_close(Code.NORMAL))
    return expect_ending(link, None)


@case("F5", "ERROR with an unknown code and 300 bytes of non-UTF-8: closed without reply")
def _long_error(server: Server) -> str:
    link = opened(server).link
    link.send(encode_frame(FrameType.ERROR, CODE_STRUCT.pack(UNKNOWN_CODE) + LONG_MESSAGE))
    return expect_ending(link, None)


@case("R6", f"version 2: no DATA over the WELCOME's MAX_PAYLOAD ({CHECK_MAX_PAYLOAD} bytes)")
def _max_payload(server: Server) -> str:
    attempt = _v2_only(server)
    attempt.link.send(encode_welcome(grant(attempt.hello, Scheme.CLIENT)))
    end = time.monotonic() + 2 * GRANT_INTERVAL_MS / 1000
    data = 0
    while True:
        try:
            frame = attempt.link.recv(end)
        except TimeoutError:
            break
        if frame is None:
            break
        if frame[0] == FrameType.PING:
            attempt.link.answer_ping()
        elif frame[0] == FrameType.DATA:
            data += 1
            if len(frame[1]) > CHECK_MAX_PAYLOAD:
                raise CaseFailed(f"DATA of {len(frame[1])} bytes")
    return f"{data} DATA frames, none over {CHECK_MAX_PAYLOAD} bytes"


@case("R4", "no HELLO token over plain TCP to an address that is not loopback")
def _plaintext_token(server: Server) -> str:
    attempt = server.attempt()
    if ipaddress.ip_address(server.address[0]).is_loopback:
        raise CaseSkipped("the checker listens on loopback, where a token may go in the clear")
    if attempt.hello.token is not None:
        raise CaseFailed(f"a token sent in the clear to {server.address[0]}")
    return "no token"


@case("H10", "version 2: ERROR UNSUPPORTED_VERSION: the client retries at once with version 1")
def _fall_back(server: Server) -> str:
    first = _v2_only(server)
    first.link.send(encode_error(Code.UNSUPPORTED_VERSION, "version 1 only"))
    start = time.monotonic()
    second = server.attempt()
    hello, old = second.hello, first.hello
    if (hello.version, hello.name, hello.interval_ms) != (VERSION_1, old.name, old.interval_ms):
        raise CaseFailed(f"the retry said HELLO v{hello.version} '{hello.name}'")
    second.link.send(encode_welcome(grant(hello)) + PING_FRAME)
    second.link.expect_pong()
    return f"HELLO v1 after {(time.monotonic() - start) * 1000:.0f} ms, then PONG"


@case("P4", "CLOSE TAKEN_OVER: the client does not reconnect by itself")
def _taken_over(server: Server) -> str:
    link = opened(server).link
    link.send(encode_close(Code.TAKEN_OVER))
    return f"{expect_ending(link, None)}; {no_reconnect(server)}"


@case("H8", "ERROR BAD_NAME, a final refusal: the client does not come back", SHOULD)
def _final_refusal(server: Server) -> str:
    link = server.attempt().link
    link.send(encode_error(Code.BAD_NAME, "refused by the checker"))
    return f"{expect_ending(link, None)}; {no_reconnect(server)}"


@case("P3", "ERROR NAME_TAKEN after WELCOME: closed without reply")
def _name_taken_late(server: Server) -> str:
    link = opened(server).link
    link.send(encode_error(Code.NAME_TAKEN, "held on another server"))
    return expect_ending(link, None)


@case("K1", f"CLOSE with code 0x{UNKNOWN_CODE:04x}, unknown: closed without reply")
def _unknown_close(server: Server) -> str:
    link = opened(server).link
    link.send(encode_close(UNKNOWN_CODE))
    return expect_ending(link, None)


@case("H9", "a server that never answers HELLO: the client gives up at its handshake deadline")
def _no_welcome(server: Server) -> str:
    deadline = server.settings.handshake_timeout
    limit = late_limit(deadline)
    if limit > server.settings.max_wait:
        raise CaseSkipped(f"would take {limit:.1f}s, over --max-wait")
    link = server.attempt().link
    start = time.monotonic()
    try:
        frame = link.recv(start + limit)
    except TimeoutError:
        raise CaseFailed(f"still waiting {limit:.1f}s after HELLO") from None
    elapsed = time.monotonic() - start
    if frame is not None:
        raise CaseFailed(f"expected a close without a frame, got {describe(frame)}")
    return f"closed {elapsed:.2f}s after HELLO (deadline {deadline:g}s)"


@case("R7", "CLOSE GOING_AWAY with a RECONNECT_WINDOW of an hour: no reconnect at once")
def _reconnect_window(server: Server) -> str:
    attempt = _v2_only(server)
    welcome = grant(attempt.hello, reconnect_window_ms=R7_WINDOW_MS)
    attempt.link.send(encode_welcome(welcome) + encode_close(Code.GOING_AWAY))
    return f"{expect_ending(attempt.link, None)}; {no_reconnect(server)}"


# --- running -----------------------------------------------------------------------------


class Harness:
    """Runs each case against a client: spawned for the case, or reconnecting alone."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = Server(settings)

    @property
    def target(self) -> str:
        if self.settings.command:
            return " ".join(self.settings.command)
        host, port = self.server.address
        return f"the client of {host}:{port}"

    def command(self) -> list[str]:
        """The client's command line, the checker's address in place of {host} {port}."""
        host, port = self.server.address
        return [
            arg.replace("{host}", host).replace("{port}", str(port))
            for arg in self.settings.command
        ]

    @contextmanager
    def client(self) -> Iterator[None]:
        """The client of one case: spawned with the checker's address if a command was
        given; the first connection may take the start timeout."""
        if not self.settings.command:
            yield
            return
        host, port = self.server.address
        env = os.environ | {"HBLOOP_HOST": host, "HBLOOP_PORT": str(port)}
        process = subprocess.Popen(
            self.command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            process.kill()
            process.wait()
            self.server.drop_backlog()

    def run_case(self, number: int, spec: Case) -> Result:
        verdict, saw = Verdict.PASS, ""
        with self.client():
            self.server.fresh = True
            try:
                saw = spec.run(self.server)
            except CaseSkipped as exc:
                verdict, saw = Verdict.SKIP, str(exc)
            except CaseFailed as exc:
                verdict, saw = Verdict.FAIL, str(exc)
            except OSError as exc:
                verdict, saw = Verdict.FAIL, f"socket error: {exc.strerror or exc}"
            finally:
                self.server.close_links()
        return Result(number, spec.statement, spec.level, spec.title, verdict, saw)

    def run(self) -> Report:
        try:
            picked = numbered(CASES, self.settings.cases)
            results = [self.run_case(n, spec) for n, spec in picked]
        finally:
            self.server.close()
        return Report(self.target, results, role="client")

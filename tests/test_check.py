"""`hbloop check` against the hbloop server (it conforms) and a broken one (it does not)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from fakeserver import FakeServer, ping_flood, welcome, welcome_answering

from hbloop.check import AWAITING_SHUTDOWN, CASES, numbered
from hbloop.core.protocol import Frame, FrameDecoder
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    PONG_FRAME,
    Code,
    FrameType,
    Scheme,
    encode_error,
)

from conftest import HBLOOP, ROOT, assert_no_case_failed

# A fast but safe configuration: the checker asks for 0.5 s and the minimum 0.1 s
# intervals, so a whole run takes seconds; 1 s of handshake deadline lets H5 run.
SERVER_ARGS = ("--interval", "0.5", "--timeout", "1.5", "--handshake-timeout", "1")
CHECK_TIMEOUT = 120.0

# The broken server's grant: its silence timer closes a silent checker after T.
BROKEN_INTERVAL_MS = 500
BROKEN_TIMEOUT_MS = 1500


# The titles of the scheme-specific heartbeat cases, by scheme.
SCHEME_CASES = {
    "client": "client PINGs every interval keep it open past the timeout",
    "server": "the server PINGs about every interval",
}


def run_check(*args: str, timeout: float = CHECK_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HBLOOP, "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("scheme", ["client", "server"])
def test_hbloop_serve_passes_every_must(serve, scheme: str) -> None:
    server = serve(*SERVER_ARGS, "--scheme", scheme)
    result = run_check(f"127.0.0.1:{server.port}", "--json", "--handshake-timeout", "1")
    report = json.loads(result.stdout)
    assert_no_case_failed(report, result.stderr)
    assert result.returncode == 0, result.stderr
    assert report["summary"]["conforms"] is True
    assert report["summary"]["must"]["pass"] >= 25
    by_title = {case["title"]: case for case in report["cases"]}
    granted = by_title[f"{scheme} scheme: " + SCHEME_CASES[scheme]]
    other = next(s for s in SCHEME_CASES if s != scheme)
    assert granted["result"] == "pass"
    assert by_title[f"{other} scheme: " + SCHEME_CASES[other]]["result"] == "skip"
    statements = {case["statement"] for case in report["cases"] if case["result"] == "pass"}
    assert {"H1", "H2", "H3", "H4", "H5", "H6", "F1", "F2", "F3", "F4", "N1", "N2"} <= statements
    assert {"T1", "T2", "T3", "T4", "T5", "T6", "C2", "A1", "A3"} <= statements
    server.wait_line(r"reason=timeout TIMEOUT")


def _answer_nothing(
    _server: FakeServer, sock: socket.socket, _decoder: FrameDecoder, _frames: list[Frame]
) -> None:
    """Broken: never answers PING, never sends ERROR; drops the connection on any input
    and closes a silent one at the timeout it granted."""
    sock.settimeout(BROKEN_TIMEOUT_MS / 1000)
    with contextlib.suppress(TimeoutError):
        sock.recv(65536)


@pytest.fixture
def broken_server() -> Iterator[FakeServer]:
    server = FakeServer(
        welcome(Scheme.CLIENT, BROKEN_INTERVAL_MS, BROKEN_TIMEOUT_MS), _answer_nothing
    )
    yield server
    server.close()


def test_a_server_that_never_answers_ping_fails(broken_server: FakeServer) -> None:
    host, port = broken_server.address
    result = run_check(f"{host}:{port}")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    pong_line = next(line for line in lines if "PING is answered with PONG" in line)
    assert " T4  MUST   FAIL " in pong_line
    assert "expected PONG, got the connection closed" in pong_line
    welcome_line = next(line for line in lines if "HELLO is answered with WELCOME" in line)
    assert " H3  MUST   PASS " in welcome_line
    assert lines[-1].endswith("The server does NOT conform (every MUST must pass).")
    assert all(line[:3].strip().isdigit() for line in lines[:-1])


def test_unreachable_target_is_a_one_line_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        result = run_check(f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"hbloop: error: cannot reach 127.0.0.1:{port}")


def test_cases_are_picked_by_number_or_statement() -> None:
    t8 = [n for n, case in enumerate(CASES, start=1) if case.statement == "T8"]
    assert t8
    picked = numbered(CASES, ("t8", "3", "T8"))  # any case; each case once, in order
    assert [n for n, _ in picked] == sorted({3, *t8})
    assert numbered(CASES) == list(enumerate(CASES, start=1))
    with pytest.raises(ValueError, match=rf"^'0' is neither a case number \(1 to {len(CASES)}\)"):
        numbered(CASES, ("T8", "0"))


def test_bad_target_is_a_usage_error() -> None:
    result = run_check("no-port-here")
    assert result.returncode == 2
    assert "is not HOST:PORT" in result.stderr


# The flooding server's grant, short so that its time-based cases take a second or so.
FLOOD_INTERVAL_MS = 200
FLOOD_TIMEOUT_MS = 600
# Against the flood, each case waiting for an answer fails after this (--answer-timeout).
FLOOD_ANSWER_TIMEOUT = 0.5
# Though the flood never ends, the whole run must: about a dozen cases wait for an
# answer and the two timeout cases wait T + slack + the answer timeout (about 12 s in
# all), with room for a loaded machine.
FLOOD_RUN_LIMIT = 60.0


@pytest.mark.slow
def test_a_ping_flood_cannot_stall_the_checker() -> None:
    fake = FakeServer(
        welcome(Scheme.SERVER, FLOOD_INTERVAL_MS, FLOOD_TIMEOUT_MS), ping_flood(read=True)
    )
    try:
        host, port = fake.address
        answer_timeout = f"{FLOOD_ANSWER_TIMEOUT:g}"
        result = run_check(
            f"{host}:{port}", "--json", "--answer-timeout", answer_timeout, timeout=FLOOD_RUN_LIMIT
        )
    finally:
        fake.close()
    assert result.returncode == 1, result.stderr
    by_title = {case["title"]: case for case in json.loads(result.stdout)["cases"]}

    def saw(title: str, verdict: str) -> str:
        assert by_title[title]["result"] == verdict, by_title[title]
        return str(by_title[title]["saw"])

    saw("HELLO is answered with WELCOME v1, scheme 0 or 1, 0 < 2 x interval <= timeout", "pass")
    assert re.fullmatch(
        rf"no PONG within {answer_timeout}s \(\d+ heartbeat or DATA frames came meanwhile\)",
        saw("PING is answered with PONG, whatever the scheme", "fail"),
    )
    closing = saw("after the client's CLOSE NORMAL the server stops sending and closes", "fail")
    assert closing.startswith(f"no answer within {answer_timeout}s (")
    silence = saw("a silent client is closed at the timeout, within [T, T + slack]", "fail")
    assert re.fullmatch(r"still open [\d.]+s after HELLO", silence)
    # It answered the server's PINGs as a client must (T4), one PONG per burst read
    # together, so the flood did not make it flood back.
    pongs = sum(1 for ftype, _ in fake.frames() if ftype == FrameType.PONG)
    assert 0 < pongs * 100 < fake.pings_flooded(), (pongs, fake.pings_flooded())


def _pong_every_ping(
    server: FakeServer, sock: socket.socket, decoder: FrameDecoder, frames: list[Frame]
) -> None:
    """Broken: answers every PING with PONG, however many come (it counts no strikes,
    T8), and closes when the client does."""
    while True:
        pings = sum(1 for ftype, _ in frames if ftype == FrameType.PING)
        sock.sendall(PONG_FRAME * pings)
        data = sock.recv(65536)
        if not data:
            return
        frames = decoder.feed(data)


def test_a_server_that_never_counts_strikes_fails() -> None:
    fake = FakeServer(
        welcome(Scheme.CLIENT, BROKEN_INTERVAL_MS, BROKEN_TIMEOUT_MS), _pong_every_ping
    )
    try:
        host, port = fake.address
        # Only the two cases the test is about: the others would each wait out an
        # answer timeout for an ERROR this server never sends.
        result = run_check(f"{host}:{port}", "--json", "--case", "T8", "--case", "T4")
    finally:
        fake.close()
    assert result.returncode == 1, result.stderr
    by_statement = {case["statement"]: case for case in json.loads(result.stdout)["cases"]}
    assert sorted(by_statement) == ["T4", "T8"]
    strikes = by_statement["T8"]
    assert strikes["result"] == "fail"
    assert strikes["saw"].startswith("no ERROR TOO_MANY_PINGS within")
    assert by_statement["T4"]["result"] == "pass"  # a PING is answered: only T8 fails


# A handshake cap small enough to reach with a few idle connections.
MAX_HANDSHAKES = "2"

# How many newcomers the lagging server below refuses after the holders have left.
LAG = 3


class LaggingCapServer:
    """A server with a handshake cap of MAX_HANDSHAKES that, once full, refuses LAG
    more newcomers, as a busy server does that accepts them before it reads the FINs
    of the connections holding its slots. Otherwise it welcomes a HELLO and closes
    when the client says CLOSE or leaves."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()
        self.silent = 0  # connections that have not said HELLO, nor left
        self.lag = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                full = self.silent >= int(MAX_HANDSHAKES)
                refused = full or self.lag > 0
                self.lag = LAG if full else max(0, self.lag - 1)
                self.silent += not refused
            if refused:
                with sock:
                    sock.sendall(encode_error(Code.SERVER_FULL, "full"))
            else:
                threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        with sock:
            frames: list[Frame] = []
            while not frames and (data := sock.recv(65536)):
                frames = decoder.feed(data)
            with self.lock:
                self.silent -= 1
            if frames:
                sock.sendall(welcome_answering(frames[0][1], welcome(Scheme.CLIENT, 500, 1500)))
            while frames and all(ftype != FrameType.CLOSE for ftype, _ in frames):
                frames = decoder.feed(sock.recv(65536)) or [(FrameType.CLOSE, b"")]

    def close(self) -> None:
        self.listener.close()


def test_the_server_full_case_waits_for_the_slots_to_come_back() -> None:
    """The case after SERVER_FULL's (K1) needs a slot of the handshake cap: the checker
    waits until a newcomer is welcomed again, and the server's lag costs no case."""
    full = next(n for n, case in enumerate(CASES, 1) if "handshake cap" in case.title)
    assert CASES[full].statement == "K1"  # the case after it
    server = LaggingCapServer()
    try:
        host, port = server.address
        picked = ("--case", str(full), "--case", str(full + 1))
        result = run_check(f"{host}:{port}", "--json", "--max-handshakes", MAX_HANDSHAKES, *picked)
    finally:
        server.close()
    report = json.loads(result.stdout)
    assert_no_case_failed(report, result.stderr)
    assert re.search(r"; welcomed again after \d+ ms$", report["cases"][0]["saw"]), report


@pytest.mark.timeout(2 * CHECK_TIMEOUT)
def test_server_full_and_stopping_are_checked(serve) -> None:
    server = serve(*SERVER_ARGS, "--max-handshakes", MAX_HANDSHAKES, "--drain-period", "0")
    args = ["--json", "--max-wait", "0.01", "--max-handshakes", MAX_HANDSHAKES]
    check = subprocess.Popen(
        [*HBLOOP, "check", f"127.0.0.1:{server.port}", *args, "--shutdown-within", "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait_line(rf"name={AWAITING_SHUTDOWN}\b", timeout=CHECK_TIMEOUT)
        assert server.terminate() == 0
        stdout, stderr = check.communicate(timeout=CHECK_TIMEOUT)
    finally:
        check.kill()
    report = json.loads(stdout)
    by_title = {case["title"]: case for case in report["cases"]}
    full = by_title["past the server's handshake cap: ERROR SERVER_FULL"]
    assert full["result"] == "pass", full
    assert re.search(r"; welcomed again after \d+ ms$", full["saw"]), full
    stopped = next(case for case in by_title.values() if case["statement"] == "C4")
    assert stopped["result"] == "pass", stopped
    assert_no_case_failed(report, stderr)
    assert check.returncode == 0, stderr

"""Shared test helpers: real `hbloop serve` subprocesses and a raw frame-level peer."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.redis_server import RedisNotInstalled, RedisProcess
from hbloop.client import Client
from hbloop.core.policy import ServerPolicy
from hbloop.core.protocol import Frame, FrameDecoder, parse_welcome
from hbloop.core.wire import (
    CODE_STRUCT,
    DEFAULT_MAX_PAYLOAD,
    PING_FRAME,
    Code,
    FrameType,
    encode_hello,
)
from hbloop.net.loop import Clock, EventLoop
from hbloop.server import Server

from pki import Pki, make_pki

ROOT = Path(__file__).resolve().parent.parent

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
# across exec: a suite started as `... &` would hand its CLI subprocesses a Ctrl-C they
# cannot hear, and the tests that press Ctrl-C would wait for nothing. A handled signal
# is reset to the default at exec, so handling it here gives every child Python's own
# KeyboardInterrupt, as a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The suite starts about 450 Python processes (`hbloop serve`, clients, checkers, the
# bench). Where PYTHONDONTWRITEBYTECODE is set, as on this machine kind, each compiled
# every module it imported from source: 0.18 s of the 0.3 s of CPU a `python -m hbloop`
# took to start, a third of the suite's CPU. They share one bytecode cache instead, out
# of the source tree as the setting asks (the xdist workers, started after this runs,
# and every subprocess inherit it; Python writes each file atomically).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault(
    "PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), f"hbloop-tests-pyc-{os.getuid()}")
)
HBLOOP = [sys.executable, "-m", "hbloop"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spread the ``slow`` tests over the first halves of the workers' shares.

    ``--dist worksteal`` first hands each worker an equal run of the collection, in
    order, and a worker that runs out steals the second half of the longest queue. A
    30 s test collected late could start last and hold the run open while the other
    workers idle. Here each worker's share starts with a slow test and has its others
    spaced out over its first half: none is left for the end, and they do not all run
    at once, which would load the machine as no test run beside them expects. Every
    worker computes the same order, as xdist requires.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = [item for item in items if item.get_closest_marker("slow")]
    if workers < 2 or not slow:
        return
    rest = [item for item in items if not item.get_closest_marker("slow")]
    ordered: list[pytest.Item] = []
    left = len(items)
    for worker in range(workers):
        share = left // (workers - worker)  # as the scheduler divides what is pending
        left -= share
        heads = slow[worker::workers]
        fill = rest[: max(0, share - len(heads))]
        del rest[: len(fill)]
        gap = len(fill) // (2 * len(heads)) if heads else 0
        for index, item in enumerate(heads):
            ordered += [item, *fill[index * gap : (index + 1) * gap]]
        ordered += fill[len(heads) * gap :]
    items[:] = ordered + rest


# Generous bounds: these tests check behaviour, not speed, on a shared 2-core machine.
START_TIMEOUT = 15.0
WAIT_TIMEOUT = 15.0


def wait_for(
    predicate: Callable[[], object], timeout: float = WAIT_TIMEOUT, step: float = 0.01
) -> bool:
    """Poll ``predicate`` until it is truthy; return whether it became so in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


# How often a wait for a line also checks whether the process has exited: its output
# ends (and wakes the wait) when it exits, unless a child of its own holds it open.
EXIT_CHECK = 0.1


class LoggedProcess:
    """A subprocess whose stdout and stderr lines are collected as they arrive. Waits
    for a line wake up as each line comes; once the process has exited, a line is
    known to be missing only after all its output has been read."""

    def __init__(
        self, argv: list[str], stdin: int | None = subprocess.DEVNULL, **kwargs: object
    ) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            text=True,
            bufsize=1,
            **kwargs,  # type: ignore[arg-type]
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()  # a line came, or an output ended
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            with self._changed:
                sink.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_all(self) -> bool:
        """True once both outputs have ended and every line is in."""
        return not any(pump.is_alive() for pump in self._pumps)

    def lines(self, which: str = "stderr") -> list[str]:
        with self._changed:
            return list(self.stderr if which == "stderr" else self.stdout)

    def find(self, pattern: str, which: str = "stderr") -> list[re.Match[str]]:
        regex = re.compile(pattern)
        return [m for line in self.lines(which) if (m := regex.search(line))]

    def wait_line(
        self, pattern: str, which: str = "stderr", timeout: float = WAIT_TIMEOUT, count: int = 1
    ) -> re.Match[str]:
        """The ``count``-th line matching ``pattern``, waiting for it at most ``timeout``
        seconds; AssertionError, with the output, if it does not come."""
        regex = re.compile(pattern)
        sink = self.stderr if which == "stderr" else self.stdout
        found: list[re.Match[str]] = []
        seen = 0  # lines of sink already searched
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found += [m for line in sink[seen:] if (m := regex.search(line))]
                seen = len(sink)
                if len(found) >= count:
                    return found[count - 1]
                if self.proc.poll() is not None and self._read_all():
                    raise AssertionError(
                        f"process exited ({self.proc.returncode}) before {pattern!r}:\n"
                        + "\n".join(self.stderr + self.stdout)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {pattern!r} in {which} within {timeout}s:\n" + "\n".join(sink)
                    )
                self._changed.wait(min(left, EXIT_CHECK))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = WAIT_TIMEOUT) -> int:
        """The exit code, once the process has exited and its output has been read (if
        it ends within ``timeout``: a child of its own may hold it open)."""
        deadline = time.monotonic() + timeout
        code = self.proc.wait(timeout)
        for pump in self._pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class ServerProcess(LoggedProcess):
    """`hbloop serve` on a free port; ``port`` is read from its 'listening' line."""

    def __init__(self, *args: str, prefix: list[str] | None = None, **popen: object) -> None:
        argv = [*(prefix or []), *HBLOOP, "serve", "--port", "0", "--log-level", "info", *args]
        super().__init__(argv, **popen)
        match = self.wait_line(r"listening on ([\d.]+):(\d+)", timeout=START_TIMEOUT)
        self.host = match.group(1)
        self.port = int(match.group(2))

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def terminate(self, timeout: float = WAIT_TIMEOUT) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``serve("--interval", "1", ...)`` starts a server, stopped after the test
    (keywords go to ``subprocess.Popen``: ``pass_fds``)."""
    started: list[ServerProcess] = []

    def start(*args: str, prefix: list[str] | None = None, **popen: object) -> ServerProcess:
        server = ServerProcess(*args, prefix=prefix, **popen)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def spawn() -> Iterator[Callable[..., LoggedProcess]]:
    """Factory for other CLI subprocesses (clients), killed after the test."""
    started: list[LoggedProcess] = []

    def start(*args: str, stdin: int | None = subprocess.DEVNULL) -> LoggedProcess:
        process = LoggedProcess([*HBLOOP, *args], stdin=stdin)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


class RawPeer:
    """A blocking, frame-level peer for driving a server by hand; with ``tls`` (a
    client SSLContext) its socket speaks TLS, the handshake done on connect; with
    ``source``, it connects from that (loopback) address."""

    def __init__(
        self,
        address: tuple[str, int],
        timeout: float = WAIT_TIMEOUT,
        rcvbuf: int | None = None,
        tls: ssl.SSLContext | None = None,
        source: str | None = None,
    ) -> None:
        if rcvbuf is None:
            bind = None if source is None else (source, 0)
            self.sock = socket.create_connection(address, timeout=timeout, source_address=bind)
        else:
            # A receive buffer must be set before connect to limit the advertised window.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=address[0])
        self.decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        self.frames: list[Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, name: str = "raw", interval_ms: int = 0, token: str | None = None) -> Frame:
        self.send(encode_hello(name, interval_ms, token=token))
        return self.recv()

    def recv(self, timeout: float = WAIT_TIMEOUT) -> Frame:
        """The next frame; raises EOFError on a clean close."""
        self.sock.settimeout(timeout)
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    def recv_until_eof(self, timeout: float = WAIT_TIMEOUT) -> list[Frame]:
        """Every frame up to the server's FIN (or RST)."""
        frames: list[Frame] = []
        try:
            while True:
                frames.append(self.recv(timeout))
        except (EOFError, ConnectionResetError):
            return frames

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def raw_peer() -> Iterator[Callable[[tuple[str, int]], RawPeer]]:
    peers: list[RawPeer] = []

    def connect(address: tuple[str, int]) -> RawPeer:
        peer = RawPeer(address)
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        peer.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_no_case_failed(report: dict[str, Any], detail: str = "") -> None:
    """Every case of an ``hbloop check`` or ``check-client`` JSON report passed or was
    skipped; on failure, each failed case's id, statement, title and what it saw, one a
    line, then ``detail`` (the checker's stderr, say)."""
    failed = [
        f"{case['id']} {case['statement']} {case['title']} -- {case['saw']}"
        for case in report["cases"]
        if case["result"] == "fail"
    ]
    assert not failed, "\n".join([*failed, detail])


# --- hostile-peer helpers -------------------------------------------------------------


def frame_code(frame: Frame) -> int:
    """The u16 code at the start of a CLOSE or ERROR payload."""
    return int(CODE_STRUCT.unpack_from(frame[1])[0])


def expect_last_word(peer: RawPeer, ftype: FrameType, code: Code, before: int = 0) -> list[Frame]:
    """Read to EOF and check that the server's last frame was ``ftype`` with ``code``,
    preceded by exactly ``before`` other frames; return those."""
    frames = peer.recv_until_eof()
    summary = [(f, len(p)) if f == FrameType.DATA else (f, p) for f, p in frames[-5:]]
    assert len(frames) == before + 1, (
        f"expected {before} frames then {ftype.name}, got {len(frames)} ending {summary}"
    )
    last = frames[-1]
    assert last[0] == ftype, f"last frame {last} is not {ftype.name}"
    assert frame_code(last) == code, f"{ftype.name} code {frame_code(last):#06x}, not {code.name}"
    return frames[:-1]


# Peer text that splits, forges or disguises a line printed raw: a newline starting a
# forged log record, a terminal escape, a bidi override, a zero-width space, NEL (C1)
# and LINE SEPARATOR. Under the 200 bytes an ERROR message may hold.
HOSTILE_TEXT = "bye\\\nINFO hbloop.server: forged\x1b[2J\u202eexe.txt\u200b\x85\u2028end"
# How it must be shown: each of those characters, and the backslash, escaped.
HOSTILE_TEXT_SHOWN = r"bye\\\x0aINFO hbloop.server: forged\x1b[2J\u202eexe.txt\u200b\x85\u2028end"

# protocol.md's unsafe characters: Unicode controls, format characters, line and
# paragraph separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def raw_unsafe(lines: list[str]) -> list[str]:
    """The lines holding an unsafe character, left raw."""
    return [
        line for line in lines if any(unicodedata.category(c) in UNSAFE_CATEGORIES for c in line)
    ]


# A peer that never reads sends at most this much DATA for the server to echo; a server
# must cut it off long before.
FLOOD_MAX_BYTES = 512 * 1024 * 1024


def flood_without_reading(peer: RawPeer, frame: bytes) -> int:
    """Send ``frame`` (DATA, which the server echoes) again and again and never read;
    return the bytes sent before the server cut the connection."""
    sent = 0
    try:
        while sent < FLOOD_MAX_BYTES:
            peer.send(frame)
            sent += len(frame)
    except (ConnectionResetError, BrokenPipeError):
        return sent
    raise AssertionError(f"the server took {sent} bytes of echo from a peer that never reads")


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so that the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# Good peers ask for this interval; servers under test grant it (their bounds allow it).
GOOD_INTERVAL_MS = 500

# What a non-blocking socket (plain or TLS) raises when it cannot send or receive yet.
NOT_NOW = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class GoodPeers:
    """Well-behaved peers that PING every granted interval and answer nothing but PONGs,
    in a background thread. Hostile-peer tests run them alongside the abuse to prove
    that nobody else's service is affected: the server answers them and never closes
    them (``assert_served``).

    Like independent clients (rule T3), they PING on their own schedule, never waiting
    for an answer, and read what has come back without blocking. They used to PING
    one peer at a time and wait for its PONG: each peer's PINGs were then an interval
    plus the round trips of all the others apart, which on a busy machine beside a
    flood passed the timeout, and the server rightly closed them as silent. How long
    an answer takes is the server's CPU share, not its fairness, so it is not judged
    here; a server that keeps up with their PINGs but starves their answers shows as
    PONG counts that stop growing."""

    def __init__(
        self,
        address: tuple[str, int],
        count: int = 3,
        prefix: str = "good",
        interval_ms: int = GOOD_INTERVAL_MS,
        tls: ssl.SSLContext | None = None,
        token: Callable[[str], str] | None = None,
    ) -> None:
        self.names = [f"{prefix}-{i}" for i in range(count)]
        self.peers = [RawPeer(address, tls=tls) for _ in range(count)]
        self.interval = self.timeout = 0.0
        for peer, name in zip(self.peers, self.names, strict=True):
            ftype, payload = peer.hello(name, interval_ms, token and token(name))
            assert ftype == FrameType.WELCOME, f"{name} was refused: {payload!r}"
            welcome = parse_welcome(payload)
            self.interval = welcome.interval_ms / 1000
            self.timeout = welcome.timeout_ms / 1000
            peer.sock.setblocking(False)
        self.pongs = [0] * count
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A PING per peer per interval, never closer than that (rule T8 strikes only
        # those closer than half an interval); a full send buffer (a stopped server)
        # skips one.
        while not self._stop.wait(self.interval):
            for i, peer in enumerate(self.peers):
                try:
                    peer.sock.send(PING_FRAME)
                except NOT_NOW:
                    pass
                except OSError as exc:
                    self._fail(f"{self.names[i]}: {exc!r}")
                    return
                try:
                    data = peer.sock.recv(65536)
                except NOT_NOW:
                    continue
                except OSError as exc:
                    self._fail(f"{self.names[i]}: {exc!r}")
                    return
                if not data:
                    self._fail(f"{self.names[i]}: the server closed the connection")
                    return
                for ftype, _ in peer.decoder.feed(data):
                    if ftype != FrameType.PONG:
                        self._fail(f"{self.names[i]}: got frame type {ftype} instead of PONG")
                        return
                    with self._lock:
                        self.pongs[i] += 1

    def _fail(self, message: str) -> None:
        with self._lock:
            self.failures.append(message)

    def pong_counts(self) -> list[int]:
        with self._lock:
            return list(self.pongs)

    def assert_served(self, server: LoggedProcess | None = None, rounds: int = 2) -> None:
        """Every good peer gets ``rounds`` more PONGs from now on, none has failed, and
        the server's log (if given) shows no disconnect of any of them."""
        before = self.pong_counts()

        def answered() -> bool:
            now = self.pong_counts()
            return all(n >= b + rounds for n, b in zip(now, before, strict=True))

        fresh = wait_for(lambda: self.failures or answered())
        assert not self.failures, f"good peers were hurt: {self.failures}"
        assert fresh, f"good peers stopped being answered: {before} -> {self.pong_counts()}"
        if server is not None:
            names = "|".join(self.names)
            assert not server.find(rf"disconnect .* name=({names}) "), "a good peer was dropped"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_TIMEOUT)
        for peer in self.peers:
            peer.close()


@pytest.fixture
def good_peers() -> Iterator[Callable[..., GoodPeers]]:
    """Factory: ``good_peers(server.address, **GoodPeers options)`` starts heartbeating
    peers, stopped after."""
    started: list[GoodPeers] = []

    def start(address: tuple[str, int], **options: Any) -> GoodPeers:
        peers = GoodPeers(address, **options)
        started.append(peers)
        return peers

    yield start
    for peers in started:
        peers.close()


# --- metrics helpers --------------------------------------------------------------------


def metrics_address(server: LoggedProcess) -> tuple[str, int]:
    """Where a server started with ``--metrics-port 0`` serves /metrics."""
    match = server.wait_line(r"metrics on http://([\d.]+):(\d+)/metrics")
    return match.group(1), int(match.group(2))


def http_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    """Status and body of a plain GET (no proxy, whatever the environment says)."""
    connection = http.client.HTTPConnection(*address, timeout=WAIT_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def scrape(address: tuple[str, int]) -> dict[str, float]:
    """The samples of /metrics, parsed by prometheus_client, keyed like the exposition
    text: ``name`` or ``name{label="value",...}`` with the labels sorted."""
    status, text = http_get(address, "/metrics")
    assert status == 200, text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_for_metrics(
    address: tuple[str, int], expected: dict[str, float], timeout: float = WAIT_TIMEOUT
) -> dict[str, float]:
    """Scrape until every sample in ``expected`` has its value; return the last scrape."""
    last: dict[str, float] = {}

    def matches() -> bool:
        last.update(scrape(address))
        return all(last.get(key) == value for key, value in expected.items())

    if not wait_for(matches, timeout, step=0.1):
        wrong = {key: last.get(key) for key, value in expected.items() if last.get(key) != value}
        raise AssertionError(f"metrics never matched {expected}; last values: {wrong}")
    return last


# Real seconds an in-process loop on a MockClock must find nothing to do before its
# clock jumps to the next deadline. Loopback TCP delivers within the sending call
# (none of 20,000 sends was late beside two busy loops); this margin covers delivery
# deferred to ksoftirqd on a machine busier still, and costs that much real time per
# jump.
MOCK_AUTOJUMP = 0.05


class InProcessServer:
    """An ``hbloop.Server`` on an ``EventLoop`` in this process, driven by ``run_until``,
    for tests that need the server's own objects (its sockets, its callbacks). With a
    ``clock`` (a ``MockClock``) its time is the test's to move."""

    def __init__(
        self, policy: ServerPolicy, clock: Clock = time.monotonic, **callbacks: Callable[..., None]
    ) -> None:
        self.loop = EventLoop(clock=clock)
        self.server = Server("127.0.0.1", 0, policy, loop=self.loop, **callbacks)  # type: ignore[arg-type]
        self.address = self.server.start()
        self.clients: list[Client] = []

    def run_until(self, condition: Callable[[], object], timeout: float = WAIT_TIMEOUT) -> None:
        assert self.loop.run_until(lambda: bool(condition()), timeout), "condition not met"

    def client(self, name: str, **kwargs: object) -> Client:
        """A non-reconnecting ``hbloop.Client`` on the same loop, started."""
        host, port = self.address
        client = Client(host, port, name, loop=self.loop, reconnect=False, **kwargs)  # type: ignore[arg-type]
        self.clients.append(client)
        client.start()
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close(linger=0)
        self.server.shutdown()
        self.loop.run_until(lambda: all(c.done for c in self.clients), WAIT_TIMEOUT)
        self.loop.close()


@pytest.fixture
def in_process_server() -> Iterator[Callable[..., InProcessServer]]:
    """Factory: ``in_process_server(ServerPolicy(...), [clock], on_message=...)``, closed
    after."""
    made: list[InProcessServer] = []

    def make(
        policy: ServerPolicy, clock: Clock = time.monotonic, **callbacks: Callable[..., None]
    ) -> InProcessServer:
        instance = InProcessServer(policy, clock, **callbacks)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.close()


# /proc/net/tcp's timer kinds (the "tr" column).
TCP_TIMER_KEEPALIVE = 2


@dataclass(frozen=True)
class TcpSocketState:
    """One IPv4 TCP socket as /proc/net/tcp shows it."""

    send_queue: int  # bytes sent but not yet acknowledged by the peer
    recv_queue: int  # bytes received but not yet read by the application
    timer: int  # which timer is armed (0: none, TCP_TIMER_KEEPALIVE, ...)
    timer_left: float  # seconds until it fires


def tcp_socket(local_port: int, remote_port: int) -> TcpSocketState:
    """The loopback socket local_port -> remote_port, seen from the kernel, so that a
    test can check another process's socket (its queues, its keepalive timer)."""
    ticks = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == local_port and (
            int(remote.split(":")[1], 16) == remote_port
        ):
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            timer, left = (int(t, 16) for t in fields[5].split(":"))
            return TcpSocketState(tx, rx, timer, left / ticks)
    raise AssertionError(f"no socket {local_port} -> {remote_port} in /proc/net/tcp")


# --- certificates -------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, server and client certificates and JWT keys, made once per test run."""
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- Redis for the presence tests ---------------------------------------------------------


def _redis_missing(exc: RedisNotInstalled) -> NoReturn:
    """Without redis-server a test is skipped, or fails under CI, which installs it."""
    if os.environ.get("CI") == "true":
        pytest.fail(str(exc))
    pytest.skip(str(exc))


def _redis(directory: Path) -> RedisProcess:
    """A redis-server; without the binary the test is skipped, or fails under CI."""
    try:
        return RedisProcess(directory)
    except RedisNotInstalled as exc:
        _redis_missing(exc)


@pytest.fixture
def redis_installed() -> None:
    """For a test whose subprocess starts its own redis-server (the bench's --redis)."""
    try:
        RedisProcess.find_binary()
    except RedisNotInstalled as exc:
        _redis_missing(exc)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One redis-server for the session; tests keep apart with their own key prefix."""
    server = _redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, for tests that stop and restart it."""
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="hbr-"))
    server = _redis(directory)
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so that tests share the session's Redis."""
    return f"t:{request.node.name}:"

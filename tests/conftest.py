"""Shared test helpers: real `hbloop serve` subprocesses and a raw frame-level peer."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hbloop.protocol import Frame, FrameDecoder
from hbloop.wire import DEFAULT_MAX_PAYLOAD, encode_hello

ROOT = Path(__file__).resolve().parent.parent
HBLOOP = [sys.executable, "-m", "hbloop"]

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


class LoggedProcess:
    """A subprocess whose stdout and stderr lines are collected as they arrive."""

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
        self._lock = threading.Lock()
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            with self._lock:
                sink.append(line.rstrip("\n"))

    def lines(self, which: str = "stderr") -> list[str]:
        with self._lock:
            return list(self.stderr if which == "stderr" else self.stdout)

    def find(self, pattern: str, which: str = "stderr") -> list[re.Match[str]]:
        regex = re.compile(pattern)
        return [m for line in self.lines(which) if (m := regex.search(line))]

    def wait_line(
        self, pattern: str, which: str = "stderr", timeout: float = WAIT_TIMEOUT, count: int = 1
    ) -> re.Match[str]:
        if not wait_for(
            lambda: len(self.find(pattern, which)) >= count or self.proc.poll() is not None, timeout
        ):
            raise AssertionError(
                f"no {pattern!r} in {which} within {timeout}s:\n" + "\n".join(self.lines(which))
            )
        found = self.find(pattern, which)
        if len(found) < count:
            raise AssertionError(
                f"process exited ({self.proc.returncode}) before {pattern!r}:\n"
                + "\n".join(self.lines("stderr") + self.lines("stdout"))
            )
        return found[count - 1]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = WAIT_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class ServerProcess(LoggedProcess):
    """`hbloop serve` on a free port; ``port`` is read from its 'listening' line."""

    def __init__(self, *args: str, prefix: list[str] | None = None) -> None:
        argv = [*(prefix or []), *HBLOOP, "serve", "--port", "0", "--log-level", "info", *args]
        super().__init__(argv)
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
    """Factory: ``serve("--interval", "1", ...)`` starts a server, stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, prefix: list[str] | None = None) -> ServerProcess:
        server = ServerProcess(*args, prefix=prefix)
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
    """A blocking, frame-level peer for driving a server by hand."""

    def __init__(self, address: tuple[str, int], timeout: float = WAIT_TIMEOUT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        self.frames: list[Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, name: str = "raw", interval_ms: int = 0) -> Frame:
        self.send(encode_hello(name, interval_ms))
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

"""The server under test: started by the bench (hbloop or a reference) or given.

A spawned server's port is chosen by the kernel (port 0) and read back: the
reference server prints it, and for ``hbloop serve`` (which logs at warning level
during a benchmark, so that per-connection log lines do not distort its CPU time)
psutil finds the listening socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from hbloop.policy import DEFAULT_MAX_INTERVAL, DEFAULT_MIN_INTERVAL

# hbloop logs every connect and disconnect at info level; at 19,000 connections that
# would be a measurable share of its CPU, so a benchmarked server logs warnings only.
SERVER_LOG_LEVEL = "warning"

# How long a spawned server may take to start listening, and to stop on SIGTERM
# (hbloop's graceful shutdown sends CLOSE to every peer first).
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
POLL_STEP = 0.05


class ServerStartError(RuntimeError):
    pass


@dataclass
class ServerUnderTest:
    """A server to load; ``process`` is None for one the bench did not start."""

    name: str
    address: tuple[str, int]
    process: subprocess.Popen[str] | None = None

    @property
    def psutil_process(self) -> psutil.Process | None:
        return None if self.process is None else psutil.Process(self.process.pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)


def spawn_hbloop(
    host: str,
    interval: float,
    timeout: float,
    extra: Sequence[str] = (),
    checkout: Path | None = None,
) -> ServerUnderTest:
    """``hbloop serve`` from this installation, or from the source tree ``checkout``
    (then named "baseline")."""
    argv = [sys.executable, "-m", "hbloop", "serve", "--host", host, "--port", "0"]
    argv += ["--interval", str(interval), "--timeout", str(timeout)]
    # hbloop refuses an interval outside its bounds, and the bench's interval is the one
    # under test: the bounds are widened to hold it, as the reference server does.
    argv += ["--min-interval", str(min(interval, DEFAULT_MIN_INTERVAL))]
    argv += ["--max-interval", str(max(interval, DEFAULT_MAX_INTERVAL))]
    argv += ["--log-level", SERVER_LOG_LEVEL, *extra]
    env = None
    if checkout is not None:
        env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, text=True, env=env, cwd=checkout)
    try:
        port = _listening_port(process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return ServerUnderTest("hbloop" if checkout is None else "baseline", (host, port), process)


def spawn_reference(loop: str, host: str, interval: float, timeout: float) -> ServerUnderTest:
    argv = [sys.executable, "-m", "bench.reference_server", "--loop", loop, "--host", host]
    argv += ["--interval", str(interval), "--timeout", str(timeout)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # the server's first line, or "" if it died
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise ServerStartError(
            f"reference server ({loop}) did not start: exit {process.returncode}"
        )
    port = int(line.rsplit(":", 1)[1])
    return ServerUnderTest(loop, (host, port), process)


def _listening_port(process: subprocess.Popen[str]) -> int:
    proc = psutil.Process(process.pid)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"hbloop serve exited with {process.returncode}")
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                return int(conn.laddr.port)
        time.sleep(POLL_STEP)
    raise ServerStartError(f"hbloop serve did not listen within {START_TIMEOUT:g}s")

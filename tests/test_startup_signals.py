"""A server may be signalled the moment it says it listens: its signal handlers are in
place before the "listening on" line is written. They used to be installed just after,
so that a SIGHUP sent on that line (tests/test_sighup.py does) could kill the server
with the default action, on a busy machine about one run in ten."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path

from conftest import HBLOOP, ROOT, WAIT_TIMEOUT, wait_for

# The smallest pipe Linux makes (F_SETPIPE_SZ rounds up to a page): filled before the
# server starts, it holds the server's first log line in its write() for the test to
# look at the process there.
PIPE_SIZE = 4096
# /proc/PID/syscall of a blocked process: the syscall's number (which differs from one
# architecture to another), then its arguments; a write to stderr has fd 2 first.
STDERR_FD_FIELD = "0x2"


def fill(fd: int) -> int:
    """Write to ``fd`` until the pipe is full; return how many bytes it holds."""
    os.set_blocking(fd, False)
    held = 0
    try:
        while True:
            held += os.write(fd, b"." * 512)
    except BlockingIOError:
        pass
    os.set_blocking(fd, True)
    return held


def blocked_writing_stderr(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return len(fields) > 1 and fields[1] == STDERR_FD_FIELD


def caught_signals(pid: int) -> set[int]:
    """The signals the process has handlers for (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            mask = int(line.split()[1], 16)
            return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    raise AssertionError("no SigCgt line")


def test_the_signal_handlers_are_in_place_when_the_server_says_it_listens() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    held = fill(write_end)
    proc = subprocess.Popen(
        [*HBLOOP, "serve", "--port", "0", "--log-level", "info"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        cwd=ROOT,
    )
    os.close(write_end)
    try:
        assert wait_for(lambda: blocked_writing_stderr(proc.pid)), "no line written"
        caught = caught_signals(proc.pid)  # while the first line waits in write()
        with os.fdopen(read_end, "rb") as log:
            assert len(log.read(held)) == held
            first = log.readline().decode()
            assert "listening on" in first, f"the first line is not the expected one: {first}"
            assert {signal.SIGHUP, signal.SIGTERM} <= caught, "signalled now, it would die"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_TIMEOUT)

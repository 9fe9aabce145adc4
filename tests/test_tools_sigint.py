"""``hbloop watch`` and ``hbloop who`` end cleanly on Ctrl-C (SIGINT) in every state:
no traceback; watch exits 0 (Ctrl-C is how it ends), who 130 (interrupted before its
answer). Real subprocesses, real signals; Redis reachable, silent, or unreachable."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Iterator

import pytest

from bench.redis_server import RedisProcess

from conftest import LoggedProcess, wait_for

EXIT_INTERRUPTED = 130


@pytest.fixture
def silent_redis() -> Iterator[socket.socket]:
    """A listener on loopback that takes connections and never answers: a Redis that
    hangs. accept() on it returns once a tool has connected."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(15)
    yield listener
    listener.close()


def _url(listener: socket.socket) -> str:
    host, port = listener.getsockname()
    return f"redis://{host}:{port}/0"


def _interrupted_while_waiting(spawn, listener: socket.socket, *args: str) -> LoggedProcess:
    """Start ``hbloop ARGS`` against the silent Redis; SIGINT once it has sent its
    first command and waits for the answer."""
    tool = spawn(*args, "--redis", _url(listener))
    conn, _ = listener.accept()
    with conn:
        assert conn.recv(4096)  # its first command: now it waits for the answer
        tool.signal(signal.SIGINT)
        tool.wait()
    return tool


def _no_traceback(tool: LoggedProcess) -> None:
    assert not [line for line in tool.lines() if "Traceback" in line], tool.lines()


def test_who_interrupted_while_redis_hangs(spawn, silent_redis) -> None:
    tool = _interrupted_while_waiting(spawn, silent_redis, "who")
    assert tool.proc.returncode == EXIT_INTERRUPTED
    assert tool.lines() == []


def test_watch_interrupted_while_redis_hangs(spawn, silent_redis) -> None:
    tool = _interrupted_while_waiting(spawn, silent_redis, "watch")
    assert tool.proc.returncode == 0
    assert tool.lines() == []


def test_watch_interrupted_while_redis_is_unreachable(spawn) -> None:
    """Between attempts, in its back-off: the state of the issue's 27-line traceback."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        url = _url(closed)
    tool = spawn("watch", "--redis", url)
    tool.wait_line(r"^watch: .*; retrying in [\d.]+s from \$$", count=2)
    tool.signal(signal.SIGINT)
    assert tool.wait() == 0
    _no_traceback(tool)
    assert all(re.match(r"watch: .*retrying in", line) for line in tool.lines())


def test_watch_interrupted_while_following(spawn, redis_server: RedisProcess, prefix) -> None:
    tool = spawn("watch", "--redis", redis_server.url, "--redis-prefix", prefix)

    def blocked_reading() -> bool:
        clients = str(redis_server.command("CLIENT", "LIST"))
        return bool(re.search(r"name=hbloop-watch .*cmd=xread", clients))

    assert wait_for(blocked_reading)
    tool.signal(signal.SIGINT)
    assert tool.wait() == 0
    assert tool.lines() == []

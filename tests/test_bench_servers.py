"""bench.servers: waiting for a restarted server's port without psutil's per-process
parse of every socket on the machine."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from bench.servers import ServerStartError, wait_listening

WAIT = 30.0  # for a process to start on a loaded machine


def test_a_listening_port_is_found_and_a_dead_server_is_reported():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], text=True)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        wait_listening(sleeper, port, time.monotonic() + WAIT)
    finally:
        listener.close()
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(ServerStartError, match="exited"):
        wait_listening(sleeper, port, time.monotonic() + WAIT)


def test_a_port_nobody_listens_on_times_out():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], text=True)
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))  # bound, not listening: as the supervisor holds it
    try:
        with pytest.raises(ServerStartError, match="did not listen"):
            wait_listening(sleeper, bound.getsockname()[1], time.monotonic() + 0.3)
    finally:
        bound.close()
        sleeper.kill()
        sleeper.wait()

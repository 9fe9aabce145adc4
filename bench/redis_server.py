"""A throw-away redis-server on a Unix socket, for the bench and the tests.

No persistence unless asked: ``shutdown(save=True)`` writes a snapshot in its directory
that the next ``start()`` loads, which is how a test stops Redis and brings it back
with its data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hbloop.presence.redis_link import BlockingRedis, RedisAddress, RedisUnavailable, parse_url

# Debian's redis-server starts in about 13 ms; a loaded machine may take far longer.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
POLL_STEP = 0.01

# How long one command of the helpers below may wait for an answer.
COMMAND_TIMEOUT = 15.0


class RedisNotInstalled(RuntimeError):
    pass


class RedisProcess:
    """redis-server listening on ``directory/redis.sock`` (no TCP port)."""

    def __init__(self, directory: Path, nice: int = 0) -> None:
        self.binary = self.find_binary()
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.nice = nice
        #: Whether the process runs at ``nice`` (lowering it takes root: CAP_SYS_NICE).
        self.niced = nice == 0
        self.start()

    @staticmethod
    def find_binary() -> str:
        """redis-server's path, or RedisNotInstalled saying how to install it."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled("redis-server is not installed (apt-get install redis-server)")
        return binary

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def address(self) -> RedisAddress:
        return parse_url(self.url)

    def start(self) -> None:
        argv = [self.binary, "--port", "0", "--unixsocket", str(self.socket_path)]
        argv += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.directory), "--loglevel", "warning"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        if self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, self.process.pid, self.nice)
                self.niced = True
            except PermissionError:
                self.niced = False
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server did not start on {self.socket_path}")
            time.sleep(POLL_STEP)

    def _answers(self) -> bool:
        try:
            connection = BlockingRedis(self.address, 1.0, "probe")
        except RedisUnavailable:
            return False
        connection.close()
        return True

    def client(self) -> BlockingRedis:
        return BlockingRedis(self.address, COMMAND_TIMEOUT, "helper")

    def command(self, *args: object) -> Any:  # a RESP reply: its shape is the command's
        connection = self.client()
        try:
            return connection.execute(args)[0]
        finally:
            connection.close()

    def shutdown(self, save: bool = False) -> None:
        """Stop Redis (writing its data first if asked) and wait until it has exited."""
        assert self.process is not None
        if save:
            with contextlib.suppress(RedisUnavailable):
                self.command("SHUTDOWN", "SAVE")
            self.process.wait(STOP_TIMEOUT)
            self.process = None
        else:
            self.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
            self.process = None

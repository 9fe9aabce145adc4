"""What a server says as it starts, through real `hbloop serve` processes: a
--max-connections the open-files limit cannot hold is warned about, a metrics port in
use is the error before any "listening" line, and each worker names itself on its
lines while the supervisor's have no worker."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from hbloop.ops.logs import JsonFormatter, TextFormatter

from conftest import HBLOOP, LoggedProcess

# Far above any open-files limit this machine gives a test process (20,000 here).
TOO_MANY_CONNECTIONS = "100000000"


def test_max_connections_above_the_open_files_room_is_warned_before_listening(serve):
    server = serve("--max-connections", TOO_MANY_CONNECTIONS)
    lines = server.lines()
    [warned] = [i for i, line in enumerate(lines) if "--max-connections 100000000 is above" in line]
    [listening] = [i for i, line in enumerate(lines) if "listening on" in line]
    assert warned < listening
    assert "open-files limit" in lines[warned] and "WARNING hbloop.cli" in lines[warned]


def test_max_connections_within_the_room_says_nothing(serve):
    server = serve("--max-connections", "10")
    assert not server.find("is above the"), server.lines()


# A lone server serves /metrics itself; with --workers the supervisor does, before any
# worker starts.
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["alone", "workers"])
def test_a_metrics_port_in_use_is_the_error_and_no_listening_line(workers: list[str]):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    server = LoggedProcess([*HBLOOP, "serve", "--port", "0", "--metrics-port", str(port), *workers])
    try:
        assert server.wait() == 1
        assert server.lines() == [
            f"hbloop: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
        ]
    finally:
        server.stop()
        taken.close()


def test_each_worker_names_itself_and_the_supervisor_does_not(serve):
    server = serve("--workers", "2")
    for index in (1, 2):
        server.wait_line(rf"INFO worker={index} hbloop\.server: worker {index} serving")
    [supervisor] = server.find(r"listening on \S+ workers=2")
    assert "worker=" not in supervisor.string, supervisor.string


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("hbloop.server", logging.INFO, __file__, 1, message, None, None)


def test_the_formats_carry_the_worker_only_for_a_worker():
    assert (
        TextFormatter(3).format(record("connect")).endswith("INFO worker=3 hbloop.server: connect")
    )
    assert TextFormatter().format(record("connect")).endswith("INFO hbloop.server: connect")
    assert json.loads(JsonFormatter(3).format(record("connect")))["worker"] == 3
    assert "worker" not in json.loads(JsonFormatter().format(record("connect")))

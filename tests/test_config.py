"""``--config FILE``: TOML keys mirror the long options, the command line wins, and
every bad file is a one-line error with exit code 2 naming the key."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from conftest import HBLOOP, ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HBLOOP, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hbloop.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("spelling", ["max-connections", "max_connections"])
def test_file_options_apply_and_the_command_line_wins(serve, tmp_path, spelling):
    config = write(
        tmp_path,
        f'interval = 0.5\ntimeout = 1.5\nscheme = "server"\n{spelling} = 7\n',
    )
    server = serve("--config", config, "--interval", "0.25")
    line = server.wait_line(r"listening on .*").string
    assert "scheme=server interval=0.25s timeout=1.5s max_connections=7 " in line


def test_client_file_with_a_flag(serve, spawn, tmp_path):
    server = serve("--interval", "0.5", "--timeout", "1.5")
    config = write(tmp_path, f'port = {server.port}\nname = "from-file"\nno-reconnect = true\n')
    client = spawn("client", "--config", config)
    client.wait_line("connected to .* as from-file")
    server.wait_line(r"connect .* name=from-file")
    server.signal(signal.SIGTERM)
    # no-reconnect = true: the server's GOING_AWAY ends the client, a run-time failure.
    assert client.wait() == 1
    client.wait_line("disconnected: peer_closed GOING_AWAY$")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus = 1", "unknown key 'bogus' (not an option of hbloop serve)"),
        ("[serve]\ninterval = 1", "unknown key 'serve'"),
        ('config = "other.toml"', "unknown key 'config'"),
        ('port = "7878"', "port must be an integer, not a string"),
        ("interval = true", "interval must be a number, not true or false"),
        ("interval = [1]", "interval must be a number, not an array"),
        ("port = 70000", "port: port 70000 is out of range 0-65535"),
        ("interval = -1", "interval: '-1' must be > 0"),
        ('scheme = "both"', "scheme: 'both' is not one of client, server"),
        ("max-connections = 5\nmax_connections = 6", "are the same option"),
        ("interval = ", "Invalid value"),
        # Consistency is checked as for the command line: refused, not widened.
        ("min-interval = 5\nmax-interval = 1", "the minimum interval 5s exceeds the maximum 1s"),
        ("interval = 10\ntimeout = 15", "timeout 15s must be at least 2x the interval 10s"),
    ],
)
def test_bad_files_are_one_line_and_exit_2(tmp_path, text, expected):
    config = write(tmp_path, text)
    result = run("serve", "--port", "0", "--config", config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hbloop: error: "), lines[0]
    assert expected in lines[0]


def test_a_missing_file_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nowhere.toml"
    result = run("client", "--config", str(missing))
    assert result.returncode == 2
    assert result.stderr == (
        f"hbloop: error: cannot read config file {missing}: No such file or directory\n"
    )


def test_a_client_file_refuses_server_options(tmp_path):
    config = write(tmp_path, "max-connections = 5")
    result = run("client", "--config", config)
    assert result.returncode == 2
    assert "unknown key 'max-connections' (not an option of hbloop client)" in result.stderr

"""The `hbloop` command line: help, errors and exit codes, the quick start, clean stops."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess

import pytest
from fakeserver import FakeServer, say, welcome

from hbloop import __version__
from hbloop.core.wire import Code, Scheme, encode_error

from conftest import HBLOOP, HOSTILE_TEXT, HOSTILE_TEXT_SHOWN, ROOT, raw_unsafe


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HBLOOP, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_console_script_is_installed():
    script = shutil.which("hbloop")
    assert script, "pip install puts `hbloop` on PATH"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "serve" in result.stdout and "client" in result.stdout


def test_version_comes_from_the_package_metadata():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout == f"hbloop {__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__), __version__


@pytest.mark.parametrize("command", ["serve", "client", "check"])
def test_help_shows_each_default_once(command):
    result = run(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # undo the wrapping
    assert "--port" in text or "HOST:PORT" in text
    assert "(default:" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert not re.search(r"\(default:[^)]*\)\s*\(default:", text), text


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The only line on stderr, which must be an hbloop error."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hbloop: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--interval", "-1"], "must be > 0"),
        (["serve", "--port", "70000"], "out of range"),
        (["serve", "--scheme", "both"], "invalid choice"),
        (["serve", "--tcp-keepalive", "60"], "IDLE,INTERVAL,COUNT"),
        (["client", "--interval", "soon"], "is not a number"),
        (["serve", "--bogus"], "unrecognized arguments"),
        ([], "required: command"),
        # Inconsistent settings are refused, never widened to fit.
        (["serve", "--interval", "10", "--timeout", "15"], "timeout 15s must be at least 2x"),
        (
            ["serve", "--min-interval", "5", "--max-interval", "1"],
            "minimum interval 5s exceeds the maximum",
        ),
        (["serve", "--interval", "0.05"], "interval 0.05s must lie within [0.1s, 300s]"),
        (["serve", "--interval", "400", "--timeout", "1200"], "must lie within"),
        (["serve", "--max-frame", "1000000"], "max pending output must hold"),
        (["client", "--backoff-base", "5", "--backoff-max", "1"], "--backoff-base 5s is above"),
        (["client", "--port", "1", "-n", "x" * 65], "name must be 1 to 64"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, expected):
    result = run(*args)
    assert result.returncode == 2
    assert expected in error_line(result)


def test_port_in_use_is_a_one_line_error_and_exit_1():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run("serve", "--port", str(port))
        supervised = run("serve", "--port", str(port), "--workers", "2")
    assert result.returncode == supervised.returncode == 1
    for line in (error_line(result), error_line(supervised)):
        assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line


def test_metrics_port_in_use_is_a_one_line_error_and_exit_1():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run("serve", "--port", "0", "--metrics-port", str(port), "--log-level", "error")
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in error_line(result)


def test_quick_start_two_named_clients(serve, spawn):
    server = serve("--interval", "0.5", "--timeout", "1.5")
    port = str(server.port)
    alice = spawn("client", "--port", port, "-n", "alice", stdin=subprocess.PIPE)
    bob = spawn(
        "client", "--port", port, "--name", "bob", "--interval", "0.25", stdin=subprocess.PIPE
    )
    alice.wait_line(
        r"connected to 127\.0\.0\.1:\d+ as alice: interval 0\.5s, timeout 1\.5s, client pings"
    )
    bob.wait_line(r"as bob: interval 0\.25s, timeout 0\.75s")
    server.wait_line(r"connect .* name=alice")
    server.wait_line(r"connect .* name=bob")
    assert alice.proc.stdin is not None
    alice.proc.stdin.write("hello from alice\nsecond line\n")
    alice.proc.stdin.flush()
    alice.wait_line(r"^second line$", which="stdout")
    assert alice.lines("stdout") == ["hello from alice", "second line"]
    assert bob.lines("stdout") == []


def test_client_keeps_heartbeating_after_stdin_ends(serve, spawn):
    server = serve("--interval", "0.2", "--timeout", "0.6")
    client = spawn("client", "--port", str(server.port), "-n", "presence", stdin=subprocess.PIPE)
    assert client.proc.stdin is not None
    client.proc.stdin.write("last words\n")
    client.proc.stdin.close()  # EOF
    client.wait_line("^last words$", which="stdout")
    # Three timeouts with nothing on stdin: only heartbeats keep it connected.
    assert client.proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        client.proc.wait(timeout=1.8)
    assert not server.find("name=presence.*reason")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_or_hangup_closes_the_client_cleanly(serve, spawn, signum):
    server = serve()
    client = spawn("client", "--port", str(server.port), "-n", "leaving")
    client.wait_line("connected to")
    client.signal(signum)
    assert client.wait() == 0
    server.wait_line(r"name=leaving .*reason=peer_closed NORMAL")


def test_client_reports_reconnects(serve, spawn):
    first = serve("--interval", "0.5", "--timeout", "1.5")
    client = spawn("client", "--port", str(first.port), "-n", "again", "--backoff-base", "0.2")
    client.wait_line("connected to")
    assert first.terminate() == 0
    client.wait_line(r"disconnected: peer_closed GOING_AWAY; reconnecting in [\d.]+s")
    serve("--interval", "0.5", "--timeout", "1.5", "--port", str(first.port))
    client.wait_line("connected to", count=2)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_server_cleanly(serve, raw_peer, signum):
    server = serve()
    peer = raw_peer(server.address)
    peer.hello("bystander")
    server.signal(signum)
    frames = peer.recv_until_eof()
    assert frames == [(6, b"\x00\x01")]  # CLOSE GOING_AWAY
    peer.close()  # our FIN lets the server finish before its grace period
    assert server.wait() == 0
    server.wait_line(r"name=bystander .*reason=shutdown GOING_AWAY")
    server.wait_line("stopped")


def test_a_server_error_message_is_printed_escaped(spawn):
    fake = FakeServer(
        welcome(Scheme.CLIENT, 10_000, 30_000), say(encode_error(Code.MALFORMED, HOSTILE_TEXT))
    )
    try:
        client = spawn("client", "--port", str(fake.address[1]), "-n", "x", "--no-reconnect")
        assert client.wait() == 1
    finally:
        fake.close()
    assert client.lines()[-1] == f"disconnected: peer_error MALFORMED {HOSTILE_TEXT_SHOWN}"
    assert raw_unsafe(client.lines()) == []

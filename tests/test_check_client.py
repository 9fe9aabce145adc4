"""`hbloop check-client` against hbloop's three clients (they conform), a broken client
(it does not), and a client started apart (--listen)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from hbloop.core.wire import encode_hello

from conftest import HBLOOP, ROOT, LoggedProcess, assert_no_case_failed

NODE = shutil.which("node")

# A whole run: about 35 cases, each spawning a client (an interpreter start on a busy
# machine), two quiet windows of 3 s and H9's handshake deadline.
RUN_LIMIT = 300.0

pytestmark = pytest.mark.timeout(RUN_LIMIT + 60)

# The aio client's handshake deadline (tests/aio_client.py), so that H9 runs.
AIO_HANDSHAKE_TIMEOUT = "2"

# H9 against a client whose deadline is hbloop's 10 s is skipped to keep the run short.
SHORT_MAX_WAIT = "5"

# The clients here retry within 0.05 s (R1 draws the first delay from [0, base]), so
# one that reconnects where it must not (P4, H8, R7) does so well inside a quiet window
# of 1 s: the margin is wider than that of the default 3 s window over the default
# 0.5 s base, and each of the three windows of a run costs a third.
QUICK_BACKOFF = ("--backoff-base", "0.05", "--backoff-max", "0.2")
QUIET_WINDOW = ("--quiet-window", "1")


def check_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HBLOOP, "check-client", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
    )


def assert_conforms(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    report = json.loads(result.stdout)
    assert_no_case_failed(report, result.stderr)
    assert result.returncode == 0
    assert report["summary"]["conforms"] is True
    return {case["title"]: case for case in report["cases"]}


@pytest.mark.slow
def test_hbloop_client_passes() -> None:
    result = check_client(
        *("--max-wait", SHORT_MAX_WAIT, *QUIET_WINDOW, "--"),
        *(*HBLOOP, "client", "--host", "{host}", "--port", "{port}", *QUICK_BACKOFF),
    )
    cases = assert_conforms(result)
    passed = {case["statement"] for case in cases.values() if case["result"] == "pass"}
    assert {"H1", "H3", "H6", "H10", "T3", "T4", "T6", "T7", "C1", "C2", "C5", "P4"} <= passed


@pytest.mark.slow
def test_aio_client_passes_with_its_handshake_deadline() -> None:
    result = check_client(
        *("--handshake-timeout", AIO_HANDSHAKE_TIMEOUT, *QUIET_WINDOW, "--"),
        *(sys.executable, str(ROOT / "tests" / "aio_client.py")),
    )
    cases = assert_conforms(result)
    deadline = next(case for case in cases.values() if case["statement"] == "H9")
    assert deadline["result"] == "pass", deadline


@pytest.mark.slow
@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_client_passes() -> None:
    assert NODE is not None
    cli = str(ROOT / "clients" / "js" / "cli.js")
    result = check_client(
        *("--max-wait", SHORT_MAX_WAIT, *QUIET_WINDOW, "--"),
        *(NODE, cli, "--host", "{host}", "--port", "{port}", *QUICK_BACKOFF),
    )
    assert_conforms(result)


# A client that says HELLO and then nothing at all: no PONG, no ERROR, no CLOSE.
MUTE_CLIENT = """
import os, socket, sys, time
sock = socket.create_connection((os.environ["HBLOOP_HOST"], int(os.environ["HBLOOP_PORT"])))
sock.sendall(bytes.fromhex(sys.argv[1]))
time.sleep(3600)
"""


def test_a_client_that_never_answers_fails() -> None:
    hello = encode_hello("mute", 0).hex()
    # The two cases the test is about: the others would each spawn a mute client and
    # wait out an answer timeout.
    cases = ("--case", "H1", "--case", "T4", "--answer-timeout", "1")
    result = check_client(*cases, "--", sys.executable, "-c", MUTE_CLIENT, hello)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    verdicts = {case["title"]: case for case in report["cases"]}
    assert sorted(case["statement"] for case in report["cases"]) == ["H1", "T4"]
    pong = verdicts["server scheme: the client answers the server's PING with PONG"]
    assert pong["statement"] == "T4"
    assert pong["result"] == "fail"
    assert pong["saw"].startswith("no PONG within")
    assert verdicts["the client's first frame is HELLO"]["result"] == "pass"
    assert report["summary"]["conforms"] is False


# A client that makes a second connection, says nothing on it, and only then says HELLO
# on its first: killed as its case ends, it leaves the second in the checker's backlog,
# as a client does that reconnects (R1's back-off may be all but 0) just before it is
# killed.
TWO_CONNECTIONS_CLIENT = """
import os, socket, sys, time
address = (os.environ["HBLOOP_HOST"], int(os.environ["HBLOOP_PORT"]))
first = socket.create_connection(address)
second = socket.create_connection(address)
first.sendall(bytes.fromhex(sys.argv[1]))
time.sleep(3600)
"""


def test_a_killed_clients_last_connection_is_not_the_next_cases() -> None:
    hello = encode_hello("twice", 0).hex()
    command = ("--", sys.executable, "-c", TWO_CONNECTIONS_CLIENT, hello)
    cases = assert_conforms(check_client("--case", "H1", "--case", "F2", *command))
    assert [case["statement"] for case in cases.values()] == ["H1", "F2"]


def test_neither_command_nor_listen_is_a_usage_error() -> None:
    result = subprocess.run(
        [*HBLOOP, "check-client"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "give either a client command (after '--') or --listen PORT" in result.stderr


# The client started apart is restarted by a shell loop when it ends for good, after
# longer than the checker's 1 s watch (QUIET_WINDOW) for a final ending's reconnection
# (so the restart is not taken for one), and retries quickly otherwise: each case waits
# for its next connection, and the default back-off (up to 30 s) would make the run
# last minutes.
RESTART_LOOP = 'while :; do "$@" --port "$PORT"; sleep 2; done'


@pytest.mark.slow
def test_listen_waits_for_a_client_started_apart() -> None:
    checker = LoggedProcess(
        [*HBLOOP, "check-client", "--listen", "0", "--max-wait", "1", *QUIET_WINDOW, "--json"]
    )
    client = None
    try:
        port = checker.wait_line(r"waiting for the client on 127\.0\.0\.1:(\d+)").group(1)
        client = subprocess.Popen(
            ["sh", "-c", RESTART_LOOP, "loop", *HBLOOP, "client", *QUICK_BACKOFF],
            env={**os.environ, "PORT": port},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert checker.wait(RUN_LIMIT) == 0, "\n".join(checker.lines())
    finally:
        if client is not None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        checker.stop()
    report = json.loads("\n".join(checker.lines("stdout")))
    assert report["summary"]["conforms"] is True
    assert report["summary"]["must"]["pass"] >= 25

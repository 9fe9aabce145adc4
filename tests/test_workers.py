"""`hbloop serve --workers N`: workers sharing a port, restarts, signals, orphans."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
from collections import Counter

import psutil
import pytest

from hbloop.cli.options import MAX_WORKERS
from hbloop.cli.parser import parse
from hbloop.cli.settings import ServeSettings
from hbloop.core.wire import Code, FrameType, encode_hello
from hbloop.ops.supervisor import STOP_MARGIN

from conftest import (
    HBLOOP,
    START_TIMEOUT,
    WAIT_TIMEOUT,
    RawPeer,
    ServerProcess,
    expect_last_word,
    metrics_address,
    wait_for,
    wait_for_metrics,
)

# Long enough that the peers below, which never PING, outlive every test.
SLOW = ("--interval", "5", "--timeout", "15")

# Connections per batch: with SO_REUSEPORT's hash, the chance that 40 of them all land
# on one of two workers is 2^-39.
BATCH = 40


def _worker_pids(server: ServerProcess) -> list[int]:
    line = server.wait_line(r"listening on \S+ workers=\d+ pids=([\d ]+)")
    return [int(pid) for pid in line.group(1).split()]


def _connect(address: tuple[str, int], count: int, prefix: str) -> list[RawPeer]:
    peers = [RawPeer(address) for _ in range(count)]
    for i, peer in enumerate(peers):
        assert peer.hello(f"{prefix}-{i}")[0] == FrameType.WELCOME
    return peers


def _per_worker(samples: dict[str, float], name: str) -> dict[str, float]:
    pattern = re.compile(rf'hbloop_worker_{name}\{{worker="(\d+)"\}}')
    return {m.group(1): n for key, n in samples.items() if (m := pattern.fullmatch(key))}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _close_all(peers: list[RawPeer]) -> None:
    for peer in peers:
        peer.close()


def test_workers_share_the_port_and_a_dead_one_is_restarted(serve):
    server = serve(*SLOW, "--workers", "2", "--metrics-port", "0")
    metrics = metrics_address(server)
    first, second = _worker_pids(server)
    peers = _connect(server.address, BATCH, "a")
    try:
        samples = wait_for_metrics(metrics, {"hbloop_connections": BATCH, "hbloop_workers": 2})
        before = _per_worker(samples, "connections")
        assert sorted(before) == ["1", "2"] and min(before.values()) > 0, before

        os.kill(first, signal.SIGKILL)
        server.wait_line(rf"worker 1 \(pid {first}\) exited with signal 9")
        # Exactly worker 1's peers see their connection end.
        socks = [peer.sock for peer in peers]
        assert wait_for(lambda: len(select.select(socks, [], [], 0)[0]) == before["1"]), (
            "worker 1's peers were not all disconnected, or others were"
        )
        server.wait_line(r"worker 1 \(pid \d+\) is back")

        peers += _connect(server.address, BATCH, "b")
        survivors = BATCH - before["1"]
        samples = wait_for_metrics(
            metrics,
            {
                "hbloop_connections": survivors + BATCH,
                "hbloop_accepted_total": 2 * BATCH,  # worker 1's first life still counts
                "hbloop_restarts_total": 1,
                "hbloop_workers": 2,
            },
        )
        after = _per_worker(samples, "connections")
        assert after["1"] > 0 and after["2"] > before["2"], after
        assert not _gone(second)
    finally:
        _close_all(peers)


def test_sigterm_stops_every_worker_gracefully(serve):
    server = serve(*SLOW, "--workers", "2", "--drain-period", "1")
    pids = _worker_pids(server)
    peers = _connect(server.address, 10, "t")
    try:
        server.terminate()  # SIGTERM to the supervisor only
        for peer in peers:
            expect_last_word(peer, FrameType.CLOSE, Code.GOING_AWAY)
        assert server.wait() == 0
    finally:
        _close_all(peers)
    assert all(_gone(pid) for pid in pids)
    assert len(server.find(r"worker \d \(pid \d+\) exited with code 0")) == 2


def _kill(pids: list[int]) -> None:
    """Clean up after a test that stopped workers: a stopped orphan never notices."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# How long a supervisor may take to stop when its workers are stuck: their grace, the
# supervisor's margin, and room for a loaded machine.
def _stop_bound(grace: float) -> float:
    return grace + STOP_MARGIN + WAIT_TIMEOUT


def test_sigterm_continues_a_stopped_worker(serve):
    grace = 1.0
    server = serve(*SLOW, "--workers", "2", "--shutdown-grace", f"{grace:g}")
    pids = _worker_pids(server)
    os.kill(pids[0], signal.SIGSTOP)
    try:
        server.terminate(timeout=_stop_bound(grace))
    finally:
        _kill(pids)
    assert server.proc.returncode == 0
    # SIGCONT let the stopped worker act on SIGTERM: it stopped by itself.
    assert len(server.find(r"worker \d \(pid \d+\) exited with code 0")) == 2


def test_workers_stuck_in_their_grace_are_killed(serve):
    # Long enough that the workers are stopped inside it: on a busy machine their
    # "shutting down" lines reached the test over a second late, after a 1 s grace
    # had let one worker exit.
    grace = 3.0
    # No drain period: the supervisor's kill is due the grace and its margin after.
    server = serve(*SLOW, "--workers", "2", "--shutdown-grace", f"{grace:g}", "--drain-period", "0")
    pids = _worker_pids(server)
    peers = _connect(server.address, BATCH, "held")  # they never close: the grace runs out
    try:
        server.signal(signal.SIGTERM)
        server.wait_line(r"shutting down: closing \d+ connections", count=2)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # stuck in the grace period, as by a debugger
        assert server.wait(_stop_bound(grace)) == 0
    finally:
        _kill(pids)
        _close_all(peers)
    for index, pid in enumerate(pids, start=1):
        server.wait_line(
            rf"worker {index} \(pid {pid}\) still running [\d.]+s after SIGTERM; killing it"
        )
        server.wait_line(rf"worker {index} \(pid {pid}\) exited with signal 9")
    assert all(_gone(pid) for pid in pids)


def test_a_stopped_worker_is_replaced(serve):
    server = serve(*SLOW, "--workers", "2")
    stopped, running = _worker_pids(server)
    os.kill(stopped, signal.SIGSTOP)
    try:
        # Meanwhile the kernel still gives the stopped worker its share of newcomers.
        waiting = [RawPeer(server.address) for _ in range(BATCH)]
        for peer in waiting:
            peer.send(encode_hello("early", 0))
        server.wait_line(
            rf"worker 1 \(pid {stopped}\) sent no report for [\d.]+s", timeout=WAIT_TIMEOUT
        )
        server.wait_line(r"worker 1 \(pid \d+\) is back")
        # None was left hanging: those queued on the stopped worker were reset when it
        # was killed (they reconnect), the others were served.
        outcomes = Counter(_outcome(peer) for peer in waiting)
        assert set(outcomes) <= {"WELCOME", "reset"} and outcomes["WELCOME"] > 0, outcomes
        # Every newcomer is served now, by the running worker or the new one.
        _close_all(_connect(server.address, BATCH, "late"))
    finally:
        _kill([stopped])
    assert not _gone(running)


def _outcome(peer: RawPeer) -> str:
    try:
        return FrameType(peer.recv()[0]).name
    except (ConnectionResetError, EOFError):
        return "reset"
    finally:
        peer.close()


# A plain server and a supervisor of two workers, as extra `hbloop serve` arguments.
PLAIN = ()
WORKERS = ("--workers", "2")


@pytest.mark.parametrize(
    ("first", "second"),
    [(WORKERS, WORKERS), (WORKERS, PLAIN), (PLAIN, WORKERS)],
    ids=["workers-then-workers", "workers-then-plain", "plain-then-workers"],
)
def test_a_second_server_on_a_port_in_use_fails(serve, first, second):
    server = serve(*SLOW, *first)
    result = subprocess.run(
        [*HBLOOP, "serve", "--port", str(server.port), *second],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in lines[0]


def test_workers_stop_when_the_supervisor_is_killed(serve):
    server = serve(*SLOW, "--workers", "2")
    pids = _worker_pids(server)
    server.signal(signal.SIGKILL)
    assert wait_for(lambda: all(_gone(pid) for pid in pids)), "orphaned workers kept running"
    assert len(server.find(r"the supervisor is gone; shutting down")) == 2


def workers(*argv: str) -> int:
    settings = parse(["serve", *argv])
    assert isinstance(settings, ServeSettings)
    return settings.workers


def test_workers_option(capsys):
    assert workers() == 1
    assert workers("--workers", "auto") == len(os.sched_getaffinity(0))
    assert workers("--workers", str(MAX_WORKERS)) == MAX_WORKERS
    for bad in ("0", str(MAX_WORKERS + 1)):
        with pytest.raises(SystemExit):
            workers("--workers", bad)
        assert f"must be at least 1 and at most {MAX_WORKERS}" in capsys.readouterr().err

"""The drain (protocol.md C4, C6, R7): on SIGTERM the server stops accepting, then
closes its peers spread over ``--drain-period``, answers /healthz 503 meanwhile, and a
second SIGTERM closes the rest at once; clients come back within the window; a
SIGHUP rolling restart closes each client at most once. Real `hbloop serve` and
`hbloop client` subprocesses, real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from hbloop.client import Client
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import Code, FrameType
from hbloop.net.loop import EventLoop

from conftest import (
    WAIT_TIMEOUT,
    RawPeer,
    ServerProcess,
    frame_code,
    http_get,
    metrics_address,
    scrape,
)

# Peers here never PING: timers long enough that only the drain can end them.
TIMERS = ("--interval", "5", "--timeout", "15")

# The drain spread over this many seconds, among this many peers.
PERIOD = 3.0
PEERS = 12
# Closes are due at i x PERIOD / PEERS after the drain began, which is after the
# signal: a timer never fires early, so each close arrives no sooner than that (less
# the millisecond the schedule rounds down to).
ROUNDING = 0.002
# How late the last close may be on a busy shared machine: the drain's own period,
# then this much.
LATE = 10.0
# A second SIGTERM, or a server without peers, ends this soon on a busy machine.
PROMPT = 3.0


def _closes(peers: list[RawPeer], deadline: float, want: int = 0) -> dict[int, float]:
    """When each peer (or the first ``want``) got its last word (CLOSE GOING_AWAY,
    checked), by index; read from all of them at once, so that no peer waits on
    another. The drain closes peers in no particular order."""
    by_fd = {peer.sock.fileno(): (i, peer) for i, peer in enumerate(peers)}
    closed: dict[int, float] = {}
    while len(closed) < (want or len(peers)) and time.monotonic() < deadline:
        ready, _, _ = select.select(list(by_fd), [], [], deadline - time.monotonic())
        for fd in ready:
            i, peer = by_fd[fd]
            ftype, payload = peer.recv()
            assert (ftype, frame_code((ftype, payload))) == (FrameType.CLOSE, Code.GOING_AWAY)
            closed[i] = time.monotonic()
            del by_fd[fd]
    return closed


def _refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=PROMPT).close()
    except ConnectionRefusedError:
        return True
    return False


def test_c4_c6_closes_are_spread_evenly_over_the_drain_period(serve) -> None:
    server = serve(*TIMERS, "--drain-period", f"{PERIOD:g}")
    peers = [RawPeer(server.address) for _ in range(PEERS)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"d{i}")[0] == FrameType.WELCOME
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        closed = _closes(peers, signalled + PERIOD + LATE)
        # C4: it stopped accepting before the first close, and does not accept again.
        assert _refused(server.address)
    finally:
        for peer in peers:
            peer.close()
    assert len(closed) == PEERS, f"{PEERS - len(closed)} peers never got their CLOSE"
    times = sorted(t - signalled for t in closed.values())
    print(f"first close {times[0]:.3f}s, last {times[-1]:.3f}s after SIGTERM")
    for i, at in enumerate(times):
        assert at >= i * PERIOD / PEERS - ROUNDING, (i, times)
    assert times[-1] <= PERIOD + LATE
    assert times[-1] - times[0] >= PERIOD / 2, f"not spread: {times}"
    started = server.wait_line(r"shutting down: closing (\d+) connections over ([\d.]+)s")
    assert started.groups() == (str(PEERS), f"{PERIOD:g}")
    assert server.wait(PROMPT + LATE) == 0
    assert len(server.find(r"reason=shutdown GOING_AWAY")) == PEERS


def test_c6_healthz_answers_503_and_the_gauge_says_draining_while_peers_remain(serve) -> None:
    long_period = 60.0  # the second peer's close is due 30 s in: the test ends first
    server = serve(*TIMERS, "--drain-period", f"{long_period:g}", "--metrics-port", "0")
    metrics = metrics_address(server)
    peers = [RawPeer(server.address) for _ in range(2)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"h{i}")[0] == FrameType.WELCOME
        assert http_get(metrics, "/healthz")[0] == 200
        assert scrape(metrics)["hbloop_draining"] == 0
        server.signal(signal.SIGTERM)
        assert len(_closes(peers, time.monotonic() + WAIT_TIMEOUT, want=1)) == 1  # at once
        status, body = http_get(metrics, "/healthz")
        assert status == 503 and '"stopping"' in body
        assert scrape(metrics)["hbloop_draining"] == 1
        assert scrape(metrics)["hbloop_connections"] == 1  # the second, still served
        server.signal(signal.SIGTERM)
        assert server.wait(PROMPT) == 0
    finally:
        for peer in peers:
            peer.close()


def test_c6_a_second_sigterm_during_a_drain_closes_everything_at_once(serve) -> None:
    server = serve(*TIMERS, "--drain-period", "60")
    peers = [RawPeer(server.address) for _ in range(4)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"s{i}")[0] == FrameType.WELCOME
        server.signal(signal.SIGTERM)
        [first] = _closes(peers, time.monotonic() + WAIT_TIMEOUT, want=1)
        server.wait_line("shutting down: closing 4 connections over 60s")
        server.signal(signal.SIGTERM)
        second = time.monotonic()
        assert server.wait(PROMPT) == 0
        assert time.monotonic() - second < PROMPT
        # The rest were due 15, 30 and 45 s in; each got its CLOSE now, or at worst a
        # reset, and none is left open.
        for peer in peers[:first] + peers[first + 1 :]:
            frames = peer.recv_until_eof(PROMPT)
            assert all(f == (FrameType.CLOSE, b"\x00\x01") for f in frames), frames
    finally:
        for peer in peers:
            peer.close()
    server.wait_line(r"second stop request: closing 3 connections now")


# --- clients come back within the window (R7) -------------------------------------------

WINDOW = 4.0
CLIENTS = 4
RETRY = re.compile(r"disconnected: peer_closed GOING_AWAY; reconnecting in ([\d.]+)s")
# The back-off's first window (R1): a client that ignored the hint would draw from it.
FIRST_BACKOFF = 0.5


def test_r7_cli_clients_wait_within_the_reconnect_window(serve, spawn) -> None:
    server = serve(*TIMERS, "--drain-period", f"{WINDOW:g}")
    clients = [
        spawn("client", "--port", str(server.port), "-n", f"fleet-{i}") for i in range(CLIENTS)
    ]
    server.wait_line(r"connect .* name=fleet-", count=CLIENTS)
    server.signal(signal.SIGTERM)
    delays = [float(client.wait_line(RETRY.pattern, which="stderr").group(1)) for client in clients]
    assert server.wait(WINDOW + PROMPT + WAIT_TIMEOUT) == 0
    print(f"reconnect delays {sorted(delays)}")
    assert all(0 <= delay <= WINDOW for delay in delays), delays
    # Each is the longer of a draw in [0, 0.5] and one in [0, 4]: all four under 0.5 s
    # has a chance of (1/8)^4 = 1/4096.
    assert max(delays) > FIRST_BACKOFF, delays


# --- the rolling restart (SIGHUP with --workers) ----------------------------------------

FLEET = 20
RESTART_PERIOD = 2.0
SLOW = f"interval = 5\ntimeout = 15\nstats-interval = 0\ndrain-period = {RESTART_PERIOD:g}\n"


class Fleet:
    """FLEET reconnecting clients on one loop, each one's endings recorded by name."""

    def __init__(self, port: int) -> None:
        self.loop = EventLoop()
        self.endings: dict[str, list[Disconnect]] = {}
        self.clients = [self._client(port, f"fleet-{i}") for i in range(FLEET)]

    def _client(self, port: int, name: str) -> Client:
        endings = self.endings[name] = []
        client = Client(
            "127.0.0.1", port, name, loop=self.loop, on_disconnect=lambda d, _: endings.append(d)
        )
        client.start()
        return client

    def run_until(self, condition: Callable[[], bool], timeout: float) -> None:
        endings = {name: [str(d) for d in ds] for name, ds in self.endings.items()}
        assert self.loop.run_until(condition, timeout), endings

    def connected(self, times: int) -> bool:
        return all(client.connects >= times for client in self.clients)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.loop.run_until(lambda: all(c.done for c in self.clients), WAIT_TIMEOUT)
        self.loop.close()


def _restart(server: ServerProcess, config: Path) -> None:
    """A SIGHUP whose new settings need new workers."""
    config.write_text(SLOW.replace("interval = 5", "interval = 6"))
    server.signal(signal.SIGHUP)


def _retired(server: ServerProcess) -> bool:
    return len(server.find(r"retired: exited with code 0")) == 2


def _closed_once_each(fleet: Fleet, server: ServerProcess) -> None:
    """Every client ended once, with GOING_AWAY: no second close, and no reset of a
    reconnect queued on an old worker's listener; and both old workers stopped
    accepting before either of them closed anyone."""
    endings = {
        name: [str(d) for d in ds if d.reason is not Reason.CLOSED_LOCALLY]  # the test's own
        for name, ds in fleet.endings.items()
    }
    assert all(e == ["peer_closed GOING_AWAY"] for e in endings.values()), endings
    order = [
        "stopped" if "stopped accepting" in line else "closing"
        for line in server.lines()
        if "stopped accepting" in line or "shutting down: closing" in line
    ]
    assert order == ["stopped", "stopped", "closing", "closing"], order


def test_c4_a_rolling_restart_closes_each_client_at_most_once(serve, tmp_path: Path) -> None:
    config = tmp_path / "hbloop.toml"
    config.write_text(SLOW)
    server = serve("--config", str(config), "--workers", "2")
    fleet = Fleet(server.port)
    try:
        fleet.run_until(lambda: fleet.connected(1), WAIT_TIMEOUT)
        _restart(server, config)
        fleet.run_until(lambda: _retired(server) and fleet.connected(2), 2 * WAIT_TIMEOUT)
    finally:
        fleet.close()
    _closed_once_each(fleet, server)


def test_c4_no_old_worker_drains_while_another_still_accepts(serve, tmp_path: Path) -> None:
    """One old worker stopped (as by a debugger) when it is told to stop accepting:
    the other waits for it rather than drain, so that none of its clients can
    reconnect into the stopped one's listener and be closed (or reset) again."""
    config = tmp_path / "hbloop.toml"
    config.write_text(SLOW)
    server = serve("--config", str(config), "--workers", "2")
    old_pids = [int(pid) for pid in server.wait_line(r"pids=(\d+) (\d+)").groups()]
    fleet = Fleet(server.port)
    try:
        fleet.run_until(lambda: fleet.connected(1), WAIT_TIMEOUT)
        os.kill(old_pids[1], signal.SIGSTOP)  # before its replacement listens
        _restart(server, config)
        server.wait_line(r"replaces pid", count=2)  # both replacements listen
        # While one old worker may still accept, no client is closed: the drain
        # period passes with every client still on its first connection.
        fleet.loop.run_until(lambda: any(fleet.endings.values()), RESTART_PERIOD)
        assert not any(fleet.endings.values()), fleet.endings
        os.kill(old_pids[1], signal.SIGCONT)
        fleet.run_until(lambda: _retired(server) and fleet.connected(2), 2 * WAIT_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pids[1], signal.SIGCONT)
        fleet.close()
    _closed_once_each(fleet, server)


def test_c4_a_full_restart_on_a_held_socket_closes_each_client_once(serve) -> None:
    """SIGTERM to --workers: every worker stops accepting before any closes a peer, so
    no client reconnects into a worker about to close it; on a socket the test holds
    (as systemd's socket activation does), the clients wait in its backlog for the
    next server, which welcomes every one."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        fd = str(held.fileno())
        argv = (*TIMERS, "--workers", "2", "--fd", fd, "--drain-period", f"{RESTART_PERIOD:g}")
        first = serve(*argv, pass_fds=(held.fileno(),))
        fleet = Fleet(held.getsockname()[1])
        try:
            fleet.run_until(lambda: fleet.connected(1), WAIT_TIMEOUT)
            first.signal(signal.SIGTERM)
            fleet.run_until(lambda: first.proc.poll() is not None, 2 * WAIT_TIMEOUT)
            serve(*argv, pass_fds=(held.fileno(),))
            fleet.run_until(lambda: fleet.connected(2), 2 * WAIT_TIMEOUT)
        finally:
            fleet.close()
    _closed_once_each(fleet, first)

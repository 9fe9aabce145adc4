"""SIGHUP: a lone server re-reads its settings and applies the log settings in place;
a supervisor restarts its workers with the new settings. Neither dies."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from hbloop.core.protocol import parse_welcome
from hbloop.core.wire import PING_FRAME, Code, FrameType, encode_close

from conftest import WAIT_TIMEOUT, RawPeer, expect_last_word, pid_alive, wait_for

FAST = "interval = 0.5\ntimeout = 1.5\nstats-interval = 0\n"


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hbloop.toml"
    path.write_text(text)
    return str(path)


def granted_interval_ms(address: tuple[str, int], name: str) -> int:
    with RawPeer(address) as peer:
        ftype, payload = peer.hello(name)
        assert ftype == FrameType.WELCOME
        peer.send(encode_close(Code.NORMAL))
        return parse_welcome(payload).interval_ms


def test_sighup_without_a_config_file_is_logged_and_harmless(serve, raw_peer):
    server = serve("--interval", "0.5", "--timeout", "1.5")
    peer = raw_peer(server.address)
    assert peer.hello("steady")[0] == FrameType.WELCOME
    server.signal(signal.SIGHUP)
    server.wait_line("SIGHUP: settings reloaded from the command line")
    peer.send(PING_FRAME)
    assert peer.recv()[0] == FrameType.PONG
    assert server.terminate() == 0


def test_sighup_applies_the_log_format_and_names_what_needs_a_restart(serve, tmp_path):
    path = config(tmp_path, FAST)
    server = serve("--config", path)
    Path(path).write_text(FAST.replace("interval = 0.5", "interval = 0.6") + 'log-format = "json"')
    server.signal(signal.SIGHUP)
    reloaded = json.loads(server.wait_line(r'"message": "SIGHUP: settings reloaded').string)
    assert reloaded["message"].endswith("log-level info, log-format json")
    warning = json.loads(server.wait_line(r"SIGHUP: --interval changed").string)
    assert warning["level"] == "warning" and "restart" in warning["message"]
    # The interval needs a restart: a newcomer still gets the old one.
    assert granted_interval_ms(server.address, "newcomer") == 500
    connect = json.loads(server.wait_line(r'"event": "connect"').string)
    assert connect["name"] == "newcomer"
    assert server.terminate() == 0


def test_sighup_with_a_bad_file_changes_nothing(serve, tmp_path):
    path = config(tmp_path, FAST)
    server = serve("--config", path)
    Path(path).write_text(FAST + "bogus = 1\n")
    server.signal(signal.SIGHUP)
    server.wait_line(
        r"ERROR hbloop.cli: SIGHUP: config file .*: unknown key 'bogus'.*nothing changed"
    )
    assert granted_interval_ms(server.address, "after") == 500
    assert server.terminate() == 0


# Peers that never PING must outlive a rolling restart, two worker starts in a row,
# which take seconds on a loaded machine.
SLOW = "interval = 5\ntimeout = 15\nstats-interval = 0\ndrain-period = 1\n"


def test_sighup_restarts_the_workers_one_by_one(serve, tmp_path):
    path = config(tmp_path, SLOW)
    server = serve("--config", path, "--workers", "2")
    old_pids = [int(p) for p in server.wait_line(r"pids=(\d+) (\d+)").groups()]
    peers = [RawPeer(server.address) for _ in range(6)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"old-{i}")[0] == FrameType.WELCOME
        Path(path).write_text(SLOW.replace("interval = 5", "interval = 6"))
        server.signal(signal.SIGHUP)
        # Every old worker closes its peers gracefully, whichever worker held them.
        for peer in peers:
            expect_last_word(peer, FrameType.CLOSE, Code.GOING_AWAY)
    finally:
        for peer in peers:
            peer.close()
    server.wait_line("rolling restart done")
    replaced = server.find(r"worker (\d): pid (\d+) replaces pid (\d+)")
    assert sorted(int(m[3]) for m in replaced) == sorted(old_pids)
    assert wait_for(lambda: not any(pid_alive(pid) for pid in old_pids), WAIT_TIMEOUT)
    server.wait_line(r"retired: exited with code 0", count=2)  # logged just after the reap
    assert len(server.find(r"retired: exited with code 0")) == 2
    # The new workers serve the new settings, on the same port.
    assert granted_interval_ms(server.address, "new") == 6000
    assert server.terminate() == 0
    assert len(server.find(r"worker \d \(pid \d+\) exited with code 0")) == 2


def _server_full(address: tuple[str, int], name: str) -> bytes:
    """The payload of the ERROR a newcomer gets, or fail if it is welcomed."""
    with RawPeer(address) as peer:
        ftype, payload = peer.hello(name)
        assert ftype == FrameType.ERROR, (ftype, payload)
        assert int.from_bytes(payload[:2], "big") == Code.SERVER_FULL
        return payload


def test_sighup_applies_max_connections_and_handshakes_in_place(serve, tmp_path):
    """--max-connections and --max-handshakes need no restart: after SIGHUP the new
    limits turn newcomers away while the peers already admitted keep heartbeating."""
    path = config(tmp_path, FAST + "max-connections = 3\n")
    server = serve("--config", path)
    peers = [RawPeer(server.address) for _ in range(2)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"kept-{i}")[0] == FrameType.WELCOME
        Path(path).write_text(FAST + "max-connections = 2\nmax-handshakes = 1\n")
        server.signal(signal.SIGHUP)
        server.wait_line("SIGHUP: settings reloaded")
        assert b"2 connections" in _server_full(server.address, "third")
        assert not server.find("SIGHUP: .* changed; a restart applies it")
        for peer in peers:  # not reconnected: the same connections answer
            peer.send(PING_FRAME)
            assert peer.recv()[0] == FrameType.PONG
        peers[1].close()
        # One handshake at a time now: a silent connection holds the only slot.
        with RawPeer(server.address):
            assert b"too many handshakes" in _server_full(server.address, "second")
    finally:
        for peer in peers:
            peer.close()
    assert server.terminate() == 0


# Newcomers after the limit is lowered: they land on either worker.
NEWCOMERS = 8


def test_sighup_applies_max_connections_in_every_worker_without_a_restart(serve, tmp_path):
    path = config(tmp_path, SLOW + "max-connections = 10\n")
    server = serve("--config", path, "--workers", "2")
    server.wait_line(r"pids=(\d+) (\d+)")
    peers = [RawPeer(server.address) for _ in range(2)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"kept-{i}")[0] == FrameType.WELCOME
        # A share of 1 a worker: the two peers fill both workers, or one worker with
        # one slot left on the other.
        Path(path).write_text(SLOW + "max-connections = 2\n")
        server.signal(signal.SIGHUP)
        server.wait_line("SIGHUP: nothing needs a restart; 2 workers apply it in place")
        server.wait_line("SIGHUP: settings reloaded", count=3)  # the supervisor's and each worker's
        welcomed = 0
        for n in range(NEWCOMERS):
            newcomer = RawPeer(server.address)
            peers.append(newcomer)  # kept open: a welcome holds its slot
            ftype, payload = newcomer.hello(f"newcomer-{n}")
            assert ftype == FrameType.WELCOME or b"1 connections" in payload
            welcomed += ftype == FrameType.WELCOME
        assert welcomed <= 1
        for peer in peers[:2]:
            peer.send(PING_FRAME)
            assert peer.recv()[0] == FrameType.PONG
    finally:
        for peer in peers:
            peer.close()
    assert not server.find("rolling restart")
    assert server.terminate() == 0

"""SIGHUP with `--workers`: a restart closes each client once, as the old workers all
stop accepting before any reconnect; settings that need no restart apply in place."""

from __future__ import annotations

import signal
from pathlib import Path

from hbloop.core.wire import PING_FRAME, Code, FrameType

from conftest import RawPeer, expect_last_word

SLOW = "interval = 5\ntimeout = 15\nstats-interval = 0\ndrain-period = 1\n"

# Clients: about half on each worker; on a one-by-one restart, each reconnect of the
# first worker's half has an even chance to land on the second old worker and be
# closed again, so all of them escaping it has a chance of about 2^-10.
CLIENTS = 20


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hbloop.toml"
    path.write_text(text)
    return path


def _still_open(peers: list[RawPeer]) -> None:
    for peer in peers:
        peer.send(PING_FRAME)
        assert peer.recv()[0] == FrameType.PONG


def test_a_restart_closes_each_client_once(serve, tmp_path):
    path = _config(tmp_path, SLOW)
    server = serve("--config", str(path), "--workers", "2")
    old = [RawPeer(server.address) for _ in range(CLIENTS)]
    back: list[RawPeer] = []
    try:
        for i, peer in enumerate(old):
            assert peer.hello(f"c{i}")[0] == FrameType.WELCOME
        path.write_text(SLOW.replace("interval = 5", "interval = 6"))
        server.signal(signal.SIGHUP)
        expect_last_word(old[0], FrameType.CLOSE, Code.GOING_AWAY)
        # Every old worker has stopped accepting before the first client could return:
        # both were replaced before either closed anyone (one by one, the second old
        # worker would still be taking reconnects, to close them again later).
        server.wait_line(r"shutting down: closing \d+ connections", count=2)
        order = [
            "replaces" if "replaces pid" in line else "closing"
            for line in server.lines()
            if "replaces pid" in line or "shutting down: closing" in line
        ]
        assert order == ["replaces", "replaces", "closing", "closing"], order
        for i, peer in enumerate(old):
            if i:  # the first one's last word is read above
                expect_last_word(peer, FrameType.CLOSE, Code.GOING_AWAY)
            back.append(RawPeer(server.address))
            assert back[-1].hello(f"c{i}")[0] == FrameType.WELCOME
        server.wait_line(r"retired: exited with code 0", count=2)
        _still_open(back)  # none was closed a second time
    finally:
        for peer in old + back:
            peer.close()


def test_settings_that_need_no_restart_apply_in_every_worker(serve, tmp_path):
    path = _config(tmp_path, SLOW)
    server = serve("--config", str(path), "--workers", "2")
    peers = [RawPeer(server.address) for _ in range(CLIENTS)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"p{i}")[0] == FrameType.WELCOME
        path.write_text(SLOW + "max-accept-rate = 1000\nmax-handshakes-per-source = 64\n")
        server.signal(signal.SIGHUP)
        server.wait_line(r"SIGHUP: nothing needs a restart; 2 workers apply it in place")
        # The supervisor's own reload, then each worker's.
        server.wait_line(r"SIGHUP: settings reloaded from", count=3)
        _still_open(peers)
    finally:
        for peer in peers:
            peer.close()
    assert not server.find(r"replaces pid|a restart applies it")

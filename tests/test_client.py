"""The client library against a real `hbloop serve` subprocess."""

from __future__ import annotations

import signal

import pytest

from hbloop.client import Client
from hbloop.core.backoff import Backoff
from hbloop.core.protocol import LocalProtocolError
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import Code, Scheme, Welcome, encode_hello
from hbloop.net.loop import EventLoop

WAIT = 15.0


class Recorder:
    """A Client wired to lists of what it reported."""

    def __init__(self, port: int, name: str, start: bool = True, **kwargs: object) -> None:
        self.loop = EventLoop()
        self.welcomes: list[Welcome] = []
        self.messages: list[bytes] = []
        self.disconnects: list[tuple[Disconnect, float | None]] = []
        self.client = Client(
            "127.0.0.1",
            port,
            name,
            loop=self.loop,
            on_welcome=self.welcomes.append,
            on_message=self.messages.append,
            on_disconnect=lambda d, retry: self.disconnects.append((d, retry)),
            **kwargs,  # type: ignore[arg-type]
        )
        if start:
            self.client.start()

    def run_until(self, condition, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
        assert self.loop.run_until(condition, timeout), "condition not met in time"

    def run_for(self, seconds: float) -> None:
        self.loop.run_until(lambda: False, seconds)

    def close(self) -> None:
        self.client.close()
        self.loop.run_until(lambda: self.client.done, 5)
        self.loop.close()


@pytest.fixture
def recorders():
    made: list[Recorder] = []

    def make(port: int, name: str, **kwargs: object) -> Recorder:
        recorder = Recorder(port, name, **kwargs)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.close()


@pytest.mark.parametrize("scheme", ["client", "server"])
def test_both_schemes_keep_the_connection_alive(serve, recorders, scheme):
    server = serve("--interval", "0.2", "--timeout", "0.6", "--scheme", scheme)
    rec = recorders(server.port, f"lib-{scheme}")
    rec.run_until(lambda: rec.welcomes)
    assert rec.welcomes[0].scheme is Scheme[scheme.upper()]
    rec.run_for(1.5)  # more than two timeouts: heartbeats must carry it
    assert rec.disconnects == []
    assert not server.find(f"name=lib-{scheme}.*reason")
    assert rec.client.send(b"echo me")
    rec.run_until(lambda: rec.messages)
    assert rec.messages == [b"echo me"]


def test_client_asks_for_its_interval(serve, recorders):
    server = serve("--interval", "2", "--timeout", "6")
    rec = recorders(server.port, "asker", interval=0.5)
    rec.run_until(lambda: rec.welcomes)
    assert (rec.welcomes[0].interval_ms, rec.welcomes[0].timeout_ms) == (500, 1500)


def test_a_silent_server_is_detected(serve, recorders):
    server = serve("--interval", "0.2", "--timeout", "0.6")
    rec = recorders(server.port, "watcher", backoff=Backoff(base=5, cap=5))
    rec.run_until(lambda: rec.welcomes)
    server.signal(signal.SIGSTOP)  # frozen: TCP stays up, nothing is sent
    try:
        start = rec.loop.time()
        rec.run_until(lambda: rec.disconnects)
        elapsed = rec.loop.time() - start
    finally:
        server.signal(signal.SIGCONT)
    disconnect, retry_in = rec.disconnects[0]
    assert disconnect.reason is Reason.TIMEOUT
    assert retry_in is not None
    assert elapsed < 0.6 + 1.0


def test_the_client_reconnects_after_a_server_restart(serve, recorders):
    first = serve("--interval", "0.5", "--timeout", "1.5")
    rec = recorders(first.port, "phoenix", backoff=Backoff(base=0.2, cap=0.5))
    rec.run_until(lambda: rec.welcomes)
    first.signal(signal.SIGTERM)
    rec.run_until(lambda: rec.disconnects)
    disconnect, _ = rec.disconnects[0]
    assert (disconnect.reason, disconnect.code) == (Reason.PEER_CLOSED, Code.GOING_AWAY)
    assert first.wait() == 0
    serve("--interval", "0.5", "--timeout", "1.5", "--port", str(first.port))
    rec.run_until(lambda: len(rec.welcomes) == 2)
    assert rec.client.connects == 2


def test_a_refused_name_stops_the_client(serve, recorders):
    server = serve()
    rec = recorders(server.port, "ok", start=False)
    # Bypass the local check to see the server's refusal.
    rec.client.session_config.hello = encode_hello("bad\nname", 0)
    rec.client.start()
    rec.run_until(lambda: rec.client.stopped is not None)
    stopped = rec.client.stopped
    assert stopped is not None
    assert (stopped.reason, stopped.code) == (Reason.PEER_ERROR, Code.BAD_NAME)


def test_close_sends_close_normal(serve, recorders):
    server = serve()
    rec = recorders(server.port, "polite")
    rec.run_until(lambda: rec.welcomes)
    rec.client.close()
    rec.run_until(lambda: rec.client.done)
    server.wait_line(r"name=polite .*reason=peer_closed NORMAL")


def test_local_misuse_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        Client("127.0.0.1", 1, "x" * 65)
    with pytest.raises(LocalProtocolError):
        Client("127.0.0.1", 1, "")


def test_backoff_uses_full_jitter_with_a_cap():
    draws = iter([1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0])
    backoff = Backoff(base=0.5, cap=3, rng=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 1.5]
    backoff.reset()  # after a successful handshake the window starts small again
    assert backoff.next_delay() == 0.5

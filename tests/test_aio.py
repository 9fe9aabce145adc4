"""hbloop.aio, the asyncio client, against a real `hbloop serve` (and scripted fakes),
on asyncio's own loop and on uvloop."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from fakeserver import FakeServer, deaf, record_silently, welcome

from hbloop.aio import MAX_QUEUED_MESSAGES, ClientStopped, connect
from hbloop.core.backoff import Backoff
from hbloop.core.policy import DEFAULT_MAX_PENDING
from hbloop.core.protocol import Frame, FrameDecoder, LocalProtocolError, parse_close
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import Code, FrameType, Scheme, Welcome, encode_data

from conftest import WAIT_TIMEOUT, wait_for

Run = Callable[[Coroutine[Any, Any, Any]], Any]

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

# A fast grant, so that several timeouts pass within a test.
FAST = ("--interval", "0.2", "--timeout", "0.6")
# Heartbeats received before the connection counts as kept alive: 6 intervals of
# 0.2 s, two timeouts' worth.
KEPT_ALIVE = 6


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Runs a coroutine to completion on a new loop of each kind (bounded in time)."""
    with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
        yield lambda coro: runner.run(asyncio.wait_for(coro, 2 * WAIT_TIMEOUT))


async def until(condition: Callable[[], object]) -> None:
    """Let the loop run until ``condition()`` holds."""
    async with asyncio.timeout(WAIT_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


class Ends:
    """An ``on_disconnect`` callback that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[Disconnect, float | None]] = []

    def __call__(self, disconnect: Disconnect, retry_in: float | None) -> None:
        self.seen.append((disconnect, retry_in))


@pytest.mark.parametrize("scheme", ["client", "server"])
def test_both_schemes_keep_the_connection_alive_and_data_comes_back(serve, run, scheme):
    server = serve(*FAST, "--scheme", scheme)
    ends = Ends()

    async def main() -> None:
        async with connect(*server.address, f"aio-{scheme}", on_disconnect=ends) as client:
            granted = await client.welcome()
            assert granted.scheme is Scheme[scheme.upper()]
            assert (granted.interval_ms, granted.timeout_ms) == (200, 600)
            await until(lambda: client.counters.copy().heartbeats >= KEPT_ALIVE)
            assert ends.seen == [] and client.connects == 1
            assert await client.send(b"echo me")
            assert await anext(client) == b"echo me"

    run(main())
    assert not server.find(f"name=aio-{scheme} .*reason=(?!peer_closed NORMAL)")


def test_a_silent_server_is_detected_and_told_why(run):
    fake = FakeServer(welcome(Scheme.CLIENT, 200, 600), record_silently)
    ends = Ends()

    async def main() -> float:
        async with connect(
            *fake.address, "watcher", backoff=Backoff(base=5, cap=5), on_disconnect=ends
        ) as client:
            await client.welcome()
            opened = asyncio.get_running_loop().time()
            await until(lambda: ends.seen)
            return asyncio.get_running_loop().time() - opened

    try:
        silent_for = run(main())
        disconnect, retry_in = ends.seen[0]
        assert disconnect.reason is Reason.TIMEOUT and retry_in is not None
        assert disconnect.detail.startswith("silent for ")
        assert silent_for < 0.6 + 1.0
        # It pinged while it waited (T3), then said CLOSE TIMEOUT.
        assert wait_for(lambda: any(t == FrameType.CLOSE for t, _ in fake.frames()))
        frames = fake.frames()
        assert frames.count((FrameType.PING, b"")) >= 2
        assert frames[-1][0] == FrameType.CLOSE and parse_close(frames[-1][1]) == Code.TIMEOUT
    finally:
        fake.close()


# The chatty server below sends DATA this often: well within the 0.6 s timeout.
CHATTY_PERIOD = 0.15
# How long the test blocks its loop: past the timeout, with margin.
BLOCKED_FOR = 1.0


def chatty(
    server: FakeServer, sock: socket.socket, _decoder: FrameDecoder, _frames: list[Frame]
) -> None:
    """A server that sends DATA every CHATTY_PERIOD (and reads nothing) until closed."""
    while not server.closed.wait(CHATTY_PERIOD):
        try:
            sock.sendall(encode_data(b"tick"))
        except OSError:
            return


def test_a_blocked_loop_reads_what_waits_before_it_judges_the_server(run):
    """T6: after the loop was blocked past the timeout, the server's frames waiting in
    the socket are read before the timeout is judged. The block is in a callback run
    from a read, after which uvloop (libuv) runs due timers before it polls again."""
    fake = FakeServer(welcome(Scheme.CLIENT, 200, 600), chatty)
    ends = Ends()

    def block(_welcome: Welcome) -> None:
        time.sleep(BLOCKED_FOR)  # the application blocks the loop; DATA piles up unread

    async def main() -> None:
        async with connect(
            *fake.address, "sleepy", reconnect=False, on_welcome=block, on_disconnect=ends
        ) as client:
            await anext(client)  # what waited is read
            client.messages.clear()
            await anext(client)  # one sent after the block: the timer has judged by now
            assert client.connected and ends.seen == []

    try:
        run(main())
    finally:
        fake.close()


def test_the_client_reconnects_after_a_server_restart(serve, run):
    first = serve(*FAST)
    ends = Ends()

    async def main() -> None:
        backoff = Backoff(base=0.2, cap=0.5)
        async with connect(*first.address, "phoenix", backoff=backoff, on_disconnect=ends) as c:
            await c.welcome()
            first.signal(signal.SIGTERM)
            await until(lambda: ends.seen)
            disconnect, retry_in = ends.seen[0]
            assert (disconnect.reason, disconnect.code) == (Reason.PEER_CLOSED, Code.GOING_AWAY)
            assert retry_in is not None
            assert await asyncio.to_thread(first.wait) == 0
            await asyncio.to_thread(serve, *FAST, "--port", str(first.port))
            await c.welcome()
            assert c.connects == 2

    run(main())


def test_a_name_this_client_would_not_send_is_a_local_error(serve, run):
    server = serve()

    async def main() -> None:
        with pytest.raises(LocalProtocolError) as refused:
            async with connect(*server.address, "bad name"):
                pass
        assert refused.value.code == Code.BAD_NAME  # before any connection (N1)

    run(main())


def test_a_refused_name_stops_the_client(serve, run, monkeypatch):
    # hbloop's client refuses to send such a name (above); one that does not check,
    # as this one is made to, hears the server's refusal, which is final.
    monkeypatch.setattr("hbloop.client.name_problem", lambda name: None)
    server = serve()
    ends = Ends()

    async def main() -> None:
        async with connect(*server.address, "bad name", on_disconnect=ends) as client:
            with pytest.raises(ClientStopped) as stopped:
                await client.welcome()
            assert [message async for message in client] == []  # the iteration ends
        assert (stopped.value.disconnect.reason, stopped.value.disconnect.code) == (
            Reason.PEER_ERROR,
            Code.BAD_NAME,
        )
        assert client.stopped == stopped.value.disconnect

    run(main())
    assert [retry_in for _, retry_in in ends.seen] == [None]  # no retry


def test_close_and_cancellation_send_close_normal(serve, run):
    server = serve()

    async def held_until_cancelled(opened: asyncio.Event) -> None:
        async with connect(*server.address, "cancelled") as client:
            await client.welcome()
            opened.set()
            await asyncio.Event().wait()  # until cancelled

    async def main() -> None:
        client = connect(*server.address, "polite")
        client.start()
        await client.welcome()
        stopped = await client.close()
        assert (stopped.reason, stopped.code) == (Reason.CLOSED_LOCALLY, Code.NORMAL)
        assert not client.connected
        opened = asyncio.Event()
        task = asyncio.create_task(held_until_cancelled(opened))
        await opened.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    server.wait_line(r"disconnect .*name=polite .*reason=peer_closed NORMAL")
    server.wait_line(r"disconnect .*name=cancelled .*reason=peer_closed NORMAL")


def test_a_consumer_that_falls_behind_pauses_reading_and_loses_nothing(serve, run):
    server = serve()
    count = MAX_QUEUED_MESSAGES + 100

    async def main() -> None:
        async with connect(*server.address, "behind") as client:
            await client.welcome()
            for i in range(count):
                assert await client.send(b"%d" % i)
            # Not consuming: the queue fills up to its bound (and past it by at most
            # what one read brought), and reading stops.
            await until(lambda: len(client.messages) >= MAX_QUEUED_MESSAGES)
            connection = client.connection
            assert connection is not None and not connection.reading
            received = [await anext(client) for _ in range(count)]
            assert received == [b"%d" % i for i in range(count)]
            assert connection.reading  # taken: reading again

    run(main())


def test_output_a_server_does_not_read_waits_in_send(run):
    fake = FakeServer(welcome(Scheme.CLIENT, 10_000, 30_000), deaf)
    chunk = bytes(65536)

    async def main() -> None:
        async with connect(*fake.address, "writer", reconnect=False) as client:
            await client.welcome()
            connection = client.connection
            assert connection is not None and connection.transport is not None

            async def write_all() -> None:
                while await client.send(chunk):
                    pass

            writer = asyncio.create_task(write_all())
            # Once the kernel's buffers are full, the transport's fills up to its mark:
            # send() then waits instead of buffering on.
            await until(lambda: connection.writing_paused)
            assert not writer.done()
            assert connection.transport.get_write_buffer_size() < DEFAULT_MAX_PENDING
            assert client.connected  # a sender that waits is no slow consumer
        await writer  # closing ended the wait

    try:
        run(main())
    finally:
        fake.close()

"""The Redis link against a real redis-server: pipelining, loss, the bound, scripts."""

from __future__ import annotations

import logging
import select
import signal
import socket
import time
from typing import Any

import pytest

from hbloop.net.loop import EventLoop
from hbloop.presence.redis_link import RedisLink, RedisUnavailable, Script, parse_url

from conftest import RedisProcess

ECHO = Script("return ARGV[1]")


class Recorder:
    """A link on its own loop, with what its callbacks saw."""

    def __init__(self, redis: RedisProcess, **options: Any) -> None:
        self.loop = EventLoop()
        self.events: list[str] = []
        self.link = RedisLink(
            self.loop,
            redis.address,
            client_name="test-link",
            on_ready=lambda: self.events.append("ready"),
            on_lost=lambda reason: self.events.append(f"lost: {reason}"),
            on_script_flush=lambda: self.events.append("flushed"),
            scripts=[ECHO],
            **options,
        )
        self.link.start()
        self.run_until(lambda: self.link.ready)

    def run_until(self, condition: Any, timeout: float = 10.0) -> None:
        assert self.loop.run_until(condition, timeout), f"timed out; events: {self.events}"

    def close(self) -> None:
        self.link.close()
        self.loop.close()


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def make(redis: RedisProcess, **options: Any) -> Recorder:
        made.append(Recorder(redis, **options))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


def test_urls_are_parsed_and_printed_without_the_password() -> None:
    tcp = parse_url("redis://:s3cret@cache.local:6380/2")
    assert (tcp.family, tcp.target, tcp.db, tcp.password) == (
        socket.AF_INET,
        ("cache.local", 6380),
        2,
        "s3cret",
    )
    assert str(tcp) == "redis://cache.local:6380/2"
    unix = parse_url("unix:///run/redis.sock?db=3")
    assert (unix.family, unix.target, unix.db) == (socket.AF_UNIX, "/run/redis.sock", 3)
    assert parse_url("redis://localhost").target == ("localhost", 6379)
    for bad in ("http://x", "redis://", "unix://", "redis://h/notanumber"):
        with pytest.raises(ValueError, match="bad Redis URL"):
            parse_url(bad)


def test_commands_of_one_iteration_leave_in_one_write_and_replies_keep_order(
    redis_server: RedisProcess, recorder, prefix: str
) -> None:
    rec = recorder(redis_server)
    replies: list[Any] = []
    sends: list[int] = []
    sock = rec.link._sock
    assert sock is not None
    real_send = sock.send

    class Counting:  # count the send() calls the link makes
        def __getattr__(self, name: str) -> Any:
            return getattr(sock, name)

        def send(self, data: bytes) -> int:
            sends.append(len(data))
            return real_send(data)

    rec.link._sock = Counting()  # type: ignore[assignment]
    for _ in range(100):
        assert rec.link.call(replies.append, "INCR", f"{prefix}n")
    assert rec.link.run(ECHO, (), ["hi"], replies.append)
    assert rec.link.backlog == 101
    rec.run_until(lambda: len(replies) == 101)
    assert replies == [*range(1, 101), b"hi"]
    assert len(sends) == 1, "one flush per loop iteration"
    rec.link._sock = sock


def test_a_lost_connection_fails_waiting_commands_and_comes_back(
    own_redis: RedisProcess, recorder
) -> None:
    rec = recorder(own_redis)
    replies: list[Any] = []
    assert rec.link.call(replies.append, "BLPOP", "never", 0)  # waits forever
    own_redis.shutdown()
    rec.run_until(lambda: replies)
    assert isinstance(replies[0], RedisUnavailable)
    assert rec.events[-1].startswith("lost: ")
    assert not rec.link.call(replies.append, "PING"), "refused while down"
    own_redis.start()
    rec.run_until(lambda: rec.events.count("ready") == 2)
    assert rec.link.connects == 2 and rec.link.disconnects == 1
    assert rec.link.call(replies.append, "PING")
    rec.run_until(lambda: len(replies) == 2)
    assert replies[1] == b"PONG"


def test_a_stalled_redis_meets_the_bound_then_the_reply_timeout(
    own_redis: RedisProcess, recorder
) -> None:
    rec = recorder(own_redis, max_pending=5, reply_timeout=0.5)
    assert own_redis.process is not None
    replies: list[Any] = []
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        accepted = [rec.link.call(replies.append, "PING") for _ in range(8)]
        assert accepted == [True] * 5 + [False] * 3, "the backlog is bounded"
        assert rec.link.refused == 3
        start = rec.loop.time()
        rec.run_until(lambda: len(replies) == 5)
        assert 0.5 <= rec.loop.time() - start < 3.0
        assert all(isinstance(r, RedisUnavailable) for r in replies)
        assert "no reply for 0.5s" in rec.events[-1]
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    rec.run_until(lambda: rec.events.count("ready") == 2)


def test_a_flushed_script_cache_falls_back_to_eval_and_says_so(
    redis_server: RedisProcess, recorder
) -> None:
    rec = recorder(redis_server)
    replies: list[Any] = []
    assert rec.link.call(replies.append, "SCRIPT", "FLUSH")
    assert rec.link.run(ECHO, (), ["again"], replies.append)
    rec.run_until(lambda: len(replies) == 2)
    assert replies == [b"OK", b"again"]
    assert rec.link.noscript == 1
    assert "flushed" in rec.events


def test_a_refused_handshake_is_retried_and_logged_once(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hbloop.redis")
    loop = EventLoop()
    address = parse_url(f"{redis_server.url}?db=99")  # Redis has 16 databases
    ready: list[bool] = []
    link = RedisLink(
        loop,
        address,
        client_name="t",
        on_ready=lambda: ready.append(True),
        on_lost=lambda reason: None,
    )
    link.start()
    try:
        assert loop.run_until(lambda: link.backoff.attempt >= 3, 10.0)
        assert not ready and not link.ready
        assert not link.call(lambda reply: None, "PING")
        refusals = [r for r in caplog.records if "refused the handshake" in r.getMessage()]
        assert [r.levelname for r in refusals[:2]] == ["ERROR", "DEBUG"]
    finally:
        link.close()
        loop.close()


def test_the_watchdog_reads_a_waiting_reply_before_it_judges(
    redis_server: RedisProcess, recorder
) -> None:
    """A reply that came while the loop was busy with other events past the reply
    timeout is progress, not a stalled Redis (a mass disconnect of 15,000 peers made
    a worker's iterations last seconds: issue 20)."""
    rec = recorder(redis_server, reply_timeout=0.2)
    replies: list[Any] = []
    rec.link.call(replies.append, "PING")
    rec.link._flush()  # written now rather than at the iteration's end
    assert select.select([rec.link._sock], [], [], 10)[0]  # answered, not yet read
    time.sleep(0.3)  # the rest of a long iteration, past the reply timeout
    rec.loop.refresh_now()
    rec.link._on_timer()  # as the watchdog's timer fires after those events
    assert (replies, rec.events) == ([b"PONG"], ["ready"])


def test_replies_waiting_behind_other_sockets_can_be_taken_at_once(
    redis_server: RedisProcess, recorder
) -> None:
    """take_replies reads what the loop has not reported yet (the lease renewal's
    confirmation, behind a mass disconnect's ready sockets), and nothing else."""
    rec = recorder(redis_server)
    replies: list[Any] = []
    rec.link.take_replies()  # nothing waits: nothing is read, nothing blocks
    rec.link.call(replies.append, "PING")
    rec.link._flush()  # written now rather than at the iteration's end
    assert select.select([rec.link._sock], [], [], 10)[0]
    rec.link.take_replies()
    assert (replies, rec.link.backlog, rec.events) == ([b"PONG"], 0, ["ready"])

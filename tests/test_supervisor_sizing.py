"""`--workers auto` sized from `--max-connections` and the open-files limit, and
`--max-connections` as the whole server's limit, shared by its workers."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from hbloop.cli.errors import UsageError
from hbloop.cli.options import MAX_AUTO_WORKERS
from hbloop.cli.parser import parse
from hbloop.cli.settings import ServeSettings
from hbloop.core.wire import FrameType
from hbloop.net.sockets import default_max_connections, open_files_ceiling

from conftest import RawPeer

CPUS = len(os.sched_getaffinity(0))
EACH = default_max_connections(open_files_ceiling())  # connections one worker can hold


def settings(*argv: str) -> ServeSettings:
    parsed = parse(["serve", *argv], raise_errors=True)
    assert isinstance(parsed, ServeSettings)
    return parsed


def test_auto_is_one_worker_per_cpu_without_a_connection_target():
    assert settings("--workers", "auto").workers == CPUS
    assert settings("--workers", "auto", "--max-connections", str(EACH)).workers == CPUS


def test_auto_starts_enough_workers_for_the_connections_wanted():
    wanted = EACH * (CPUS + 3) + 1
    auto = settings("--workers", "auto", "--max-connections", str(wanted))
    assert auto.workers == CPUS + 4
    shares = [auto.policy(EACH, i).max_connections for i in range(1, auto.workers + 1)]
    assert sum(shares) == wanted and max(shares) - min(shares) <= 1 and max(shares) <= EACH


def test_auto_refuses_more_than_it_may_start():
    with pytest.raises(UsageError, match=f"at most {MAX_AUTO_WORKERS}"):
        settings("--workers", "auto", "--max-connections", str(EACH * MAX_AUTO_WORKERS + 1))


def test_too_few_workers_for_the_connections_wanted_is_refused():
    with pytest.raises(UsageError, match="--workers auto starts enough"):
        settings("--workers", "2", "--max-connections", str(2 * EACH + 2))


def test_the_limit_is_split_and_a_lone_server_keeps_it_whole():
    split = settings("--workers", "3", "--max-connections", "10")
    assert [split.policy(EACH, i).max_connections for i in (1, 2, 3)] == [4, 3, 3]
    assert split.policy(EACH).max_connections == 10
    assert settings("--max-connections", "10").policy(EACH).max_connections == 10


# Connections offered to a server that takes LIMIT in all: with SO_REUSEPORT's hash,
# the chance that fewer than LIMIT / 2 of them land on one of two workers is 1e-6.
LIMIT = 10
OFFERED = 50


def test_max_connections_counts_every_worker(serve):
    server = serve("--workers", "2", "--max-connections", str(LIMIT), "--interval", "5")
    peers = [RawPeer(server.address) for _ in range(OFFERED)]
    try:
        answers = Counter(FrameType(peer.hello(f"p{i}")[0]).name for i, peer in enumerate(peers))
    finally:
        for peer in peers:
            peer.close()
    assert answers == {"WELCOME": LIMIT, "ERROR": OFFERED - LIMIT}, answers

"""Redis trouble made visible: a wrong URL, a Redis user the ACL denies a command, a
Redis at maxmemory. Real `hbloop serve` processes and a real redis-server: /healthz,
/metrics and the log say what is wrong, once per change, and ``--redis-required``
refuses to start on it. A script refused never leaves half its writes behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator

import pytest

from hbloop.presence.scripts import Keys

from conftest import (
    HBLOOP,
    ROOT,
    RedisProcess,
    ServerProcess,
    http_get,
    metrics_address,
    scrape,
    wait_for,
    wait_for_metrics,
)
from test_presence import CLI_TIMEOUT, NODE_TTL, REAP_INTERVAL, joined, members, start_node

# The ACL user of these tests, and the command it is denied: presence publishes
# takeovers, so every script of it (they all check before their first write) fails.
USER = "nopublish"
DENIED = "PUBLISH"
# The line a node logs when presence becomes degraded, once per change of state. The
# summary of failures while degraded ("presence: degraded (oom); 7 Redis failures in the
# last 60s") comes every SUMMARY_INTERVAL from a random phase, so a slow run may see one:
# the ";" after the reason tells it apart.
DEGRADED = r"presence: degraded \(\w+\): "


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/"


@pytest.fixture
def limited_url(redis_server: RedisProcess) -> Iterator[str]:
    """A URL of the session's Redis as a user that may run anything but PUBLISH."""
    redis_server.command("ACL", "SETUSER", USER, "on", ">pw", "~*", "&*", "+@all", f"-{DENIED}")
    yield f"unix://{USER}:pw@{redis_server.socket_path}"
    redis_server.command("ACL", "DELUSER", USER)


def serve_required(url: str, prefix: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HBLOOP, "serve", "--port", "0", "--redis", url, "--redis-prefix", prefix, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def health(server: ServerProcess) -> dict[str, str]:
    status, body = http_get(metrics_address(server), "/healthz")
    assert status == 200, body  # heartbeats are served: presence alone is degraded
    presence: dict[str, str] = json.loads(body)["presence"]
    return presence


def test_redis_required_refuses_a_wrong_url() -> None:
    url = refused_url()
    result = serve_required(url, "t:", "--redis-required")
    assert result.returncode == 1
    assert result.stderr == (
        f"hbloop: error: --redis-required: cannot reach {url.rstrip('/')}: Connection refused\n"
    )


def test_a_wrong_url_serves_with_presence_degraded(serve) -> None:
    server = serve("--redis", refused_url(), "--metrics-port", "0")
    address = metrics_address(server)
    wait_for_metrics(
        address, {"hbloop_presence_up": 0, 'hbloop_presence_degraded{reason="unreachable"}': 1}
    )
    assert health(server) == {"status": "degraded", "reason": "unreachable"}


def test_redis_required_refuses_a_user_the_acl_denies_a_command(
    limited_url: str, prefix: str
) -> None:
    result = serve_required(limited_url, prefix, "--redis-required")
    assert result.returncode == 1
    assert result.stderr == (
        f"hbloop: error: --redis-required: the Redis user may not run: "
        f"{DENIED} {prefix}takeover:check\n"
    )


def test_a_denied_command_fails_every_script_before_its_first_write(
    serve, redis_server: RedisProcess, prefix: str, limited_url: str
) -> None:
    good = start_node(serve, redis_server, prefix, "good", "--on-duplicate", "replace")
    peer = joined(good.address, "x")
    assert wait_for(lambda: members(redis_server, prefix) == {("x", "good")})
    # This test's keys only: the Redis is shared with the worker's other tests, whose
    # keys (a takeover counter with a TTL) may expire meanwhile.
    mine = f"{prefix}*"
    before = {k: redis_server.command("DUMP", k) for k in redis_server.command("KEYS", mine)}

    limited = serve(
        *("--redis", limited_url, "--redis-prefix", prefix, "--node-id", "limited"),
        *("--node-ttl", str(NODE_TTL), "--reap-interval", str(REAP_INTERVAL)),
        *("--on-duplicate", "replace", "--metrics-port", "0"),
    )
    limited.wait_line(
        rf"presence: degraded \(noperm\): the \w+ script failed: NOPERM hbloop: this "
        rf"Redis user may not run {DENIED}"
    )
    taker = joined(limited.address, "x")  # a takeover it cannot publish
    scraped = wait_for_metrics(
        metrics_address(limited),
        {"hbloop_presence_up": 0, 'hbloop_presence_degraded{reason="noperm"}': 1},
    )
    assert wait_for(
        lambda: (
            scrape(metrics_address(limited))['hbloop_presence_redis_errors_total{reason="noperm"}']
            >= 3
        )
    )
    assert health(limited) == {"status": "degraded", "reason": "noperm"}
    # Nothing of the limited node reached Redis, not even Redis' clock: the good
    # node's keys are as they were but for what it writes itself (its lease, clock).
    after = {k: redis_server.command("DUMP", k) for k in redis_server.command("KEYS", mine)}
    keys = Keys(prefix)
    moving = {keys.clock.encode(), *(k for k in after if k.startswith(keys.node("").encode()))}
    assert {k: v for k, v in after.items() if k not in moving} == {
        k: v for k, v in before.items() if k not in moving
    }
    assert len(limited.find(DEGRADED)) == 1  # one line, however many failures
    assert scraped["hbloop_presence_redis_up"] == 1
    for each in (peer, taker):
        each.close()


def test_redis_at_maxmemory_is_reported_once_and_mended_by_a_resync(
    serve, own_redis: RedisProcess, prefix: str
) -> None:
    node = start_node(serve, own_redis, prefix, "full", "--metrics-port", "0")
    address = metrics_address(node)
    early = [joined(node.address, f"m-{i}") for i in range(3)]
    assert wait_for(lambda: len(members(own_redis, prefix)) == 3)
    own_redis.command("CONFIG", "SET", "maxmemory", "1")  # every write refused: OOM
    late = [joined(node.address, f"m-{i}") for i in range(3, 10)]
    wait_for_metrics(
        address, {"hbloop_presence_up": 0, 'hbloop_presence_degraded{reason="oom"}': 1}
    )
    assert health(node) == {"status": "degraded", "reason": "oom"}
    assert wait_for(
        lambda: scrape(address)['hbloop_presence_redis_errors_total{reason="oom"}'] >= 7
    )
    assert len(own_redis.command("KEYS", f"{prefix}*")) > 0
    assert len(members(own_redis, prefix)) == 3  # the refused joins wrote nothing

    own_redis.command("CONFIG", "SET", "maxmemory", "0")
    assert wait_for(lambda: len(members(own_redis, prefix)) == 10)  # one resync
    node.wait_line(r"presence: ok again after [\d.]+s degraded \(oom\)")
    wait_for_metrics(address, {"hbloop_presence_up": 1})
    assert health(node) == {"status": "ok"}
    assert len(node.find(DEGRADED)) == 1
    for peer in (*early, *late):
        peer.close()

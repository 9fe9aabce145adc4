"""TCP keepalive and TCP_USER_TIMEOUT: server options, off by default, a supplement to
heartbeats (protocol.md, section 8 and section 9)."""

from __future__ import annotations

import socket

import pytest

from hbloop.cli.parser import parse
from hbloop.cli.settings import ServeSettings
from hbloop.core.policy import ServerPolicy, TcpKeepalive
from hbloop.core.wire import FrameType
from hbloop.server import Peer

from conftest import TCP_TIMER_KEEPALIVE, RawPeer, tcp_socket

KEEPALIVE = TcpKeepalive(idle=30, interval=5, count=3)
USER_TIMEOUT = 10.0  # seconds


def accepted_socket(harness) -> socket.socket:  # type: ignore[no-untyped-def]
    """Connect a client and return the server's side of the connection."""
    harness.client("probe")
    harness.run_until(lambda: harness.server.peers)
    peer: Peer = harness.server.peers[0]
    return peer._channel.sock


def test_keepalive_and_user_timeout_are_set_on_accepted_sockets(in_process_server):
    harness = in_process_server(
        ServerPolicy(tcp_keepalive=KEEPALIVE, tcp_user_timeout=USER_TIMEOUT)
    )
    sock = accepted_socket(harness)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE.idle
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE.interval
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE.count
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT * 1000
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_both_are_off_by_default(in_process_server):
    harness = in_process_server(ServerPolicy())
    sock = accepted_socket(harness)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # always on


def test_cli_options_reach_the_policy():
    settings = parse(["serve", "--tcp-keepalive", "30,5,3", "--tcp-user-timeout", "10"])
    assert isinstance(settings, ServeSettings)
    policy = settings.policy(fd_limit=1024)
    assert policy.tcp_keepalive == KEEPALIVE
    assert policy.tcp_user_timeout == USER_TIMEOUT
    defaults = ServeSettings().policy(fd_limit=1024)
    assert defaults.tcp_keepalive is None and defaults.tcp_user_timeout is None


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--tcp-keepalive", "0,5,3"], "keepalive idle 0 is out of range 1-32767"),
        (["--tcp-keepalive", "30,5"], "'30,5' is not IDLE,INTERVAL,COUNT"),
        (["--tcp-keepalive", "a,b,c"], "'a,b,c' is not IDLE,INTERVAL,COUNT"),
        # Past the kernel's limits, setsockopt would fail each accept (EINVAL).
        (["--tcp-keepalive", "32768,5,3"], "keepalive idle 32768 is out of range 1-32767"),
        (["--tcp-keepalive", "30,32768,3"], "keepalive interval 32768 is out of range"),
        (["--tcp-keepalive", "30,5,128"], "keepalive count 128 is out of range 1-127"),
        (["--tcp-user-timeout", "0"], "'0' must be >= 0.001 and at most 1000000"),
        (["--tcp-user-timeout", "-1"], "'-1' must be >= 0.001"),
        # Below a millisecond it would be 0 (off); past 2**31-1 ms, a C int overflows.
        (["--tcp-user-timeout", "0.0004"], "'0.0004' must be >= 0.001"),
        (["--tcp-user-timeout", "1e7"], "'1e7' must be >= 0.001 and at most 1000000"),
    ],
)
def test_bad_tcp_options_are_refused(argv: list[str], error: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["serve", *argv])
    assert exit_info.value.code == 2
    assert error in capsys.readouterr().err


def test_the_policy_refuses_what_the_kernel_would():
    """An embedder's policy is checked against the same limits as the CLI's."""
    with pytest.raises(ValueError, match="keepalive count 128 is out of range 1-127"):
        TcpKeepalive(30, 5, 128)
    with pytest.raises(ValueError, match=r"TCP user timeout must be from 0\.001 to 2147483\.647 s"):
        ServerPolicy(tcp_user_timeout=1e7)


@pytest.mark.parametrize("enabled", [True, False], ids=["--tcp-keepalive", "default"])
def test_hbloop_serve_arms_the_kernel_keepalive_timer(serve, raw_peer, enabled: bool):
    """The real CLI: the kernel shows a keepalive timer on the server's side of the
    connection, due after the idle time, only when the option is given."""
    options = ["--tcp-keepalive", "30,5,3", "--tcp-user-timeout", "10"] if enabled else []
    server = serve(*options)
    peer: RawPeer = raw_peer(server.address)
    assert peer.hello("kept-alive")[0] == FrameType.WELCOME
    state = tcp_socket(server.port, peer.sock.getsockname()[1])
    if enabled:
        assert state.timer == TCP_TIMER_KEEPALIVE
        assert KEEPALIVE.idle - 5 < state.timer_left <= KEEPALIVE.idle
    else:
        assert state.timer != TCP_TIMER_KEEPALIVE

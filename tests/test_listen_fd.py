"""An inherited listening socket: ``hbloop serve --fd N`` and systemd's socket activation
(``hbloop.net.sockets.adopt_listener`` and ``systemd_listen_fd``).

Whoever passes the socket keeps it listening, so a full restart refuses no connect:
the ones made while no server runs wait in its backlog for the next server."""

from __future__ import annotations

import os
import shutil
import signal
import socket

import pytest

from hbloop.core.wire import FrameType
from hbloop.net.sockets import SD_LISTEN_FDS_START, adopt_listener, systemd_listen_fd

from conftest import HBLOOP, LoggedProcess, RawPeer

# Long enough that the peers below, which never PING, outlive every test.
SLOW = ("--interval", "5", "--timeout", "15")


def test_socket_activation_is_read_from_the_environment_and_removed() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "hbloop"}
    assert systemd_listen_fd(env) == SD_LISTEN_FDS_START
    assert env == {}  # so that no worker or other child takes the sockets as its own


def test_sockets_passed_to_another_process_are_not_taken() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert systemd_listen_fd(env) is None
    assert env == {}
    assert systemd_listen_fd({}) is None


def test_more_than_one_activated_socket_is_refused() -> None:
    with pytest.raises(ValueError, match="LISTEN_FDS=2 sockets; hbloop serves one"):
        systemd_listen_fd({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"})


def test_a_listening_socket_is_adopted_non_blocking() -> None:
    with socket.create_server(("127.0.0.1", 0)) as parent:
        adopted = adopt_listener(os.dup(parent.fileno()))
        try:
            assert not adopted.getblocking()
            assert adopted.getsockname() == parent.getsockname()
        finally:
            adopted.close()


def test_what_is_not_a_listening_tcp_socket_is_refused_by_descriptor() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match=rf"descriptor {bound.fileno()}: .* does not listen"):
            adopt_listener(bound.fileno())
        assert bound.fileno() >= 0  # refused, not taken: the caller's to close
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(ValueError, match="not a TCP socket"),
    ):
        adopt_listener(udp.fileno())
    read, write = os.pipe()
    try:
        with pytest.raises(ValueError, match=rf"descriptor {read}: .*socket"):
            adopt_listener(read)
    finally:
        os.close(read)
        os.close(write)


def test_serve_refuses_a_descriptor_that_is_not_a_listener() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        fd = bound.fileno()
        process = LoggedProcess([*HBLOOP, "serve", "--fd", str(fd)], pass_fds=(fd,))
        assert process.wait() == 1
        assert f"hbloop: error: --fd: descriptor {fd}: a TCP socket that does not listen" in (
            process.stderr
        )


def _welcomed(peer: RawPeer, name: str) -> bool:
    return peer.hello(name)[0] == FrameType.WELCOME


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_restart_on_an_inherited_socket_refuses_no_connect(serve, workers) -> None:
    """The socket is the test's, as systemd's would be: while no server runs, a
    connect still completes (the kernel queues it), and the next server welcomes it."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as held:
        fd = held.fileno()
        address = held.getsockname()
        argv = (*SLOW, "--workers", workers, "--fd", str(fd), "--drain-period", "0")
        argv += ("--host", "127.0.0.2")
        first = serve(*argv, pass_fds=(fd,))
        assert first.address == address  # the socket's, not --host and --port's
        for name in ("before", "between"):
            # "between": no server runs as it connects: queued, not refused.
            with RawPeer(address) as peer:
                server = first if name == "before" else serve(*argv, pass_fds=(fd,))
                assert _welcomed(peer, name)
                server.signal(signal.SIGTERM)
                assert peer.recv_until_eof()[-1][0] == FrameType.CLOSE
            assert server.wait() == 0


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="no systemd")
def test_systemd_socket_activation_passes_the_listener() -> None:
    """``systemd-socket-activate`` (systemd's own tool for socket units) listens and,
    at the first connection, starts the server with the socket as LISTEN_FDS."""
    with socket.socket() as probe:  # a free port for the tool to listen on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tool = ["systemd-socket-activate", "--listen", f"127.0.0.1:{port}"]
    process = LoggedProcess([*tool, *HBLOOP, "serve", *SLOW, "--log-level", "info"])
    try:
        process.wait_line(rf"Listening on 127\.0\.0\.1:{port} as {SD_LISTEN_FDS_START}\.")
        with RawPeer(("127.0.0.1", port)) as peer:
            assert _welcomed(peer, "activated")
        process.wait_line(rf"listening on 127\.0\.0\.1:{port} ")
    finally:
        process.proc.terminate()
        process.wait()

"""Operating-system plumbing: descriptor limits, listeners and socket options."""

from __future__ import annotations

import resource
import socket

from hbloop.core.policy import RESERVED_FDS, TcpKeepalive


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the new soft limit.

    Every connection is a descriptor; the default soft limit (often 1024) would cap
    the server long before memory or CPU do.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(fd_limit: int) -> int:
    """Connections the descriptor budget allows, keeping some back for the server."""
    return max(1, fd_limit - min(RESERVED_FDS, fd_limit // 2))


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port, not listening; raises OSError (EADDRINUSE, ...)
    as is."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def make_listener(host: str, port: int, backlog: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket; raises OSError (EADDRINUSE, ...) as is."""
    sock = bind_socket(host, port, reuse_port)
    try:
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def apply_tcp_options(
    sock: socket.socket, keepalive: TcpKeepalive | None, user_timeout: float | None
) -> None:
    """TCP_NODELAY always (a heartbeat must not wait for Nagle), keepalive and
    TCP_USER_TIMEOUT when configured."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive.idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive.interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.count)
    if user_timeout is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))

"""Operating-system plumbing: descriptor limits, listeners and socket options."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import MutableMapping

from hbloop.core.policy import RESERVED_FDS, TcpKeepalive


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the new soft limit.

    Every connection is a descriptor; the default soft limit (often 1024) would cap
    the server long before memory or CPU do.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = open_files_ceiling()
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def open_files_ceiling() -> int:
    """The open-files limit a process may raise itself to (raise_open_files_limit):
    the hard limit, or 2^20 where there is none."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)


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


# systemd's socket activation (sd_listen_fds(3), "File Descriptor Passing" in
# systemd.socket(5)): the sockets passed start at descriptor 3, LISTEN_FDS says how
# many there are and LISTEN_PID which process they are for (a child that inherited the
# environment must not take them as its own).
SD_LISTEN_FDS_START = 3
SD_ENVIRONMENT = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def systemd_listen_fd(environ: MutableMapping[str, str] | None = None) -> int | None:
    """The descriptor systemd's socket activation passed to this process, or None if
    it passed none. Its variables are removed from ``environ`` (``os.environ`` by
    default), as ``sd_listen_fds(1)`` does, so that no child process reads them.
    Raises ValueError if systemd passed more than one socket: hbloop serves one port."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for name in SD_ENVIRONMENT:
        env.pop(name, None)
    if pid != str(os.getpid()) or count is None:
        return None
    if count != "1":
        raise ValueError(
            f"socket activation passed LISTEN_FDS={count} sockets; hbloop serves one "
            "(give the socket unit a single ListenStream=)"
        )
    return SD_LISTEN_FDS_START


def adopt_listener(fd: int) -> socket.socket:
    """The listening TCP socket a parent passed as descriptor ``fd`` (systemd, a
    supervisor, ``--fd``), made non-blocking. Raises ValueError, naming the
    descriptor, if it is not one: closed, not a socket, not TCP, or not listening."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"descriptor {fd}: {exc.strerror or exc}") from None
    problem = None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        problem = "not a TCP socket"
    elif not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        problem = "a TCP socket that does not listen"
    if problem is not None:
        sock.detach()  # the descriptor stays the parent's to close
        raise ValueError(f"descriptor {fd}: {problem}")
    sock.setblocking(False)
    return sock


# Linux doubles the SO_SNDBUF value it is given ("to allow space for bookkeeping
# overhead", socket(7)) and reports the doubled figure; it counts each buffer's
# bookkeeping in it too, so the payload it holds stays below the doubled figure.
KERNEL_SNDBUF_FACTOR = 2


def send_buffer_request(max_pending: int) -> int:
    """The SO_SNDBUF to ask for so that the kernel's send buffer holds at most
    ``max_pending`` bytes: the same cap as the endpoint's own pending output.

    Linux clamps the request to ``net.core.wmem_max`` before doubling it (which can
    only lower the buffer) and raises it to its floor of about 4.5 KB, which still
    holds hundreds of 6-byte heartbeats.
    """
    return max_pending // KERNEL_SNDBUF_FACTOR


def apply_tcp_options(
    sock: socket.socket,
    max_pending: int,
    keepalive: TcpKeepalive | None = None,
    user_timeout: float | None = None,
) -> None:
    """Options for a connected socket, on either end. TCP_NODELAY always (a heartbeat
    must not wait for Nagle); a send buffer capped from ``max_pending`` always, so that
    a peer that stops reading holds at most ``max_pending`` in the kernel beside as
    much in the endpoint's own buffer (without the cap, Linux grows the buffer of a
    stalled connection up to ``net.ipv4.tcp_wmem``'s maximum, 4 MiB by default);
    keepalive and TCP_USER_TIMEOUT when configured."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_request(max_pending))
    if keepalive is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive.idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive.interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.count)
    if user_timeout is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))

"""The reference server: the same protocol on asyncio Protocols, or on uvloop.

``python -m bench.reference_server --loop asyncio|uvloop --interval I --timeout T
[--tls-cert FILE --tls-key FILE]`` prints ``listening on HOST:PORT`` once ready; with
a certificate it serves TLS through the loop's own TLS transport (the same
``hbloop.net.tls.server_context`` as ``hbloop serve``). It runs hbloop's sans-IO session
(``hbloop.core.session``, which decodes too), so a comparison with ``hbloop serve``
measures the event loop and transport, not the protocol code: the same handshake, PING/PONG,
timeouts, CLOSE and ERROR, with every HELLO admitted (no connection limit).

Liveness is written the way asyncio servers usually write it (uvicorn's keep-alive
timer, for one): every read cancels the peer's timer and ``call_at``s a new one for
the session's next deadline. That is what a straightforward asyncio server costs;
hbloop instead re-arms lazily, about once per timeout (see hbloop/net/channel.py). On
uvloop the same code is cheap, since its timers are libuv's, in C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hbloop.core.policy import DEFAULT_BACKLOG, ServerPolicy
from hbloop.core.session import (
    FOREVER,
    Closed,
    Grant,
    HelloReceived,
    Role,
    Session,
    SessionConfig,
    State,
    Step,
)
from hbloop.net.sockets import raise_open_files_limit
from hbloop.net.tls import server_context

LOOPS = ("asyncio", "uvloop")


class HeartbeatProtocol(asyncio.Protocol):
    """One peer: the transport's bytes into the session."""

    __slots__ = ("server", "transport", "session", "deadline")

    def __init__(self, server: ReferenceServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session = Session.server(server.config, server.loop.time())
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rearm()

    def data_received(self, data: bytes) -> None:
        session = self.session
        now = self.server.loop.time()
        self._apply(session.receive_data(data, now))
        while session.paused:  # a share of frames at a time: serve the rest now
            self._apply(session.receive_data(b"", now))

    def eof_received(self) -> bool:
        self._apply(self.session.eof_received(self.server.loop.time()))
        return False

    def _apply(self, step: Step) -> None:
        out, events = step
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(out)
        for event in events:
            if isinstance(event, HelloReceived):
                grant = self.server.grant_for(event.hello.interval_ms)
                self._apply(self.session.accept(grant, self.server.loop.time()))
            elif isinstance(event, Closed) and self.session.state is State.CLOSED:
                transport.close()
        if self.session.state is State.CLOSING and not transport.is_closing():
            transport.close()  # flushes the last frame first
        self._rearm()

    def _rearm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        due = self.session.next_deadline()
        if due != FOREVER and self.transport is not None:
            self.deadline = self.server.loop.call_at(due, self.on_deadline)

    def on_deadline(self) -> None:
        self.deadline = None
        self._apply(self.session.deadline_reached(self.server.loop.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.deadline is not None:
            self.deadline.cancel()


class ReferenceServer:
    """What the peers share: the policy, the session configuration, the grants."""

    def __init__(self, policy: ServerPolicy, loop: asyncio.AbstractEventLoop) -> None:
        self.policy = policy
        self.loop = loop
        self.config = SessionConfig(
            Role.SERVER,
            handshake_timeout=policy.handshake_timeout,
            ping_strikes=policy.ping_strikes,
            linger=policy.linger,
            max_payload=policy.max_payload,
        )
        self._grants: dict[int, Grant] = {}

    def grant_for(self, requested_ms: int) -> Grant:
        grant = self._grants.get(requested_ms)
        if grant is None:
            grant = self._grants[requested_ms] = Grant(
                self.policy.scheme, *self.policy.grant(requested_ms)
            )
        return grant


async def serve(
    policy: ServerPolicy, host: str, port: int, tls: ssl.SSLContext | None = None
) -> None:
    loop = asyncio.get_running_loop()
    shared = ReferenceServer(policy, loop)
    server = await loop.create_server(
        lambda: HeartbeatProtocol(shared), host, port, backlog=DEFAULT_BACKLOG, ssl=tls
    )
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stopped = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set_result, None)
    async with server:
        await stopped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.reference_server")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, required=True, help="granted interval, s")
    parser.add_argument("--timeout", type=float, required=True, help="peer timeout, s")
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve TLS: PEM chain")
    parser.add_argument("--tls-key", type=Path, default=None, help="the key of --tls-cert")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        policy = ServerPolicy(
            interval=args.interval,
            timeout=args.timeout,
            min_interval=min(args.interval, ServerPolicy.min_interval),
            max_interval=max(args.interval, ServerPolicy.max_interval),
        )
    except ValueError as exc:
        print(f"reference server: {exc}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    runner: Callable[[Coroutine[Any, Any, None]], None]
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            print(f"reference server: uvloop is not installed ({exc})", file=sys.stderr)
            return 2
        runner = uvloop.run
    else:
        runner = asyncio.run
    tls = None if args.tls_cert is None else server_context(args.tls_cert, args.tls_key)
    runner(serve(policy, args.host, args.port, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())

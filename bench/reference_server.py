"""The reference server: the same protocol subset on asyncio Protocols, or on uvloop.

``python -m bench.reference_server --loop asyncio|uvloop --interval I --timeout T``
prints ``listening on HOST:PORT`` once ready. It shares hbloop's sans-IO decoder and
wire encoders, so a comparison with ``hbloop serve`` measures the event loop and
transport, not the parsing. Subset: HELLO -> WELCOME (client pings), PING -> PONG,
PONG and DATA accepted as signs of life, CLOSE ends the connection, a peer silent
for the timeout gets CLOSE TIMEOUT, anything malformed gets ERROR.

Liveness is written the way asyncio servers usually write it (uvicorn's keep-alive
timer, for one): every frame cancels the peer's timer and ``call_later``s a new one.
That is what a straightforward asyncio server costs; hbloop instead re-arms lazily,
about once per timeout (see hbloop/server.py). On uvloop the same code is cheap,
since its timers are libuv's, in C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

from hbloop.netutil import raise_open_files_limit
from hbloop.policy import DEFAULT_BACKLOG, ServerPolicy
from hbloop.protocol import (
    FrameDecoder,
    RemoteProtocolError,
    check_before_hello,
    parse_hello,
)
from hbloop.wire import (
    DEFAULT_MAX_PAYLOAD,
    PONG_FRAME,
    PROTOCOL_VERSION,
    T_CLOSE,
    T_DATA,
    T_PING,
    T_PONG,
    Code,
    FrameType,
    Scheme,
    Welcome,
    encode_close,
    encode_error,
    encode_welcome,
)

LOOPS = ("asyncio", "uvloop")


class HeartbeatProtocol(asyncio.Protocol):
    """One peer."""

    __slots__ = ("policy", "loop", "transport", "decoder", "open", "timeout", "deadline")

    def __init__(self, policy: ServerPolicy, loop: asyncio.AbstractEventLoop) -> None:
        self.policy = policy
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        self.open = False
        self.timeout = policy.handshake_timeout
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rearm()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            frames = self.decoder.feed(data)
            if frames:
                self._rearm()
            for ftype, payload in frames:
                if ftype == T_PING and self.open:
                    transport.write(PONG_FRAME)
                elif ftype in (T_PONG, T_DATA) and self.open:
                    pass
                elif ftype == T_CLOSE:
                    transport.close()
                    return
                elif not self.open:
                    self._handshake(ftype, payload)
                else:
                    raise RemoteProtocolError(
                        Code.UNEXPECTED_FRAME, f"{FrameType(ftype).name} is not in the subset"
                    )
        except RemoteProtocolError as exc:
            transport.write(encode_error(exc.code, exc.message))
            transport.close()

    def _handshake(self, ftype: int, payload: bytes) -> None:
        check_before_hello(ftype)
        hello = parse_hello(payload)
        interval_ms, timeout_ms = self.policy.grant(hello.interval_ms)
        assert self.transport is not None
        self.transport.write(
            encode_welcome(Welcome(PROTOCOL_VERSION, Scheme.CLIENT, interval_ms, timeout_ms))
        )
        self.open = True
        self.timeout = timeout_ms / 1000
        self._rearm()

    def _rearm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(self.timeout, self.on_deadline)

    def on_deadline(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(encode_close(Code.TIMEOUT if self.open else Code.HANDSHAKE_TIMEOUT))
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.deadline is not None:
            self.deadline.cancel()


async def serve(policy: ServerPolicy, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HeartbeatProtocol(policy, loop), host, port, backlog=DEFAULT_BACKLOG
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
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            print(f"reference server: uvloop is not installed ({exc})", file=sys.stderr)
            return 2
        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(serve(policy, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``hbloop`` command: ``serve``, ``client``, ``check``, ``who`` and ``watch``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from hbloop import check as check_cases
from hbloop import presence_tools
from hbloop.client import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP
from hbloop.client_app import ClientApp
from hbloop.loop import EventLoop
from hbloop.metrics import MetricsEndpoint, Report
from hbloop.netutil import default_max_connections, raise_open_files_limit
from hbloop.policy import (
    DEFAULT_BACKLOG,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_MAX_PENDING,
    DEFAULT_MIN_INTERVAL,
    DEFAULT_PING_STRIKES,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_TIMEOUT,
    ServerPolicy,
    TcpKeepalive,
)
from hbloop.presence import (
    DEFAULT_NODE_TTL,
    DEFAULT_PREFIX,
    DEFAULT_REAP_INTERVAL,
    Node,
    Policy,
    Presence,
    PresenceConfig,
)
from hbloop.protocol import ProtocolError
from hbloop.redis_link import RedisAddress, parse_url
from hbloop.server import Peer, Server
from hbloop.stats import StatsReporter
from hbloop.supervisor import Supervisor, WorkerLink
from hbloop.wire import DEFAULT_MAX_PAYLOAD, Scheme

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878
LOG_LEVELS = ("debug", "info", "warning", "error")

# A stats line a minute: enough to follow a server's life in its log without
# drowning the connect and disconnect lines.
DEFAULT_STATS_INTERVAL = 60.0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _seconds(text: str, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"{text!r} must be {'>= 0' if allow_zero else '> 0'}")
    return value


def _positive(text: str) -> float:
    return _seconds(text, allow_zero=False)


def _non_negative(text: str) -> float:
    return _seconds(text, allow_zero=True)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _workers(text: str) -> int:
    return len(os.sched_getaffinity(0)) if text == "auto" else _count(text)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 0-65535")
    return value


def _keepalive(text: str) -> TcpKeepalive:
    try:
        idle, interval, count = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected IDLE,INTERVAL,COUNT, e.g. 60,10,5") from None
    if min(idle, interval, count) < 1:
        raise argparse.ArgumentTypeError("keepalive values must be at least 1")
    return TcpKeepalive(idle, interval, count)


def _redis_url(text: str) -> RedisAddress:
    try:
        return parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_redis(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--redis",
        type=_redis_url,
        required=required,
        default=None,
        metavar="URL",
        help="Redis for cluster-wide presence: redis://host:port/db or unix:///path?db=N",
    )
    parser.add_argument(
        "--redis-prefix",
        default=DEFAULT_PREFIX,
        metavar="P",
        help="prefix of every presence key, so that clusters can share a Redis",
    )


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS, help="log verbosity")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hbloop", description="TCP heartbeat server and client.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser(
        "serve",
        help="run a heartbeat server that echoes DATA",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP port (0: any free)")
    serve.add_argument(
        "--interval",
        type=_positive,
        default=DEFAULT_INTERVAL,
        help="heartbeat interval granted to clients that ask for the default, s",
    )
    serve.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        help="silence after which a peer is closed, s; must be >= 2x --interval; "
        "clients granted another interval get the same timeout/interval ratio",
    )
    serve.add_argument(
        "--scheme",
        choices=[s.name.lower() for s in Scheme],
        default="client",
        help="who sends PINGs: the client (server answers) or the server",
    )
    serve.add_argument(
        "--max-connections",
        type=_count,
        default=None,
        help="handshaken connections allowed (default: from the open-files limit)",
    )
    serve.add_argument(
        "--min-interval",
        type=_positive,
        default=DEFAULT_MIN_INTERVAL,
        help="smallest interval granted, s",
    )
    serve.add_argument(
        "--max-interval",
        type=_positive,
        default=DEFAULT_MAX_INTERVAL,
        help="largest interval granted, s",
    )
    serve.add_argument(
        "--handshake-timeout",
        type=_positive,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        help="time a new connection has to send HELLO, s",
    )
    serve.add_argument(
        "--max-frame",
        type=_count,
        default=DEFAULT_MAX_PAYLOAD,
        help="largest frame payload accepted, bytes",
    )
    serve.add_argument(
        "--max-pending",
        type=_count,
        default=DEFAULT_MAX_PENDING,
        help="unsent output per connection before it is closed as a slow consumer, bytes",
    )
    serve.add_argument(
        "--ping-strikes",
        type=_count,
        default=DEFAULT_PING_STRIKES,
        help="PINGs in a row sooner than half the interval before TOO_MANY_PINGS",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_non_negative,
        default=DEFAULT_SHUTDOWN_GRACE,
        help="time to flush output on SIGTERM/SIGINT, s",
    )
    serve.add_argument(
        "--tcp-keepalive",
        type=_keepalive,
        default=None,
        metavar="IDLE,INTVL,CNT",
        help="enable TCP keepalive probes (a supplement to heartbeats)",
    )
    serve.add_argument(
        "--tcp-user-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="TCP_USER_TIMEOUT: close when sent data stays unacknowledged this long",
    )
    serve.add_argument(
        "--coalesce",
        type=_non_negative,
        default=0.0,
        metavar="MS",
        help="after a quiet wake-up, let events gather this many milliseconds before "
        "polling again: less CPU per heartbeat for up to MS more latency (0: off)",
    )
    serve.add_argument("--backlog", type=_count, default=DEFAULT_BACKLOG, help="listen backlog")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="worker processes sharing the port with SO_REUSEPORT (auto: one per CPU)",
    )
    serve.add_argument(
        "--stats-interval",
        type=_non_negative,
        default=DEFAULT_STATS_INTERVAL,
        metavar="S",
        help="log a statistics line every S seconds (0: never)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="P",
        help="serve Prometheus metrics at http://METRICS_HOST:P/metrics (0: any free port)",
    )
    serve.add_argument("--metrics-host", default=DEFAULT_HOST, help="address for --metrics-port")
    _add_redis(serve, required=False)
    serve.add_argument(
        "--node-id",
        default=None,
        metavar="ID",
        help="this server's name in presence (default: HOST:PID); the start time is "
        "appended, and /wN for each worker",
    )
    serve.add_argument(
        "--on-duplicate",
        choices=[p.value for p in Policy],
        default=Policy.ALLOW.value,
        help="a name already online connects again: allow both, refuse the newcomer "
        "(ERROR NAME_TAKEN) or replace the older (CLOSE TAKEN_OVER); needs --redis",
    )
    serve.add_argument(
        "--node-ttl",
        type=_positive,
        default=DEFAULT_NODE_TTL,
        metavar="S",
        help="lifetime of this node's liveness key, refreshed every third of it",
    )
    serve.add_argument(
        "--reap-interval",
        type=_positive,
        default=DEFAULT_REAP_INTERVAL,
        metavar="S",
        help="how often this node removes the members of nodes whose key expired",
    )
    _add_log_level(serve, "info")
    serve.set_defaults(run=run_serve)

    client = commands.add_parser(
        "client",
        help="connect, heartbeat, send stdin lines as DATA and print what comes back",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    client.add_argument("--host", default=DEFAULT_HOST, help="server address")
    client.add_argument("--port", type=_port, default=DEFAULT_PORT, help="server port")
    client.add_argument(
        "-n",
        "--name",
        default=f"client-{os.getpid()}",
        help="this client's name (1-64 UTF-8 bytes)",
    )
    client.add_argument(
        "--interval",
        type=_non_negative,
        default=0.0,
        help="heartbeat interval to ask for, s (0: the server's default)",
    )
    client.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit when the connection ends instead of reconnecting",
    )
    client.add_argument(
        "--backoff-base",
        type=_positive,
        default=DEFAULT_BACKOFF_BASE,
        help="reconnect back-off base, s (delays are drawn from 0..base*2^n)",
    )
    client.add_argument(
        "--backoff-max",
        type=_positive,
        default=DEFAULT_BACKOFF_CAP,
        help="reconnect back-off cap, s",
    )
    _add_log_level(client, "warning")
    client.set_defaults(run=run_client)

    check = commands.add_parser(
        "check",
        help="check that a server speaks protocol.md, case by case",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check.add_argument("target", type=_target, metavar="HOST:PORT", help="server to check")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--interval",
        type=_positive,
        default=check_cases.DEFAULT_INTERVAL,
        help="interval to ask for in the liveness cases, s",
    )
    check.add_argument(
        "--max-wait",
        type=_positive,
        default=check_cases.DEFAULT_MAX_WAIT,
        help="skip time-based cases that would take longer than this, s",
    )
    check.add_argument(
        "--handshake-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="the server's handshake deadline; the H5 case is skipped without it",
    )
    check.add_argument(
        "--duplicates",
        choices=check_cases.DUPLICATE_POLICIES,
        default=None,
        help="the server's duplicate-name policy; the P1 or P2 case is skipped without it",
    )
    check.set_defaults(run=run_check)

    who = commands.add_parser(
        "who",
        help="who is online across the servers sharing a Redis (or where NAME is)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    who.add_argument("name", nargs="?", default=None, metavar="NAME", help="one name only")
    _add_redis(who, required=True)
    who.add_argument("--json", action="store_true", help="print JSON")
    who.set_defaults(run=run_who)

    watch = commands.add_parser(
        "watch",
        help="print join and leave events as they happen",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_redis(watch, required=True)
    watch.add_argument(
        "--from",
        dest="start",
        default="$",
        metavar="ID",
        help="print the events after this stream id ($: from now on, 0: all kept)",
    )
    watch.add_argument(
        "--count", type=_count, default=None, metavar="N", help="exit after N events"
    )
    watch.add_argument("--json", action="store_true", help="one JSON object a line")
    watch.set_defaults(run=run_watch)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str) -> int:
    print(f"hbloop: error: {message}", file=sys.stderr)
    return 1


def policy_from_args(args: argparse.Namespace, fd_limit: int) -> ServerPolicy:
    max_connections = args.max_connections or default_max_connections(fd_limit)
    return ServerPolicy(
        interval=args.interval,
        timeout=args.timeout,
        scheme=Scheme[args.scheme.upper()],
        min_interval=min(args.min_interval, args.interval),
        max_interval=max(args.max_interval, args.interval),
        handshake_timeout=args.handshake_timeout,
        max_connections=max_connections,
        max_payload=args.max_frame,
        max_pending=max(args.max_pending, args.max_frame),
        ping_strikes=args.ping_strikes,
        shutdown_grace=args.shutdown_grace,
        tcp_keepalive=args.tcp_keepalive,
        tcp_user_timeout=args.tcp_user_timeout,
    )


def echo(peer: Peer, data: bytes) -> None:
    """The bundled application: send every DATA frame back to its sender."""
    peer.send(data)


def run_serve(args: argparse.Namespace, worker: WorkerLink | None = None) -> int:
    """One server process, or the supervisor of ``--workers``, which calls this again
    in each worker process with ``worker`` set."""
    _setup_logging(args.log_level)
    fd_limit = raise_open_files_limit()
    try:
        policy = policy_from_args(args, fd_limit)
    except ValueError as exc:
        return _fail(str(exc))
    if args.on_duplicate != Policy.ALLOW.value and args.redis is None:
        return _fail("--on-duplicate needs --redis")
    if worker is None and args.workers > 1:
        return Supervisor(args, args.workers).run()
    port = args.port if worker is None else worker.port
    server = Server(
        args.host,
        port,
        policy,
        on_message=echo,
        loop=EventLoop(coalesce=args.coalesce / 1000),
        backlog=args.backlog,
        reuse_port=worker is not None,
    )
    try:
        host, port = server.start()
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}")
    log = logging.getLogger("hbloop.server")
    log.info(
        "%s %s:%d scheme=%s interval=%gs timeout=%gs max_connections=%d open_files=%d",
        "listening on" if worker is None else f"worker {worker.index} serving",
        host,
        port,
        policy.scheme.name.lower(),
        policy.interval,
        policy.timeout,
        policy.max_connections,
        fd_limit,
    )
    presence = None
    if args.redis is not None:
        presence = _start_presence(server, args, f"{host}:{port}", worker)
    try:
        reporter = _start_reporting(server, args, worker)
    except OSError as exc:
        return _fail(f"cannot serve metrics on port {args.metrics_port}: {exc.strerror or exc}")
    server.serve_forever()
    reporter.close()
    if presence is not None:
        presence.close()
    log.info("stopped")
    return 0


def _start_presence(
    server: Server, args: argparse.Namespace, address: str, worker: WorkerLink | None
) -> Presence:
    config = PresenceConfig(
        policy=Policy(args.on_duplicate),
        prefix=args.redis_prefix,
        node_ttl=args.node_ttl,
        reap_interval=args.reap_interval,
    )
    node = Node.make(args.node_id, address, None if worker is None else worker.index)
    presence = Presence(server.loop, args.redis, node, config)
    logging.getLogger("hbloop.presence").info(
        "presence: node %s on %s, duplicates: %s, stale members gone within %.1fs",
        node.id,
        args.redis,
        config.policy.value,
        config.stale_bound,
    )
    server.presence = presence
    presence.start()
    return presence


def _start_reporting(
    server: Server, args: argparse.Namespace, worker: WorkerLink | None
) -> StatsReporter:
    """The stats line; a worker's snapshots to its supervisor, or a lone server's
    /metrics."""
    presence = server.presence.snapshot if server.presence is not None else None
    if worker is not None:
        publish = worker.publisher(orphaned=server.shutdown)
        label = f"worker={worker.index} "
        return StatsReporter(
            server.loop, server.stats, args.stats_interval, publish, label, presence
        )
    reporter = StatsReporter(server.loop, server.stats, args.stats_interval, presence=presence)
    if args.metrics_port is not None:
        MetricsEndpoint(
            server.loop,
            args.metrics_host,
            args.metrics_port,
            lambda: Report.alone(reporter.snapshot()),
        )
    return reporter


def run_client(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    try:
        app = ClientApp(args)
    except ProtocolError as exc:
        return _fail(exc.message)
    return app.run()


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), _port(port)


def run_check(args: argparse.Namespace) -> int:
    host, port = args.target
    settings = check_cases.Settings(
        host, port, args.interval, args.max_wait, args.handshake_timeout, args.duplicates
    )
    try:
        report = check_cases.run_checks(settings)
    except OSError as exc:
        reason = exc.strerror or exc
        print(f"hbloop: error: cannot reach {settings.target}: {reason}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.conforms else 1


def run_who(args: argparse.Namespace) -> int:
    return presence_tools.who(args.redis, args.redis_prefix, args.name, args.json, sys.stdout)


def run_watch(args: argparse.Namespace) -> int:
    return presence_tools.watch(
        args.redis, args.redis_prefix, args.start, args.json, args.count, sys.stdout
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())

"""The ``hbloop`` command: ``serve``, ``client``, ``check``, ``who`` and ``watch``.

Exit codes, the same for every command: 0 success; 1 a failure at run time (a port
in use, a client whose connection ended for good, ``check``: a MUST failed); 2 a
usage or configuration error (a bad option, an inconsistent setting, a bad
``--config`` file; ``check``: the target is unreachable). Every error is one line on
stderr, ``hbloop: error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from hbloop import check as check_cases
from hbloop.auth import AuthConfigError, Authenticator, JwtKey, JwtVerifier
from hbloop.cli.client_app import ClientApp
from hbloop.cli.config import ConfigError, TomlTypes, option_defaults, option_names, read_table
from hbloop.core.backoff import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP
from hbloop.core.policy import (
    DEFAULT_BACKLOG,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_MAX_PEER_RATE,
    DEFAULT_MAX_PENDING,
    DEFAULT_MIN_INTERVAL,
    DEFAULT_PING_STRIKES,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_TIMEOUT,
    ServerPolicy,
    TcpKeepalive,
)
from hbloop.core.protocol import ProtocolError
from hbloop.core.version import __version__
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, Scheme
from hbloop.net.loop import EventLoop
from hbloop.net.sockets import default_max_connections, raise_open_files_limit
from hbloop.net.tls import (
    DEFAULT_HANDSHAKE_RATE,
    TlsConfigError,
    client_context,
    describe_ssl_error,
    server_context,
)
from hbloop.ops import logs
from hbloop.ops.metrics import Report, StartError, serve_metrics
from hbloop.ops.stats import StatsReporter
from hbloop.ops.supervisor import Supervisor, WorkerLink
from hbloop.presence import tools as presence_tools
from hbloop.presence.node import (
    DEFAULT_NODE_TTL,
    DEFAULT_PREFIX,
    DEFAULT_REAP_INTERVAL,
    DEFAULT_STREAM_RETENTION,
    DEFAULT_TAKEOVER_BACKOFF,
    DEFAULT_TAKEOVER_LIMIT,
    DEFAULT_TAKEOVER_WINDOW,
    Node,
    Policy,
    Presence,
    PresenceConfig,
)
from hbloop.presence.redis_link import RedisAddress, parse_url
from hbloop.server import Peer, Server

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878

EXIT_OK = 0
EXIT_FAILURE = 1  # at run time: a port in use, a connection that ended for good
EXIT_USAGE = 2  # a bad option or config file, an inconsistent setting

# Settings that SIGHUP applies to a running process in place; any other change
# needs new processes (a restart, or with --workers the rolling restart SIGHUP does).
LIVE_OPTIONS = ("log_level", "log_format")

log = logging.getLogger("hbloop.cli")

# A stats line a minute: enough to follow a server's life in its log without
# drowning the connect and disconnect lines.
DEFAULT_STATS_INTERVAL = 60.0

# Where `hbloop client` and `hbloop check` find a HELLO token when no --token-file is
# given: a command line would show it to everyone running `ps`.
TOKEN_ENV = "HBLOOP_TOKEN"


class UsageError(Exception):
    """A bad option or an inconsistent setting: exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2; or, with
    ``raise_errors`` (a SIGHUP reload, which logs it and carries on), UsageError."""

    commands: Mapping[str, _Parser]  # the subcommands' parsers, by name
    raise_errors = False

    def error(self, message: str) -> NoReturn:
        message = f"{message} (see {self.prog} --help)"
        if self.raise_errors:
            raise UsageError(message)
        self.exit(EXIT_USAGE, f"hbloop: error: {message}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, or a
    flag's False), which would read "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


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


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
    return value


def _count(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_count(text: str) -> int:
    return _whole_number(text, 0)


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


def _add_common(parser: argparse.ArgumentParser, log_level: str) -> None:
    """--config, --log-level, --log-format and -v."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file of options (keys: the long options, e.g. max-connections = 20000); "
        "options given here override it",
    )
    parser.add_argument(
        "--log-level", default=log_level, choices=logs.LOG_LEVELS, help="log verbosity"
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=logs.LOG_FORMATS,
        help="log lines as text or as JSON objects (time, level, logger, message, fields)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every frame in and out (direction, peer, type, length, code; never a "
        "payload) at debug level; implies --log-level debug",
    )


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


# The TOML types a config file may give for an option, by its conversion function.
_TOML_TYPES: TomlTypes = {
    _port: (int,),
    _count: (int,),
    _positive: (int, float),
    _non_negative: (int, float),
    _workers: (int, str),
    _keepalive: (str,),
}


def build_parser(raise_errors: bool = False) -> _Parser:
    parser = _Parser(
        prog="hbloop",
        description="TCP heartbeat server and client.",
        epilog="Exit codes: 0 success, 1 failure at run time, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"hbloop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.commands = commands.choices

    serve = commands.add_parser(
        "serve",
        help="run a heartbeat server that echoes DATA",
        formatter_class=_HelpFormatter,
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
        help="handshaken connections allowed (default: the open-files limit less 64)",
    )
    serve.add_argument(
        "--min-interval",
        type=_positive,
        default=DEFAULT_MIN_INTERVAL,
        help="smallest interval granted, s (at most --interval)",
    )
    serve.add_argument(
        "--max-interval",
        type=_positive,
        default=DEFAULT_MAX_INTERVAL,
        help="largest interval granted, s (at least --interval)",
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
        "--max-peer-rate",
        type=_non_negative_count,
        default=DEFAULT_MAX_PEER_RATE,
        metavar="N",
        help="PONG and DATA frames a second one peer may send before the server stops "
        "reading from it for the rest of that second (0: no limit)",
    )
    serve.add_argument(
        "--max-handshakes",
        type=_count,
        default=DEFAULT_MAX_HANDSHAKES,
        metavar="N",
        help="connections still in their handshake at once; newcomers past it get "
        "ERROR SERVER_FULL at once",
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
    serve.add_argument(
        "--stream-retention",
        type=_positive,
        default=DEFAULT_STREAM_RETENTION,
        metavar="S",
        help="how long the event stream keeps events (hbloop watch --from ID)",
    )
    serve.add_argument(
        "--takeover-limit",
        type=_count,
        default=DEFAULT_TAKEOVER_LIMIT,
        metavar="N",
        help="a name taken over more than N times within --takeover-window is refused "
        "(NAME_TAKEN) for --takeover-backoff, doubled at each new burst",
    )
    serve.add_argument(
        "--takeover-window",
        type=_positive,
        default=DEFAULT_TAKEOVER_WINDOW,
        metavar="S",
        help="the window in which --takeover-limit counts",
    )
    serve.add_argument(
        "--takeover-backoff",
        type=_positive,
        default=DEFAULT_TAKEOVER_BACKOFF,
        metavar="S",
        help="how long a name over --takeover-limit is refused at first",
    )
    _add_server_security(serve)
    _add_common(serve, log_level="info")
    serve.set_defaults(run=run_serve)

    client = commands.add_parser(
        "client",
        help="connect, heartbeat, send stdin lines as DATA and print what comes back",
        formatter_class=_HelpFormatter,
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
        help="reconnect back-off cap, s (at least --backoff-base)",
    )
    _add_client_security(client)
    _add_common(client, log_level="warning")
    client.set_defaults(run=run_client)

    check = commands.add_parser(
        "check",
        help="check that a server speaks protocol.md, case by case",
        formatter_class=_HelpFormatter,
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
        "--answer-timeout",
        type=_positive,
        default=check_cases.ANSWER_TIMEOUT,
        metavar="S",
        help="time the server has for an answer it owes at once; a case waits no longer",
    )
    check.add_argument(
        "--duplicates",
        choices=check_cases.DUPLICATE_POLICIES,
        default=None,
        help="the server's duplicate-name policy; the P1 or P2 case is skipped without it",
    )
    _add_client_security(check)
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
    for each in (parser, *parser.commands.values()):
        each.raise_errors = raise_errors
    return parser


def _file_option(group: argparse._ArgumentGroup, option: str, text: str) -> None:
    group.add_argument(option, type=Path, metavar="FILE", help=text)


def _add_server_security(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("TLS and authentication (off by default)")
    _file_option(group, "--tls-cert", "serve TLS with this certificate chain (PEM)")
    _file_option(group, "--tls-key", "the private key of --tls-cert (PEM)")
    _file_option(group, "--tls-client-ca", "require client certificates from these CAs (mTLS)")
    group.add_argument(
        "--tls-handshake-rate",
        type=_positive,
        default=DEFAULT_HANDSHAKE_RATE,
        metavar="N",
        help="new TLS handshakes a second per process; connections past it are closed at accept",
    )
    group.add_argument(
        "--auth-client-cert",
        action="store_true",
        help="HELLO's name must be the client certificate's subject CN (needs --tls-client-ca)",
    )
    _file_option(group, "--jwt-secret-file", "HELLO must carry a JWT signed HS256 with this secret")
    _file_option(
        group, "--jwt-public-key", "HELLO must carry a JWT signed ES256 or RS256 (PEM public key)"
    )
    group.add_argument("--jwt-audience", metavar="AUD", help="the 'aud' HELLO tokens must have")
    group.add_argument("--jwt-issuer", metavar="ISS", help="the 'iss' HELLO tokens must have")


def _add_client_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS and authentication")
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    _file_option(group, "--ca", "trust server certificates from these CAs (default: the system's)")
    _file_option(group, "--cert", "client certificate (PEM), for mutual TLS")
    _file_option(group, "--key", "the private key of --cert (PEM)")
    _file_option(group, "--token-file", f"send this token with HELLO (default: ${TOKEN_ENV})")


def server_security(
    args: argparse.Namespace,
) -> tuple[ssl.SSLContext | None, Authenticator | None]:
    """``hbloop serve``'s TLS context and authenticator, or None for each that is off;
    UsageError (one line) for options that do not fit together or unusable files."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    if args.auth_client_cert and args.tls_client_ca is None:
        raise UsageError("--auth-client-cert needs --tls-client-ca")
    if args.jwt_secret_file is not None and args.jwt_public_key is not None:
        raise UsageError("--jwt-secret-file and --jwt-public-key exclude each other")
    jwt_file = args.jwt_secret_file or args.jwt_public_key
    if jwt_file is None and (args.jwt_audience or args.jwt_issuer):
        raise UsageError(
            "--jwt-audience and --jwt-issuer need --jwt-secret-file or --jwt-public-key"
        )
    try:
        context = None
        if args.tls_cert is not None:
            context = server_context(args.tls_cert, args.tls_key, args.tls_client_ca)
        verifier = None
        if jwt_file is not None:
            key = (
                JwtKey.secret_file(jwt_file)
                if args.jwt_secret_file is not None
                else JwtKey.public_key_file(jwt_file)
            )
            verifier = JwtVerifier(key, audience=args.jwt_audience, issuer=args.jwt_issuer)
    except (TlsConfigError, AuthConfigError) as exc:
        raise UsageError(str(exc)) from None
    if verifier is None and not args.auth_client_cert:
        return context, None
    return context, Authenticator(jwt_verifier=verifier, certificate_names=args.auth_client_cert)


def client_security(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, str | None]:
    """``hbloop client``'s and ``check``'s TLS context (None without --tls) and HELLO
    token (from --token-file or $HBLOOP_TOKEN); UsageError if they cannot be had."""
    if not args.tls and (args.ca or args.cert or args.key):
        raise UsageError("--ca, --cert and --key need --tls")
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    context = None
    if args.tls:
        try:
            context = client_context(args.ca, args.cert, args.key)
        except TlsConfigError as exc:
            raise UsageError(str(exc)) from None
    if args.token_file is None:
        return context, os.environ.get(TOKEN_ENV) or None
    try:
        # One trailing newline, as an editor or `echo` leaves it, is not part of it.
        return context, args.token_file.read_text().removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise UsageError(f"cannot read token file {args.token_file}: {reason}") from None


def _error(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"hbloop: error: {message}", file=sys.stderr)
    return code


def parse_args(argv: Sequence[str] | None = None, raise_errors: bool = False) -> argparse.Namespace:
    """The settings of a command line, the options of its ``--config`` file serving as
    defaults. A bad option exits as ``build_parser(raise_errors)`` says; a bad file or
    an inconsistent setting raises ConfigError or UsageError. The command line is kept
    in the result (``command_line``) so that SIGHUP can parse it again."""
    command_line = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(raise_errors)
    args = parser.parse_args(command_line)
    if getattr(args, "config", None) is not None:
        command = parser.commands[args.command]
        table = read_table(args.config)
        command.set_defaults(**option_defaults(command, table, args.config, _TOML_TYPES))
        args = parser.parse_args(command_line)
    args.command_line = command_line
    if getattr(args, "verbose", False):
        args.log_level = "debug"  # the frame trace is logged at debug level
    if args.command == "client" and args.backoff_base > args.backoff_max:
        raise UsageError(
            f"--backoff-base {args.backoff_base:g}s is above --backoff-max {args.backoff_max:g}s"
        )
    if args.command == "serve" and args.on_duplicate != Policy.ALLOW.value and not args.redis:
        raise UsageError("--on-duplicate needs --redis")
    return args


def policy_from_args(args: argparse.Namespace, fd_limit: int) -> ServerPolicy:
    """The server policy of ``hbloop serve``'s settings; raises UsageError if they are
    inconsistent (nothing is silently widened to fit)."""
    try:
        return ServerPolicy(
            interval=args.interval,
            timeout=args.timeout,
            scheme=Scheme[args.scheme.upper()],
            min_interval=args.min_interval,
            max_interval=args.max_interval,
            handshake_timeout=args.handshake_timeout,
            max_connections=args.max_connections or default_max_connections(fd_limit),
            max_payload=args.max_frame,
            max_pending=args.max_pending,
            ping_strikes=args.ping_strikes,
            max_peer_rate=args.max_peer_rate,
            max_handshakes=args.max_handshakes,
            shutdown_grace=args.shutdown_grace,
            tcp_keepalive=args.tcp_keepalive,
            tcp_user_timeout=args.tcp_user_timeout,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def changed_settings(old: argparse.Namespace, new: argparse.Namespace) -> list[str]:
    """The settings (argparse ``dest``s) whose values differ."""
    return [
        dest
        for dest, value in vars(new).items()
        if dest not in ("run", "command_line") and getattr(old, dest, None) != value
    ]


def reload_settings(current: argparse.Namespace) -> argparse.Namespace | None:
    """SIGHUP: ``current``'s command line parsed again with its ``--config`` file
    re-read, and checked as at start-up. The log settings take effect at once; the
    caller applies the rest as it can. None, with an error logged, if the new settings
    are bad: the process then carries on as it was."""
    try:
        new = parse_args(current.command_line, raise_errors=True)
        policy_from_args(new, raise_open_files_limit())
        server_security(new)
    except (UsageError, ConfigError) as exc:
        log.error("SIGHUP: %s; nothing changed", exc)
        return None
    logs.configure(new.log_level, new.log_format)
    log.info(
        "SIGHUP: settings reloaded from %s: log-level %s, log-format %s",
        new.config or "the command line",
        new.log_level,
        new.log_format,
    )
    return new


def echo(peer: Peer, data: bytes) -> None:
    """The bundled application: send every DATA frame back to its sender."""
    peer.send(data)


class _Signals:
    """A lone server's (or a worker's) signals. SIGINT and SIGTERM shut it down
    gracefully (a second one at once); SIGHUP re-reads the settings and applies the
    log level and format in place, logging which other changes need a restart."""

    def __init__(self, server: Server, args: argparse.Namespace) -> None:
        self.server = server
        self.args = args
        self.serving = True
        for signum in (signal.SIGINT, signal.SIGTERM):
            server.loop.add_signal_handler(signum, self.stop)
        server.loop.add_signal_handler(signal.SIGHUP, self.reload)

    def stop(self) -> None:
        self.serving = False
        self.server.shutdown()

    def reload(self) -> None:
        new = reload_settings(self.args)
        if new is None:
            return
        pending = [d for d in changed_settings(self.args, new) if d not in LIVE_OPTIONS]
        for dest in LIVE_OPTIONS:
            setattr(self.args, dest, getattr(new, dest))
        if pending:
            log.warning(
                "SIGHUP: %s changed; a restart applies it (with --workers, SIGHUP to the "
                "supervisor restarts the workers one by one)",
                option_names(pending),
            )


def run_serve(args: argparse.Namespace, worker: WorkerLink | None = None) -> int:
    """One server process, or the supervisor of ``--workers``, which calls this again
    in each worker process with ``worker`` set."""
    logs.configure(args.log_level, args.log_format)
    fd_limit = raise_open_files_limit()
    policy = policy_from_args(args, fd_limit)
    tls_context, authenticator = server_security(args)
    if worker is None and args.workers > 1:
        supervisor = Supervisor(args, args.workers, reload_settings)
        try:
            supervisor.start()
        except StartError as exc:
            return _error(str(exc))
        return supervisor.run()
    port = args.port if worker is None else worker.port
    server = Server(
        args.host,
        port,
        policy,
        on_message=echo,
        loop=EventLoop(coalesce=args.coalesce / 1000),
        backlog=args.backlog,
        reuse_port=worker is not None,
        tls_context=tls_context,
        tls_handshake_rate=args.tls_handshake_rate,
        authenticator=authenticator,
        trace=args.verbose,
    )
    try:
        host, port = server.start()
    except OSError as exc:
        return _error(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}")
    server_log = logging.getLogger("hbloop.server")
    server_log.info(
        "%s %s:%d%s scheme=%s interval=%gs timeout=%gs max_connections=%d open_files=%d",
        "listening on" if worker is None else f"worker {worker.index} serving",
        host,
        port,
        "" if tls_context is None else " tls",
        policy.scheme.name.lower(),
        policy.interval,
        policy.timeout,
        policy.max_connections,
        fd_limit,
    )
    signals = _Signals(server, args)
    presence = None
    if args.redis is not None:
        presence = _start_presence(server, args, f"{host}:{port}", worker)
    try:
        reporter = _start_reporting(server, args, worker, signals, presence)
    except StartError as exc:
        return _error(str(exc))
    server.serve_forever(install_signal_handlers=False)
    reporter.close()
    if presence is not None:
        presence.close()
    server_log.info("stopped")
    return EXIT_OK


def _start_presence(
    server: Server, args: argparse.Namespace, address: str, worker: WorkerLink | None
) -> Presence:
    config = PresenceConfig(
        policy=Policy(args.on_duplicate),
        prefix=args.redis_prefix,
        node_ttl=args.node_ttl,
        reap_interval=args.reap_interval,
        stream_retention=args.stream_retention,
        takeover_limit=args.takeover_limit,
        takeover_window=args.takeover_window,
        takeover_backoff=args.takeover_backoff,
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
    server: Server,
    args: argparse.Namespace,
    worker: WorkerLink | None,
    signals: _Signals,
    node: Presence | None,
) -> StatsReporter:
    """The stats line; a worker's snapshots to its supervisor, or a lone server's
    /metrics."""
    presence = node.snapshot if node is not None else None
    if worker is not None:
        publish = worker.publisher(orphaned=server.shutdown)
        label = f"worker={worker.index} "
        return StatsReporter(
            server.loop, server.stats, args.stats_interval, publish, label, presence
        )
    reporter = StatsReporter(server.loop, server.stats, args.stats_interval, presence=presence)
    if args.metrics_port is not None:
        serve_metrics(
            server.loop,
            args.metrics_host,
            args.metrics_port,
            lambda: Report.alone(reporter.snapshot(), signals.serving),
        )
    return reporter


def run_client(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    try:
        app = ClientApp(args, *client_security(args))
    except ProtocolError as exc:
        raise UsageError(exc.message) from None
    return app.run()


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), _port(port)


# `hbloop check`'s documented exit code for a target it cannot reach.
CHECK_UNREACHABLE = 2


def run_check(args: argparse.Namespace) -> int:
    host, port = args.target
    tls, token = client_security(args)
    if token is not None and args.duplicates not in (None, "allow"):
        raise UsageError(
            "--duplicates needs probes with names of their own, and a token binds them "
            f"to one ({check_cases.CHECK_NAME})"
        )
    settings = check_cases.Settings(
        host,
        port,
        args.interval,
        args.max_wait,
        args.handshake_timeout,
        answer_timeout=args.answer_timeout,
        duplicates=args.duplicates,
        tls=tls,
        token=token,
    )
    try:
        report = check_cases.run_checks(settings)
    except ssl.SSLError as exc:
        failure = describe_ssl_error(exc)
        return _error(f"TLS with {settings.target} failed: {failure}", CHECK_UNREACHABLE)
    except OSError as exc:
        reason = exc.strerror or exc
        return _error(f"cannot reach {settings.target}: {reason}", CHECK_UNREACHABLE)
    print(report.to_json() if args.json else report.to_text())
    return EXIT_OK if report.conforms else EXIT_FAILURE


def run_who(args: argparse.Namespace) -> int:
    return presence_tools.who(args.redis, args.redis_prefix, args.name, args.json, sys.stdout)


def run_watch(args: argparse.Namespace) -> int:
    return presence_tools.watch(
        args.redis, args.redis_prefix, args.start, args.json, args.count, sys.stdout
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        return int(args.run(args))
    except (UsageError, ConfigError) as exc:
        return _error(str(exc), EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())

"""Typed settings at the CLI boundary: one frozen dataclass per command.

Each field that is an option declares its flag and config key, its kind (type and
range) and its help at once (``hbloop.cli.options``); defaults are the library's own
constants, so each is defined once. A value out of range never gets this far: the
parser and the config reader refuse it. What no single value can say (the interval
within its bounds, TLS options that need each other) is checked by ``__post_init__``,
so a settings object that exists is consistent. The objects pickle, which is how the
supervisor hands them to its workers.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hbloop.cli.errors import UsageError
from hbloop.cli.options import (
    AUTO_WORKERS,
    MAX_AUTO_WORKERS,
    MAX_COUNT,
    CaseName,
    Choice,
    Count,
    File,
    Flag,
    Keepalive,
    Number,
    Port,
    RedisUrl,
    Target,
    Text,
    Words,
    Workers,
    option,
    repeated,
    required,
    table,
    words,
)
from hbloop.core.backoff import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP
from hbloop.core.policy import (
    CHECK_ANSWER_TIMEOUT,
    CHECK_CLIENT_HANDSHAKE_TIMEOUT,
    CHECK_CLIENT_QUIET_WINDOW,
    CHECK_CLIENT_START_TIMEOUT,
    CHECK_DUPLICATE_POLICIES,
    CHECK_MAX_WAIT,
    CHECK_PROBE_INTERVAL,
    DEFAULT_BACKLOG,
    DEFAULT_DRAIN_PERIOD,
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
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, MIN_MAX_PAYLOAD, Scheme
from hbloop.net.acceptor import AdmissionLimits
from hbloop.net.gather import (
    COALESCE_MIN_GATHER,
    GATHER_BATCH,
    INTERVAL_SHARE,
    NATURAL_BATCH_RATE,
)
from hbloop.net.loop import EventLoop, paced_loop
from hbloop.net.sockets import default_max_connections, open_files_ceiling
from hbloop.net.tls import DEFAULT_HANDSHAKE_RATE
from hbloop.ops.logs import LOG_FORMATS, LOG_LEVELS
from hbloop.presence.node import (
    DEFAULT_NODE_TTL,
    DEFAULT_PREFIX,
    DEFAULT_REAP_INTERVAL,
    DEFAULT_STREAM_RETENTION,
    DEFAULT_TAKEOVER_BACKOFF,
    DEFAULT_TAKEOVER_LIMIT,
    DEFAULT_TAKEOVER_WINDOW,
    Policy,
)
from hbloop.presence.redis_link import RedisAddress

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878

# A stats line a minute: enough to follow a server's life in its log without
# drowning the connect and disconnect lines.
DEFAULT_STATS_INTERVAL = 60.0

# --coalesce is in milliseconds, the loop's bound in seconds.
MS_PER_S = 1000

# The --help headings of options shared by several commands.
TLS_CLIENT = "TLS and authentication"
TLS_SERVER = "TLS and authentication (off by default)"
# --auth-expiry: closing when a token expires is what a credential's lifetime means;
# "ignore" keeps the checks at HELLO and AUTH only, for fleets without re-auth yet.
AUTH_EXPIRY_CLOSE = "close"
AUTH_EXPIRY_POLICIES = (AUTH_EXPIRY_CLOSE, "ignore")
PRESENCE = "presence across servers (Redis)"
COMMON = "config file and logs"

REDIS_HELP = "Redis for cluster-wide presence: redis://host:port/db or unix:///path?db=N"
PREFIX_HELP = "prefix of every presence key, so that clusters can share a Redis"
JSON_HELP = "print JSON"


def flags(fields: Sequence[str]) -> str:
    """Settings fields as the flags that set them: ``--max-connections, --port``."""
    return ", ".join("--" + field.replace("_", "-") for field in fields)


def changed(old: Settings, new: Settings) -> list[str]:
    """The options (field names) whose values differ between ``old`` and ``new``."""
    return [
        entry.field
        for entry in table(type(new))
        if getattr(old, entry.field) != getattr(new, entry.field)
    ]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What every command has: the --config file, and the command line (kept so that
    SIGHUP can read both again)."""

    command: ClassVar[str]  # the subcommand's name
    summary: ClassVar[str]  # its line in ``hbloop --help``

    config: Path | None = option(
        None,
        File(),
        "TOML file of options: its keys are the long options without '--' (e.g. {example}); "
        "options given here override it",
        in_file=False,
        group=COMMON,
    )
    command_line: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self) -> None:
        """Checks that need several fields; UsageError for the first that fails."""


def log_level(default: str) -> str:
    return option(default, words(LOG_LEVELS), "log verbosity", group=COMMON)


@dataclass(frozen=True, kw_only=True)
class LogSettings(Settings):
    log_level: str = log_level("info")
    log_format: str = option(
        "text",
        words(LOG_FORMATS),
        "log lines as text or as JSON objects (time, level, logger, message, fields)",
        group=COMMON,
    )
    verbose: bool = option(
        False,
        Flag(),
        "log every frame in and out (direction, peer, type, length, code; never a "
        "payload) at debug level; implies --log-level debug",
        short="-v",
        group=COMMON,
    )

    @property
    def level(self) -> str:
        """The log level in force: -v's frame trace is logged at debug level."""
        return "debug" if self.verbose else self.log_level


@dataclass(frozen=True, kw_only=True)
class ClientTlsSettings(Settings):
    """``hbloop client``'s and ``check``'s TLS and HELLO token."""

    tls: bool = option(False, Flag(), "connect with TLS", group=TLS_CLIENT)
    ca: Path | None = option(
        None,
        File(),
        "trust server certificates from these CAs (default: the system's)",
        group=TLS_CLIENT,
    )
    cert: Path | None = option(
        None, File(), "client certificate (PEM), for mutual TLS", group=TLS_CLIENT
    )
    key: Path | None = option(None, File(), "the private key of --cert (PEM)", group=TLS_CLIENT)
    token_file: Path | None = option(
        None, File(), "send this token with HELLO (default: $HBLOOP_TOKEN)", group=TLS_CLIENT
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tls and (self.ca or self.cert or self.key):
            raise UsageError("--ca, --cert and --key need --tls")
        if (self.cert is None) != (self.key is None):
            raise UsageError("--cert and --key go together")


# A rate limit, a second: 0 turns it off.
RATE = Number(inclusive=True, most=MAX_COUNT)


@dataclass(frozen=True, kw_only=True)
class ServeSettings(LogSettings):
    command = "serve"
    summary = "run a heartbeat server that echoes DATA"

    host: str = option(DEFAULT_HOST, Text(), "address to listen on", metavar="H")
    port: int = option(DEFAULT_PORT, Port(), "TCP port (0: any free)")
    fd: int | None = option(
        None,
        Count(least=0),
        "serve the listening TCP socket inherited as this descriptor instead of binding "
        "--host and --port, as uvicorn's --fd; systemd's socket activation (LISTEN_FDS) "
        "sets it by itself",
        in_file=False,
    )
    interval: float = option(
        DEFAULT_INTERVAL,
        Number(),
        "heartbeat interval granted to clients that ask for the default, s",
    )
    timeout: float = option(
        DEFAULT_TIMEOUT,
        Number(),
        "silence after which a peer is closed, s; must be >= 2x --interval; "
        "clients granted another interval get the same timeout/interval ratio",
    )
    scheme: Scheme = option(
        Scheme.CLIENT,
        Choice({s.name.lower(): s for s in Scheme}),
        "who sends PINGs: the client (server answers) or the server",
    )
    max_connections: int | None = option(
        None,
        Count(),
        "handshaken connections allowed, in all: --workers share them evenly",
        default_text="the open-files limit less 64, per worker",
    )
    min_interval: float = option(
        DEFAULT_MIN_INTERVAL, Number(), "smallest interval granted, s (at most --interval)"
    )
    max_interval: float = option(
        DEFAULT_MAX_INTERVAL, Number(), "largest interval granted, s (at least --interval)"
    )
    handshake_timeout: float = option(
        DEFAULT_HANDSHAKE_TIMEOUT, Number(), "time a new connection has to send HELLO, s"
    )
    max_frame: int = option(
        DEFAULT_MAX_PAYLOAD, Count(), "largest frame payload accepted, bytes", metavar="BYTES"
    )
    max_pending: int = option(
        DEFAULT_MAX_PENDING,
        Count(),
        "unsent output per connection before it is closed as a slow consumer, bytes",
        metavar="BYTES",
    )
    ping_strikes: int = option(
        DEFAULT_PING_STRIKES,
        Count(),
        "PINGs in a row sooner than half the interval before TOO_MANY_PINGS",
    )
    max_peer_rate: int = option(
        DEFAULT_MAX_PEER_RATE,
        Count(least=0),
        "PONG and DATA frames a second one peer may send before the server stops "
        "reading from it for the rest of that second (0: no limit)",
    )
    max_handshakes: int = option(
        DEFAULT_MAX_HANDSHAKES,
        Count(),
        "connections still in their handshake at once; newcomers past it get "
        "ERROR SERVER_FULL at once",
    )
    max_handshakes_per_source: int = option(
        0,
        Count(least=0),
        "connections from one source address still in their handshake at once; "
        "newcomers past it get ERROR SERVER_FULL at once (0: no limit)",
    )
    max_accept_rate: float = option(
        0.0,
        RATE,
        "connections accepted a second, by the whole server (--workers share it); past "
        "it accepting pauses and newcomers wait in the listen backlog (0: no limit)",
        metavar="N",
    )
    accept_burst: float = option(
        0.0,
        RATE,
        "connections accepted at once before --max-accept-rate applies",
        metavar="N",
        default_text="a quarter second's worth",
    )
    shutdown_grace: float = option(
        DEFAULT_SHUTDOWN_GRACE,
        Number(inclusive=True),
        "time to flush output on SIGTERM/SIGINT, s",
    )
    drain_period: float = option(
        DEFAULT_DRAIN_PERIOD,
        Number(inclusive=True),
        "on SIGTERM/SIGINT (and in a worker retired by SIGHUP), stop accepting, then "
        "close the peers spread evenly over this many seconds, the window version 2 "
        "clients spread their reconnects over (0: all at once), s",
    )
    tcp_keepalive: TcpKeepalive | None = option(
        None, Keepalive(), "enable TCP keepalive probes (a supplement to heartbeats)"
    )
    # Below a millisecond TCP_USER_TIMEOUT would be 0, which is off.
    tcp_user_timeout: float | None = option(
        None,
        Number(least=0.001, inclusive=True),
        "TCP_USER_TIMEOUT: close when sent data stays unacknowledged this long, s",
    )
    coalesce: float | None = option(
        None,
        Number(inclusive=True),
        "after a quiet wake-up, let events gather up to this many milliseconds before "
        f"polling again, while the arrival rate says a wait gathers {COALESCE_MIN_GATHER:.0f} "
        f"or more, and no longer than {GATHER_BATCH} take to come: less CPU per heartbeat "
        "for up to MS more latency (0: off)",
        metavar="MS",
        default_text=f"1/{round(1 / INTERVAL_SHARE)} of --interval, gathering only below "
        f"{NATURAL_BATCH_RATE:,.0f} events/s",
    )
    backlog: int = option(
        DEFAULT_BACKLOG, Count(), "listen backlog (Linux caps it at net.core.somaxconn)"
    )
    workers: int = option(
        1,
        Workers(),
        "worker processes sharing the port with SO_REUSEPORT (auto: one per CPU, or more "
        "if --max-connections needs more descriptors than the open-files limit gives one)",
    )
    stats_interval: float = option(
        DEFAULT_STATS_INTERVAL,
        Number(inclusive=True),
        "log a statistics line every S seconds (0: never)",
    )
    metrics_port: int | None = option(
        None,
        Port(),
        "serve Prometheus metrics at http://METRICS_HOST:P/metrics (0: any free port)",
    )
    metrics_host: str = option(DEFAULT_HOST, Text(), "address for --metrics-port", metavar="H")
    redis: RedisAddress | None = option(None, RedisUrl(), REDIS_HELP, group=PRESENCE)
    redis_prefix: str = option(DEFAULT_PREFIX, Text(), PREFIX_HELP, metavar="P", group=PRESENCE)
    node_id: str | None = option(
        None,
        Text(),
        "this server's name in presence; the start time is appended, and /wN for each worker",
        metavar="ID",
        default_text="HOST:PID",
        group=PRESENCE,
    )
    redis_required: bool = option(
        False,
        Flag(),
        "refuse to start unless --redis can be reached and permits every command presence uses",
        group=PRESENCE,
    )
    on_duplicate: Policy = option(
        Policy.ALLOW,
        Choice({p.value: p for p in Policy}),
        "a name already online connects again: allow both, refuse the newcomer "
        "(ERROR NAME_TAKEN) or replace the older (CLOSE TAKEN_OVER); across servers and "
        "--workers through --redis",
        group=PRESENCE,
    )
    node_ttl: float = option(
        DEFAULT_NODE_TTL,
        Number(),
        "lifetime of this node's liveness key, refreshed every third of it",
        group=PRESENCE,
    )
    reap_interval: float = option(
        DEFAULT_REAP_INTERVAL,
        Number(),
        "how often this node removes the members of nodes whose key expired",
        group=PRESENCE,
    )
    stream_retention: float = option(
        DEFAULT_STREAM_RETENTION,
        Number(),
        "how long the event stream keeps events (hbloop watch --from ID)",
        group=PRESENCE,
    )
    takeover_limit: int = option(
        DEFAULT_TAKEOVER_LIMIT,
        Count(),
        "a name taken over more than N times within --takeover-window is refused "
        "(NAME_TAKEN) for --takeover-backoff, doubled at each new burst",
        group=PRESENCE,
    )
    takeover_window: float = option(
        DEFAULT_TAKEOVER_WINDOW,
        Number(),
        "the window in which --takeover-limit counts",
        group=PRESENCE,
    )
    takeover_backoff: float = option(
        DEFAULT_TAKEOVER_BACKOFF,
        Number(),
        "how long a name over --takeover-limit is refused at first",
        group=PRESENCE,
    )
    tls_cert: Path | None = option(
        None, File(), "serve TLS with this certificate chain (PEM)", group=TLS_SERVER
    )
    tls_key: Path | None = option(
        None, File(), "the private key of --tls-cert (PEM)", group=TLS_SERVER
    )
    tls_client_ca: Path | None = option(
        None, File(), "require client certificates from these CAs (mTLS)", group=TLS_SERVER
    )
    tls_handshake_rate: float = option(
        DEFAULT_HANDSHAKE_RATE,
        Number(most=MAX_COUNT),
        "new TLS handshakes a second per process; connections past it are closed at accept",
        metavar="N",
        group=TLS_SERVER,
    )
    tls_handshake_rate_per_source: float = option(
        0.0,
        RATE,
        "new TLS handshakes a second from one source address, per process; connections "
        "past it are closed at accept (0: no limit)",
        metavar="N",
        group=TLS_SERVER,
    )
    auth_client_cert: bool = option(
        False,
        Flag(),
        "HELLO's name must be the client certificate's subject CN (needs --tls-client-ca)",
        group=TLS_SERVER,
    )
    jwt_secret_file: Path | None = option(
        None, File(), "HELLO must carry a JWT signed HS256 with this secret", group=TLS_SERVER
    )
    jwt_public_key: Path | None = option(
        None,
        File(),
        "HELLO must carry a JWT signed ES256 or RS256 (PEM public key)",
        group=TLS_SERVER,
    )
    jwt_audience: str | None = option(
        None, Text(), "the 'aud' HELLO tokens must have", metavar="AUD", group=TLS_SERVER
    )
    jwt_issuer: str | None = option(
        None, Text(), "the 'iss' HELLO tokens must have", metavar="ISS", group=TLS_SERVER
    )
    auth_expiry: str = option(
        AUTH_EXPIRY_CLOSE,
        words(AUTH_EXPIRY_POLICIES),
        "when a session's JWT 'exp' passes with no fresh token (AUTH): close it with "
        "CLOSE CREDENTIALS_EXPIRED, or ignore it",
        group=TLS_SERVER,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workers == AUTO_WORKERS:
            object.__setattr__(self, "workers", self._auto_workers())
        self._check_worker_capacity()
        # The descriptor budget sizes only the default connection limit, which is
        # always valid: today's soft limit will do (serving raises it first).
        self.policy(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if self.on_duplicate is not Policy.ALLOW and self.redis is None and self.workers > 1:
            raise UsageError(
                f"--on-duplicate {self.on_duplicate.value} with --workers needs --redis: each "
                "worker is a process of its own that cannot see the names connected to the "
                "others"
            )
        if self.redis_required and self.redis is None:
            raise UsageError("--redis-required needs --redis")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.auth_client_cert and self.tls_client_ca is None:
            raise UsageError("--auth-client-cert needs --tls-client-ca")
        if self.jwt_secret_file is not None and self.jwt_public_key is not None:
            raise UsageError("--jwt-secret-file and --jwt-public-key exclude each other")
        if self.jwt_file is None and (self.jwt_audience or self.jwt_issuer):
            raise UsageError(
                "--jwt-audience and --jwt-issuer need --jwt-secret-file or --jwt-public-key"
            )

    @property
    def jwt_file(self) -> Path | None:
        return self.jwt_secret_file or self.jwt_public_key

    def _auto_workers(self) -> int:
        """``--workers auto``: one per CPU, or as many as --max-connections needs, each
        worker holding what the open-files limit (raised to the hard one) allows."""
        cpus = len(os.sched_getaffinity(0))
        if self.max_connections is None:
            return cpus
        each = default_max_connections(open_files_ceiling())
        needed = -(-self.max_connections // each)
        if needed > MAX_AUTO_WORKERS:
            raise UsageError(
                f"--max-connections {self.max_connections} needs {needed} workers of "
                f"{each} connections (the open-files limit); --workers auto starts at most "
                f"{MAX_AUTO_WORKERS}"
            )
        return max(cpus, needed)

    def _check_worker_capacity(self) -> None:
        """With --workers, each worker's share of --max-connections must fit in its
        descriptors."""
        if self.workers == 1 or self.max_connections is None:
            return
        each = default_max_connections(open_files_ceiling())
        share = self.worker_max_connections(1)
        if share > each:
            raise UsageError(
                f"--max-connections {self.max_connections} over {self.workers} workers is "
                f"{share} each, more than the {each} the open-files limit allows one; "
                "--workers auto starts enough"
            )

    def admission(self) -> AdmissionLimits:
        """One process's admission limits: the accept rate and burst, which are the
        whole server's, split among the workers."""
        return AdmissionLimits(
            accept_rate=self.max_accept_rate / self.workers,
            accept_burst=self.accept_burst / self.workers,
            handshakes_per_source=self.max_handshakes_per_source,
            tls_rate_per_source=self.tls_handshake_rate_per_source,
        )

    def event_loop(self) -> EventLoop:
        """A server process's loop, gathering as --coalesce says: up to MS, or without
        it a share of --interval (``hbloop.net.loop.paced_loop``)."""
        coalesce = None if self.coalesce is None else self.coalesce / MS_PER_S
        return paced_loop(self.interval, coalesce)

    def worker_max_connections(self, index: int) -> int:
        """Worker ``index``'s share of --max-connections (1-based): an even split, the
        remainder to the first workers, so that the shares add up to the whole."""
        assert self.max_connections is not None
        share, remainder = divmod(self.max_connections, self.workers)
        return max(1, share + (index <= remainder))

    def policy(self, fd_limit: int, worker: int | None = None) -> ServerPolicy:
        """The server policy (of ``worker``, 1-based, with --workers); the default
        connection limit is sized from ``fd_limit``. UsageError if the settings are
        inconsistent (nothing is widened to fit)."""
        if self.max_connections is None:
            max_connections = default_max_connections(fd_limit)
        elif worker is None:
            max_connections = self.max_connections
        else:
            max_connections = self.worker_max_connections(worker)
        try:
            return ServerPolicy(
                interval=self.interval,
                timeout=self.timeout,
                scheme=self.scheme,
                min_interval=self.min_interval,
                max_interval=self.max_interval,
                handshake_timeout=self.handshake_timeout,
                max_connections=max_connections,
                max_payload=self.max_frame,
                max_pending=self.max_pending,
                ping_strikes=self.ping_strikes,
                max_peer_rate=self.max_peer_rate,
                max_handshakes=self.max_handshakes,
                shutdown_grace=self.shutdown_grace,
                drain_period=self.drain_period,
                tcp_keepalive=self.tcp_keepalive,
                tcp_user_timeout=self.tcp_user_timeout,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class ClientSettings(LogSettings, ClientTlsSettings):
    command = "client"
    summary = "connect, heartbeat, send stdin lines as DATA and print what comes back"

    host: str = option(DEFAULT_HOST, Text(), "server address", metavar="H")
    port: int = option(DEFAULT_PORT, Port(), "server port")
    name: str | None = option(
        None,
        Text(),
        "this client's name (1-64 UTF-8 bytes)",
        short="-n",
        metavar="NAME",
        default_text="client-PID",
    )
    interval: float = option(
        0.0,
        Number(inclusive=True),
        "heartbeat interval to ask for, s (0: the server's default)",
    )
    no_reconnect: bool = option(
        False, Flag(), "exit when the connection ends instead of reconnecting"
    )
    backoff_base: float = option(
        DEFAULT_BACKOFF_BASE,
        Number(),
        "reconnect back-off base, s (delays are drawn from 0..base*2^n)",
    )
    backoff_max: float = option(
        DEFAULT_BACKOFF_CAP, Number(), "reconnect back-off cap, s (at least --backoff-base)"
    )
    min_interval: float = option(
        DEFAULT_MIN_INTERVAL,
        Number(inclusive=True),
        "refuse a granted interval below this, s (protocol.md R5)",
    )
    peer_max_payload: int = option(
        DEFAULT_MAX_PAYLOAD,
        Count(least=MIN_MAX_PAYLOAD),
        "the server's --max-frame: longer lines are refused here, bytes (R6)",
        metavar="BYTES",
    )
    allow_plaintext_token: bool = option(
        False,
        Flag(),
        "send the token without TLS to a host that is not loopback (R4)",
        group=TLS_CLIENT,
    )
    log_level: str = log_level("warning")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backoff_base > self.backoff_max:
            raise UsageError(
                f"--backoff-base {self.backoff_base:g}s is above "
                f"--backoff-max {self.backoff_max:g}s"
            )


CASE_HELP = (
    "run only this case: its number in the report, or a statement ID for every case "
    "of that statement; repeat for more (default: every case)"
)


def cases_option() -> tuple[str, ...]:
    return repeated(CaseName(), CASE_HELP)


def check_cases(checker: str, names: tuple[str, ...]) -> None:
    """UsageError unless each of ``names`` picks one of the cases of the ``checker``
    module at least. The checker is imported only when there are names to judge, so
    that parsing any command line stays cheap (the checkers are large)."""
    if not names:
        return
    module = importlib.import_module(checker)
    try:
        module.numbered(module.CASES, names)
    except ValueError as exc:
        raise UsageError(f"--case {exc}") from None


@dataclass(frozen=True, kw_only=True)
class CheckSettings(ClientTlsSettings):
    command = "check"
    summary = "check that a server speaks protocol.md, case by case"

    target: tuple[str, int] = required(Target(), "server to check", positional=True)
    json: bool = option(False, Flag(), "print the report as JSON")
    interval: float = option(
        CHECK_PROBE_INTERVAL, Number(), "interval to ask for in the liveness cases, s"
    )
    max_wait: float = option(
        CHECK_MAX_WAIT,
        Number(),
        "skip time-based cases that would take longer than this, s",
    )
    handshake_timeout: float | None = option(
        None,
        Number(),
        "the server's handshake deadline; the H5 case is skipped without it",
    )
    answer_timeout: float = option(
        CHECK_ANSWER_TIMEOUT,
        Number(),
        "time the server has for an answer it owes at once; a case waits no longer",
    )
    duplicates: str | None = option(
        None,
        words(CHECK_DUPLICATE_POLICIES),
        "the server's duplicate-name policy; the P1 or P2 case is skipped without it",
    )
    max_handshakes: int | None = option(
        None,
        Count(),
        "the server's --max-handshakes; the SERVER_FULL case is skipped without it",
    )
    shutdown_within: float | None = option(
        None,
        Number(),
        "the server will be stopped within this many seconds of the last case, which "
        "checks C4 then; skipped without it",
    )
    case: tuple[str, ...] = cases_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_cases("hbloop.check", self.case)


@dataclass(frozen=True, kw_only=True)
class CheckClientSettings(Settings):
    command = "check-client"
    summary = "check that a client speaks protocol.md, case by case (a scripted server)"

    client: tuple[str, ...] = option(
        (),
        Words(),
        "the client to spawn for each case, after '--'; {host} and {port} in it (and "
        "$HBLOOP_HOST, $HBLOOP_PORT) become the checker's address",
        positional=True,
        many=True,
        metavar="COMMAND",
        default_text="none: --listen",
    )
    listen: int | None = option(
        None,
        Port(),
        "instead of spawning, wait on this port for a client that reconnects by itself "
        "(0: any free port, printed)",
        metavar="PORT",
    )
    host: str = option(DEFAULT_HOST, Text(), "address to listen on", metavar="H")
    json: bool = option(False, Flag(), "print the report as JSON")
    answer_timeout: float = option(
        CHECK_ANSWER_TIMEOUT,
        Number(),
        "time the client has for an answer it owes at once; a case waits no longer",
    )
    start_timeout: float = option(
        CHECK_CLIENT_START_TIMEOUT,
        Number(),
        "time a case's client has for its first connection (spawning, or reconnecting)",
    )
    quiet_window: float = option(
        CHECK_CLIENT_QUIET_WINDOW,
        Number(),
        "how long a client that must not reconnect is watched, s",
    )
    handshake_timeout: float = option(
        CHECK_CLIENT_HANDSHAKE_TIMEOUT,
        Number(),
        "the client's handshake deadline (H9), s",
    )
    max_wait: float = option(
        CHECK_MAX_WAIT,
        Number(),
        "skip time-based cases that would take longer than this, s",
    )
    case: tuple[str, ...] = cases_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.client) == (self.listen is not None):
            raise UsageError("give either a client command (after '--') or --listen PORT")
        check_cases("hbloop.check_client", self.case)


@dataclass(frozen=True, kw_only=True)
class WhoSettings(Settings):
    command = "who"
    summary = "who is online across the servers sharing a Redis (or where NAME is)"

    name: str | None = option(None, Text(), "one name only", positional=True, metavar="NAME")
    redis: RedisAddress = required(RedisUrl(), REDIS_HELP)
    redis_prefix: str = option(DEFAULT_PREFIX, Text(), PREFIX_HELP, metavar="P")
    json: bool = option(False, Flag(), JSON_HELP)


@dataclass(frozen=True, kw_only=True)
class WatchSettings(Settings):
    command = "watch"
    summary = "print join and leave events as they happen"

    redis: RedisAddress = required(RedisUrl(), REDIS_HELP)
    redis_prefix: str = option(DEFAULT_PREFIX, Text(), PREFIX_HELP, metavar="P")
    start: str = option(
        "$",
        Text(),
        "print the events after this stream id ($: from now on, 0: all kept)",
        name="from",
        metavar="ID",
    )
    count: int | None = option(None, Count(), "exit after N events")
    json: bool = option(False, Flag(), "one JSON object a line")


COMMANDS: tuple[type[Settings], ...] = (
    ServeSettings,
    ClientSettings,
    CheckSettings,
    CheckClientSettings,
    WhoSettings,
    WatchSettings,
)

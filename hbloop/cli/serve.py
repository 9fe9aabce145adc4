"""``hbloop serve``: a heartbeat server that echoes DATA; with ``--workers N``, a
supervisor whose workers each run ``serve_worker``."""

from __future__ import annotations

import dataclasses
import logging
import signal

from hbloop.cli.config import ConfigError
from hbloop.cli.errors import EXIT_OK, UsageError, fail
from hbloop.cli.parser import parse
from hbloop.cli.security import server_security
from hbloop.cli.settings import AUTH_EXPIRY_CLOSE, ServeSettings, changed, flags
from hbloop.net.sockets import (
    adopt_listener,
    default_max_connections,
    raise_open_files_limit,
    systemd_listen_fd,
)
from hbloop.ops import logs
from hbloop.ops.metrics import Report, StartError, serve_metrics
from hbloop.ops.stats import StatsReporter
from hbloop.ops.supervisor import (
    STOP_ACCEPTING_SIGNAL,
    SUPERVISOR_SETTINGS,
    Supervisor,
    WorkerLink,
)
from hbloop.presence.local import LocalRegistry
from hbloop.presence.node import Node, Policy, Presence, PresenceConfig, check_redis
from hbloop.server import Peer, Server

# Settings that SIGHUP applies to a running process in place; any other change
# needs new processes (a restart, or with --workers the rolling restart SIGHUP does).
LIVE_SETTINGS = (
    "log_level",
    "log_format",
    "max_accept_rate",
    "accept_burst",
    "max_handshakes_per_source",
    "tls_handshake_rate_per_source",
    "tls_handshake_rate",
    "max_connections",
    "max_handshakes",
)

log = logging.getLogger("hbloop.cli")


def echo(peer: Peer, data: bytes) -> None:
    """The bundled application: send every DATA frame back to its sender."""
    peer.send(data)


def run(settings: ServeSettings) -> int:
    """One server process, or the supervisor of ``--workers``."""
    try:
        activated = systemd_listen_fd()
    except ValueError as exc:
        return fail(str(exc))
    if activated is not None and settings.fd is None:
        settings = dataclasses.replace(settings, fd=activated)
    if settings.redis is not None and settings.redis_required:
        problem = check_redis(settings.redis, settings.redis_prefix)
        if problem is not None:
            return fail(f"--redis-required: {problem}")
    if settings.workers == 1:
        return serve(settings)
    logs.configure(settings.level, settings.log_format)
    server_security(settings)  # unusable files are refused before any worker starts
    supervisor = Supervisor(settings, serve_worker, reload_workers, restart_needed)
    try:
        supervisor.start()
    except StartError as exc:
        return fail(str(exc))
    return supervisor.run()


def serve_worker(settings: ServeSettings, worker: WorkerLink) -> int:
    """A worker of ``--workers``: the supervisor's target, run in each worker process."""
    return serve(settings, worker)


def reread(current: ServeSettings) -> ServeSettings | None:
    """SIGHUP: ``current``'s command line parsed again with its ``--config`` file
    re-read, and checked as at start-up; the log settings take effect at once. None,
    with an error logged, if the new settings are bad: the process then carries on as
    it was."""
    try:
        new = parse(current.command_line, raise_errors=True)
        assert isinstance(new, ServeSettings)
        server_security(new)
        # The inherited socket is the process's, whatever the command line says.
        new = dataclasses.replace(new, fd=current.fd)
    except (UsageError, ConfigError) as exc:
        log.error("SIGHUP: %s; nothing changed", exc)
        return None
    logs.configure(new.level, new.log_format)
    log.info(
        "SIGHUP: settings reloaded from %s: log-level %s, log-format %s",
        new.config or "the command line",
        new.level,
        new.log_format,
    )
    return new


def reload_workers(current: ServeSettings) -> ServeSettings | None:
    """The supervisor's SIGHUP: the settings for the new workers, with the
    supervisor's own (SUPERVISOR_SETTINGS) kept as they are."""
    new = reread(current)
    if new is None:
        return None
    kept = [field for field in changed(current, new) if field in SUPERVISOR_SETTINGS]
    if kept:
        log.warning(
            "SIGHUP: %s changed; the supervisor keeps the old value until a full restart",
            flags(kept),
        )
    return dataclasses.replace(new, **{field: getattr(current, field) for field in kept})


def restart_needed(current: ServeSettings, new: ServeSettings) -> bool:
    """Whether ``new`` needs new worker processes: a change SIGHUP cannot apply in
    place (LIVE_SETTINGS)."""
    return any(field not in LIVE_SETTINGS for field in changed(current, new))


class _Signals:
    """A lone server's (or a worker's) signals. SIGINT and SIGTERM shut it down
    gracefully (a second one at once); SIGHUP re-reads the settings and applies the
    LIVE_SETTINGS (log level and format, limits and rates) in place, logging which
    other changes need a restart. A worker's STOP_ACCEPTING_SIGNAL, the first step of
    its retirement, closes its listener and reports that to the supervisor at once
    (``reporter``, once set)."""

    def __init__(
        self, server: Server, settings: ServeSettings, fd_limit: int, worker: int | None
    ) -> None:
        self.server = server
        self.settings = settings
        self.fd_limit = fd_limit  # what the default --max-connections is sized from
        self.worker = worker  # its index, whose share of --max-connections it serves
        self.serving = True
        self.reporter: StatsReporter | None = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            server.loop.add_signal_handler(signum, self.stop)
        server.loop.add_signal_handler(signal.SIGHUP, self.reload)
        if worker is not None:
            server.loop.add_signal_handler(STOP_ACCEPTING_SIGNAL, self.stop_accepting)

    def stop_accepting(self) -> None:
        self.server.stop_accepting()
        log.info("retiring: stopped accepting; serving %d peers", len(self.server.peers))
        if self.reporter is not None:
            self.reporter.report_now()

    def stop(self) -> None:
        self.serving = False
        self.server.shutdown()

    def reload(self) -> None:
        new = reread(self.settings)
        if new is None:
            return
        pending = [field for field in changed(self.settings, new) if field not in LIVE_SETTINGS]
        live = {field: getattr(new, field) for field in LIVE_SETTINGS}
        self.settings = dataclasses.replace(self.settings, **live)
        self.server.set_admission(self.settings.admission())
        policy = self.settings.policy(self.fd_limit, self.worker)
        self.server.set_limits(
            policy.max_connections, policy.max_handshakes, self.settings.tls_handshake_rate
        )
        if pending:
            log.warning(
                "SIGHUP: %s changed; a restart applies it (with --workers, SIGHUP to the "
                "supervisor restarts the workers)",
                flags(pending),
            )


def serve(settings: ServeSettings, worker: WorkerLink | None = None) -> int:
    """Serve until stopped: alone, or as ``worker`` of a supervisor."""
    if worker is not None:
        logs.name_worker(worker.index)
    logs.configure(settings.level, settings.log_format)
    fd_limit = raise_open_files_limit()
    policy = settings.policy(fd_limit, None if worker is None else worker.index)
    if policy.max_connections > default_max_connections(fd_limit):
        log.warning(
            "--max-connections %d is above the %d connections that the open-files limit "
            "%d leaves room for: past them newcomers get SERVER_FULL for want of "
            "descriptors; raise the limit (ulimit -n, LimitNOFILE=) or lower the option",
            policy.max_connections,
            default_max_connections(fd_limit),
            fd_limit,
        )
    tls_context, authenticator = server_security(settings)
    port = settings.port if worker is None else worker.port
    try:
        listener = None if settings.fd is None else adopt_listener(settings.fd)
    except ValueError as exc:
        return fail(f"--fd: {exc}")
    server = Server(
        settings.host,
        port,
        policy,
        on_message=echo,
        loop=settings.event_loop(),
        backlog=settings.backlog,
        reuse_port=worker is not None,
        listener=listener,
        tls_context=tls_context,
        tls_handshake_rate=settings.tls_handshake_rate,
        authenticator=authenticator,
        close_expired=settings.auth_expiry == AUTH_EXPIRY_CLOSE,
        trace=settings.verbose,
        admission=settings.admission(),
    )
    try:
        host, port = server.start()
    except OSError as exc:
        return fail(f"cannot listen on {settings.host}:{port}: {exc.strerror or exc}")
    # Before the line that says it listens: whoever waits for that line may signal at
    # once, and a SIGHUP or SIGTERM before the handlers would kill the process.
    signals = _Signals(server, settings, fd_limit, None if worker is None else worker.index)
    presence = None
    if settings.redis is not None:
        presence = _start_presence(server, settings, f"{host}:{port}", worker)
    elif settings.on_duplicate is not Policy.ALLOW:
        server.presence = LocalRegistry(settings.on_duplicate)
        log.info("duplicates: %s (this server's names only)", settings.on_duplicate.value)
    try:  # a metrics port in use is the error, not a "listening" line before it
        reporter = signals.reporter = _start_reporting(server, settings, worker, signals, presence)
    except StartError as exc:
        return fail(str(exc))
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
    server.serve_forever(install_signal_handlers=False)
    reporter.close()
    if presence is not None:
        presence.close()
    server_log.info("stopped")
    return EXIT_OK


def _start_presence(
    server: Server, settings: ServeSettings, address: str, worker: WorkerLink | None
) -> Presence:
    assert settings.redis is not None
    config = PresenceConfig(
        policy=settings.on_duplicate,
        prefix=settings.redis_prefix,
        node_ttl=settings.node_ttl,
        reap_interval=settings.reap_interval,
        stream_retention=settings.stream_retention,
        takeover_limit=settings.takeover_limit,
        takeover_window=settings.takeover_window,
        takeover_backoff=settings.takeover_backoff,
    )
    if worker is None:
        node = Node.make(settings.node_id, address)
    else:
        node = Node.make(settings.node_id, address, worker.index, worker.started)
    presence = Presence(server.loop, settings.redis, node, config)
    logging.getLogger("hbloop.presence").info(
        "presence: node %s on %s, duplicates: %s, stale members gone within %.1fs",
        node.id,
        settings.redis,
        config.policy.value,
        config.stale_bound,
    )
    server.presence = presence
    presence.start()
    return presence


def _start_reporting(
    server: Server,
    settings: ServeSettings,
    worker: WorkerLink | None,
    signals: _Signals,
    node: Presence | None,
) -> StatsReporter:
    """The stats line; a worker's snapshots to its supervisor, or a lone server's
    /metrics."""
    presence = node.snapshot if node is not None else None
    interval = settings.stats_interval
    if worker is not None:
        publish = worker.publisher(orphaned=server.shutdown)
        label = f"worker={worker.index} "
        return StatsReporter(server.loop, server.stats, interval, publish, label, presence)
    reporter = StatsReporter(server.loop, server.stats, interval, presence=presence)
    if settings.metrics_port is not None:
        serve_metrics(
            server.loop,
            settings.metrics_host,
            settings.metrics_port,
            lambda: Report.alone(reporter.snapshot(), signals.serving),
        )
    return reporter

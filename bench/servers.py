"""The server under test: started by the bench (hbloop or a reference) or given.

A spawned server's port is chosen by the kernel (port 0) and read back: the
reference servers (``bench/reference_server.py``, and the C one of ``bench.c_server``)
print it, and for ``hbloop serve`` (which logs at warning level during a benchmark,
so that per-connection log lines do not distort its CPU time) psutil finds the
listening socket.

With ``--tls`` the servers are given a throwaway ECDSA P-256 certificate made here
(``make_certificate``), and the load generator trusts it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hbloop.core.policy import DEFAULT_MAX_INTERVAL, DEFAULT_MIN_INTERVAL, seconds_to_ms

# hbloop logs every connect and disconnect at info level; at 19,000 connections that
# would be a measurable share of its CPU, so a benchmarked server logs warnings only.
SERVER_LOG_LEVEL = "warning"

# How long a spawned server may take to start listening, and to stop on SIGTERM
# (hbloop's graceful shutdown sends CLOSE to every peer first).
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
POLL_STEP = 0.05


# The throwaway certificate outlives any run by far.
CERTIFICATE_DAYS = 1

# A TLS run measures what handshakes cost, not what the rate limit refuses: a
# spawned hbloop may start this many times the bench's connect rate a second.
HANDSHAKE_HEADROOM = 4


class ServerStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and its key, PEM; the clients trust the certificate."""

    cert: Path
    key: Path


def make_certificate(directory: Path) -> TlsFiles:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1 with its
    key, in ``directory``. ECDSA because the server signs once per handshake, and
    ``openssl speed ecdsap256 rsa2048`` (OpenSSL 3.0) signs about 51,000 times a second
    with P-256 against 4,100 with RSA-2048 on the project's machine."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    addresses = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName(addresses), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / "bench.crt", directory / "bench.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class ServerUnderTest:
    """A server to load; ``process`` is None for one the bench did not start, and
    ``tls_ca`` the certificate its clients trust if it speaks TLS."""

    name: str
    address: tuple[str, int]
    process: subprocess.Popen[str] | None = None
    tls_ca: Path | None = None
    argv: list[str] | None = None  # a spawned hbloop's command line (--storm restart)
    held: socket.socket | None = None  # the listener the bench passes it (``hold_port``)

    @property
    def psutil_process(self) -> psutil.Process | None:
        return None if self.process is None else psutil.Process(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        if self.held is not None:
            self.held.close()

    def start(self, argv: list[str], **popen: object) -> None:
        """Run ``argv`` as the server's process, passing it the held listener."""
        fds = () if self.held is None else (self.held.fileno(),)
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            text=True,
            pass_fds=fds,
            **popen,  # type: ignore[call-overload]
        )


def hold_port(host: str, backlog: int) -> socket.socket:
    """A listening socket on ``host`` (any free port) for a spawned hbloop to serve with
    ``--fd``, as systemd's socket activation passes one: the bench keeps it open, so
    connects made while no server runs (``--storm restart``) wait in its backlog."""
    return socket.create_server((host, 0), backlog=backlog)


def spawn_hbloop(
    host: str,
    interval: float,
    timeout: float,
    extra: Sequence[str] = (),
    checkout: Path | None = None,
    tls: TlsFiles | None = None,
    connect_rate: float = 0.0,
    held: socket.socket | None = None,
) -> ServerUnderTest:
    """``hbloop serve`` from this installation, or from the source tree ``checkout``
    (then named "baseline"); with ``tls``, on TLS ("hbloop-tls"), its handshake rate
    limit kept above ``connect_rate``; with ``held`` (``hold_port``), serving that
    listener, which it then owns."""
    argv = [sys.executable, "-m", "hbloop", "serve", "--host", host, "--port", "0"]
    argv += ["--interval", str(interval), "--timeout", str(timeout)]
    # hbloop refuses an interval outside its bounds, and the bench's interval is the one
    # under test: the bounds are widened to hold it, as the reference server does.
    argv += ["--min-interval", str(min(interval, DEFAULT_MIN_INTERVAL))]
    argv += ["--max-interval", str(max(interval, DEFAULT_MAX_INTERVAL))]
    argv += ["--log-level", SERVER_LOG_LEVEL, *extra]
    if tls is not None:
        argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        argv += ["--tls-handshake-rate", str(HANDSHAKE_HEADROOM * connect_rate)]
    if held is not None:
        argv += ["--fd", str(held.fileno())]
    env = None
    if checkout is not None:
        env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    name = "hbloop" if checkout is None else "baseline"
    server = _tested(name, (host, 0), None, tls)
    server.held = held
    server.start(argv, env=env, cwd=checkout)
    assert server.process is not None
    try:
        port = listening_port(server.process, time.monotonic() + START_TIMEOUT)
    except BaseException:
        server.process.kill()
        server.process.wait()
        server.stop()
        raise
    server.address = (host, port)
    server.argv = argv
    return server


def spawn_reference(
    loop: str, host: str, interval: float, timeout: float, tls: TlsFiles | None = None
) -> ServerUnderTest:
    argv = [sys.executable, "-m", "bench.reference_server", "--loop", loop, "--host", host]
    argv += ["--interval", str(interval), "--timeout", str(timeout)]
    if tls is not None:
        argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    port = _announced_port(process, f"reference server ({loop})")
    return _tested(loop, (host, port), process, tls)


def spawn_c(binary: Path, host: str, interval: float, timeout: float) -> ServerUnderTest:
    """The C reference server (``bench.c_server``), named "c", granting what
    ``spawn_hbloop``'s server grants: the same interval, timeout and bounds, in ms."""
    argv = [str(binary), "--host", host]
    argv += ["--interval-ms", str(seconds_to_ms(interval))]
    argv += ["--timeout-ms", str(seconds_to_ms(timeout))]
    argv += ["--min-interval-ms", str(seconds_to_ms(min(interval, DEFAULT_MIN_INTERVAL)))]
    argv += ["--max-interval-ms", str(seconds_to_ms(max(interval, DEFAULT_MAX_INTERVAL)))]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    port = _announced_port(process, "C reference server")
    return ServerUnderTest("c", (host, port), process)


def _announced_port(process: subprocess.Popen[str], what: str) -> int:
    """The port of a server that prints ``listening on HOST:PORT`` first, as the
    reference servers do; kills it and raises ServerStartError if it does not."""
    assert process.stdout is not None
    line = process.stdout.readline()  # the server's first line, or "" if it died
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise ServerStartError(f"{what} did not start: exit {process.returncode}")
    return int(line.rsplit(":", 1)[1])


def _tested(
    name: str, address: tuple[str, int], process: subprocess.Popen[str] | None, tls: TlsFiles | None
) -> ServerUnderTest:
    if tls is None:
        return ServerUnderTest(name, address, process)
    return ServerUnderTest(f"{name}-tls", address, process, tls.cert)


def listening_port(process: subprocess.Popen[str], deadline: float) -> int:
    """The port ``process`` (or one of its workers) listens on by ``deadline``."""
    proc = psutil.Process(process.pid)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"hbloop serve exited with {process.returncode}")
        # With --workers, the workers listen; the supervisor only reserves the port.
        for listener in [proc, *proc.children()]:
            with contextlib.suppress(psutil.NoSuchProcess):
                for conn in listener.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        return int(conn.laddr.port)
        time.sleep(POLL_STEP)
    raise ServerStartError("hbloop serve did not listen in time")


# The kernel's TCP socket tables, one line a socket: "sl local rem st ...", addresses
# as hex IP:PORT, state 0A for LISTEN. Listening sockets come first (the kernel walks
# its listening hash before the established one), so a search stops at the first
# other line rather than read hundreds of thousands of connections.
TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
LISTEN = "0A"


def _listening(table: Path, port: int) -> bool:
    suffix = f":{port:04X}"
    with contextlib.suppress(OSError), table.open() as lines:
        next(lines, None)  # the header
        for line in lines:
            _, local, _, state, *_ = line.split()
            if state != LISTEN:
                return False
            if local.endswith(suffix):
                return True
    return False


def listening(process: subprocess.Popen[str], port: int) -> bool:
    """Whether something listens on ``port`` (the server ``process`` started again on
    it), from the kernel's tables rather than psutil, which parses every socket of the
    machine per process: seconds each at hundreds of thousands. ServerStartError if
    ``process`` has exited."""
    if process.poll() is not None:
        raise ServerStartError(f"hbloop serve exited with {process.returncode}")
    return any(_listening(table, port) for table in TCP_TABLES)


def wait_listening(process: subprocess.Popen[str], port: int, deadline: float) -> None:
    """Wait until ``listening(process, port)``, or raise ServerStartError at
    ``deadline``."""
    while time.monotonic() < deadline:
        if listening(process, port):
            return
        time.sleep(POLL_STEP)
    raise ServerStartError("hbloop serve did not listen in time")

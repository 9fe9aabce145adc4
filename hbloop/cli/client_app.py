"""``hbloop client``: stdin lines out as DATA, DATA in on stdout, status on stderr."""

from __future__ import annotations

import os
import signal
import ssl
import sys

from hbloop.cli.security import read_token_file
from hbloop.cli.settings import ClientSettings
from hbloop.client import STOP_SIGNALS, Client, PayloadTooLarge, TokenProvider
from hbloop.core.backoff import Backoff
from hbloop.core.logfields import token
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import Welcome
from hbloop.net.loop import EventLoop

# Lines typed before the connection is up are queued, up to this many.
MAX_QUEUED_LINES = 1000

# Bytes read from stdin at a time.
STDIN_CHUNK = 65536

# Signals that close the client cleanly: those of Client.run(), and SIGHUP, which a
# terminal sends when it is closed.
APP_STOP_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)


class ClientApp:
    """``hbloop client``: stdin lines out as DATA, DATA in to stdout, status to stderr."""

    def __init__(
        self, settings: ClientSettings, tls: ssl.SSLContext | None, token: str | None
    ) -> None:
        self.loop = EventLoop()
        self.queued: list[bytes] = []
        self._partial = b""
        token_file = settings.token_file
        # --token-file is read again before each connection, so that a token rotated
        # in the file is the one the next connection uses.
        source: str | TokenProvider | None = (
            token if token_file is None else lambda: read_token_file(token_file)
        )
        self.client = Client(
            settings.host,
            settings.port,
            settings.name or f"client-{os.getpid()}",
            interval=settings.interval,
            loop=self.loop,
            on_welcome=self.on_welcome,
            on_message=self.on_message,
            on_disconnect=self.on_disconnect,
            reconnect=not settings.no_reconnect,
            backoff=Backoff(settings.backoff_base, settings.backoff_max),
            tls=tls,
            token=source,
            trace=settings.verbose,
            min_interval=settings.min_interval,
            peer_max_payload=settings.peer_max_payload,
            allow_plaintext_token=settings.allow_plaintext_token,
        )
        self.target = f"{settings.host}:{settings.port}"

    def status(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def on_welcome(self, welcome: Welcome) -> None:
        self.status(
            f"connected to {self.target} as {token(self.client.name)}: "
            f"interval {welcome.interval_ms / 1000:g}s, timeout {welcome.timeout_ms / 1000:g}s, "
            f"{welcome.scheme.name.lower()} pings"
        )
        queued, self.queued = self.queued, []
        for line in queued:
            self.client.send(line)

    def on_message(self, data: bytes) -> None:
        sys.stdout.write(data.decode("utf-8", "replace") + "\n")
        sys.stdout.flush()

    def on_disconnect(self, disconnect: Disconnect, retry_in: float | None) -> None:
        if retry_in is None:  # stopped: a final ending (R3), or --no-reconnect
            self.status(f"disconnected: {disconnect}")
        else:
            self.status(f"disconnected: {disconnect}; reconnecting in {retry_in:.2f}s")

    def on_stdin(self) -> None:
        try:
            chunk = os.read(0, STDIN_CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self.loop.remove_reader(0)  # EOF: stay connected as a presence client
            if self._partial:
                self.submit(self._partial)
                self._partial = b""
            return
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self.submit(line)

    def submit(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        try:
            if self.client.send(line):
                return
        except PayloadTooLarge as exc:
            self.status(f"line dropped: {exc}")
            return
        if len(self.queued) < MAX_QUEUED_LINES:
            self.queued.append(line)
        else:
            self.status("not connected and the queue is full: line dropped")

    def watch_stdin(self) -> None:
        try:
            self.loop.add_reader(0, self.on_stdin)
        except PermissionError:
            # A regular file cannot be polled: it is always readable, so take it whole.
            self.loop.forget_fd(0)
            data = sys.stdin.buffer.read()
            for line in data.splitlines():
                self.submit(line)
        except (OSError, ValueError):
            pass  # no usable stdin (closed): run as a presence client

    def run(self) -> int:
        """Exit code 0 when closed by a signal; 1 when the connection ended for good
        (a final ending, or any with --no-reconnect)."""
        self.watch_stdin()
        try:
            stopped = self.client.run(APP_STOP_SIGNALS)
        finally:
            self.loop.close()
        return 0 if stopped.reason is Reason.CLOSED_LOCALLY else 1

"""TLS as a sans-IO layer: ``ssl.SSLObject`` over two memory BIOs, no sockets.

The event loop keeps owning the socket; this layer only turns ciphertext into
plaintext and back. That costs about 20 KB per connection where asyncio's TLS
transport costs about 284 KB: its ``SSLProtocol`` allocates a 256 KiB read buffer per
connection (``max_size`` in CPython's Lib/asyncio/sslproto.py). Both figures are the
resident memory per connection of ``python -m bench --tls --against asyncio`` (4,000
clients; docs/explanation/figures.md, "TLS").

A connection's I/O shell uses one ``TlsLayer`` like this::

    layer = TlsLayer(server_context(cert, key), server_side=True)
    # socket readable, ``data`` received:
    plaintext = layer.receive(data)     # may be b"" while the handshake runs
    # (or, into a buffer the caller keeps: size = layer.receive_into(data, buffer))
    send_to_socket(layer.data_to_send())  # handshake records, alerts, tickets
    decoder.feed(plaintext)
    # a frame to send, once ``layer.handshake_done``:
    send_to_socket(layer.send(frame))
    # ending the connection:
    send_to_socket(layer.close())       # close_notify, once

``receive`` drains every decrypted byte before it returns, because a level-triggered
epoll cannot see bytes already decrypted and buffered inside OpenSSL: leaving any
there would strand them until the peer happened to send again.

Also here: the SSLContexts for both sides, and the per-process token bucket that
limits how many new handshakes a server starts per second.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Protocol, cast

from hbloop.core.protocol import FrameDecoder, RemoteProtocolError, code_name, parse_error
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, HEADER_SIZE, T_ERROR, T_HELLO

# What ``ssl.SSLObject.getpeercert()`` returns for a verified certificate: subject,
# issuer, subjectAltName, validity, as nested tuples.
Certificate = dict[str, Any]

# TLS 1.2 and 1.3 only: older versions have known weaknesses (RFC 8996 deprecates
# 1.0 and 1.1), and every client library of the last decade speaks 1.2.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

# TLS 1.2 cipher suites (1.3's are all good): forward secrecy (ECDHE) and AEAD only,
# for ECDSA and RSA certificates alike. AES-GCM first for CPUs with AES-NI,
# ChaCha20-Poly1305 for small devices without it.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

# TLS 1.3 session tickets sent after each handshake. None: Python clients do not
# resume TLS 1.3 sessions (the ssl module's documentation, "TLS 1.3": SSLSocket.session
# and SSLSession are not compatible with TLS 1.3), and OpenSSL's default of two
# (SSL_CTX_set_num_tickets(3)) costs the server CPU on every handshake, which a
# reconnect storm multiplies: 0.29 ms instead of 0.25 ms per handshake with this
# module's server_context and an ECDSA P-256 certificate (the server's do_handshake
# over memory BIOs timed with time.process_time, 2,000 handshakes, three rounds).
SESSION_TICKETS = 0

# One SSLObject.read() returns at most one record's plaintext, at most 16 KiB.
MAX_RECORD_PLAINTEXT = 16384

# The largest TLS record on the wire: a 5-byte header and a fragment of at most
# 2^14 + 2048 bytes (RFC 5246, 6.2.3; TLS 1.3's limit, RFC 8446 5.2, is lower). The
# incoming BIO keeps at most one partial record between reads, so the plaintext one
# ``receive_into`` of N bytes completes is shorter than N + MAX_RECORD_CIPHERTEXT.
MAX_RECORD_CIPHERTEXT = 5 + 16384 + 2048

# Record content types (change_cipher_spec, alert, handshake, application_data) and
# the major record version: the first byte a TLS peer sends is one of these types,
# the second is 3.
_TLS_CONTENT_TYPES = frozenset({20, 21, 22, 23})
_TLS_MAJOR_VERSION = 3

# The attribute of CPython's ssl.SSLObject that holds the C object it wraps
# (_ssl._SSLSocket), whose read and write take the same arguments; an SSLObject
# without it is used as it is.
_C_RECORDS = "_sslobj"

# Certificate verification failures worth a plainer word than OpenSSL's. The codes
# are X509_V_ERR_* from OpenSSL's x509_vfy.h.
_VERIFY_REASONS = {
    2: "unknown CA",  # unable to get issuer certificate
    18: "self-signed certificate",
    19: "unknown CA",  # self-signed certificate in chain
    20: "unknown CA",  # unable to get local issuer certificate
}

# OpenSSL's reason for an alert received from the peer starts with one of these.
_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")


class TlsConfigError(ValueError):
    """A certificate, key or CA file could not be used; the message is one line."""


class TlsError(Exception):
    """TLS failed on one connection; ``reason`` is one line for a log or an ERROR."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotTlsError(TlsError):
    """The peer sent plain text where a TLS record was due; ``data`` is what came."""

    def __init__(self, reason: str, data: bytes) -> None:
        super().__init__(reason)
        self.data = data


def _load_chain(context: ssl.SSLContext, certfile: Path, keyfile: Path) -> None:
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        why = _misfiled(certfile, keyfile) if isinstance(exc, ssl.SSLError) else None
        if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
            why = f"{keyfile} is not the key of {certfile}"
        raise TlsConfigError(
            f"cannot load certificate {certfile} with key {keyfile}: {why or _describe_load(exc)}"
        ) from None


# The PEM labels that tell a certificate from a private key ("-----BEGIN CERTIFICATE-----",
# "-----BEGIN EC PRIVATE KEY-----", ...).
PEM_CERTIFICATE = b"CERTIFICATE-----"
PEM_KEY = b"PRIVATE KEY-----"


def _misfiled(certfile: Path, keyfile: Path) -> str | None:
    """What is wrong with the files, where OpenSSL only says "PEM lib": a DER
    certificate, or a certificate and a key given the other way round."""
    try:
        cert, key = certfile.read_bytes(), keyfile.read_bytes()
    except OSError:
        return None  # OpenSSL read them; its own words will do
    if PEM_CERTIFICATE not in cert:
        if PEM_KEY in cert and PEM_CERTIFICATE in key:
            return "the certificate and the key are swapped"
        if b"-----BEGIN" not in cert:
            return (
                f"{certfile} is not PEM (DER? openssl x509 -inform DER -in {certfile} "
                "-out cert.pem makes it PEM)"
            )
        return f"{certfile} holds no PEM certificate"
    if PEM_KEY not in key:
        return f"{keyfile} holds no PEM private key"
    return None


def _load_ca(context: ssl.SSLContext, cafile: Path) -> None:
    try:
        context.load_verify_locations(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load CA certificates from {cafile}: {_describe_load(exc)}"
        ) from None


def _describe_load(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return exc.strerror or str(exc)


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    # Client-initiated TLS 1.2 renegotiation makes the server redo the expensive half
    # of a handshake on demand: a denial-of-service lever with no use here.
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def server_context(certfile: Path, keyfile: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server's context. With ``client_ca``, every client must present a
    certificate issued by it (mutual TLS)."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.num_tickets = SESSION_TICKETS
    _load_chain(context, certfile, keyfile)
    if client_ca is not None:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    cafile: Path | None = None, certfile: Path | None = None, keyfile: Path | None = None
) -> ssl.SSLContext:
    """A client's context: the server's certificate is verified, against ``cafile``
    or the system's trust store, and its host name checked. ``certfile`` and
    ``keyfile`` give the client's own certificate for mutual TLS."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # verifies and checks names
    if cafile is None:
        context.load_default_certs()
    else:
        _load_ca(context, cafile)
    if certfile is not None:
        _load_chain(context, certfile, keyfile or certfile)
    return context


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """OpenSSL's error as one line a person can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code, exc.verify_message)
        return f"certificate verify failed: {reason}"
    if not exc.reason:
        return str(exc)
    reason = exc.reason
    for prefix in _ALERT_PREFIXES:
        if reason.startswith(prefix):
            return f"peer refused the handshake: {reason[len(prefix) :].lower().replace('_', ' ')}"
    return reason.lower().replace("_", " ")


def _describe_plain_text(data: bytes, server_side: bool) -> str:
    """Why ``data`` is not TLS, saying what it looks like if it is hbloop's."""
    if server_side:
        if len(data) >= HEADER_SIZE and data[4] == T_HELLO and data[5] == 0:
            return "peer sent plain text, not TLS: an hbloop HELLO (is the client missing --tls?)"
        return "peer sent plain text, not TLS"
    # A plain server answers a ClientHello with an hbloop ERROR: relay what it said.
    try:
        frames = FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(data)
    except RemoteProtocolError:
        frames = []
    if frames and frames[0][0] == T_ERROR:
        try:
            code, message = parse_error(frames[0][1])
        except RemoteProtocolError:
            pass
        else:
            return f"server answered in plain text, not TLS: ERROR {code_name(code)} {message}"
    return "server answered in plain text, not TLS"


class _Records(Protocol):
    """The per-record calls of an ``ssl.SSLObject``: its own, or its C object's."""

    def read(self, size: int, buffer: memoryview, /) -> int: ...

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class TlsLayer:
    """One connection's TLS state: ciphertext in, plaintext out, and back.

    ``handshake_done`` turns True once the handshake has completed, ``peer_closed``
    once the peer's close_notify has arrived, and ``closed`` once ``close()`` was
    called; ``can_send`` while the handshake is done and the layer not closed.
    ``outgoing.pending`` counts the ciphertext the layer produced on its own and
    ``data_to_send()`` returns. Errors raise ``TlsError`` (the reason is one line);
    after one, ``data_to_send()`` may still hold an alert for the peer.
    """

    __slots__ = (
        "_incoming",
        "outgoing",
        "_tls",
        "_records",
        "_sniffed",
        "can_send",
        "closed",
        "handshake_done",
        "peer_closed",
    )

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        # A record read or written through the SSLObject runs a Python method that
        # only calls the C object it wraps (CPython's Lib/ssl.py): the C object's own
        # read and write, where there is one, spare the heartbeat two Python calls and
        # the SSLObject's instance dictionary. The SSLObject itself is still what
        # everything else goes through. (With a buffer, read returns the count, which
        # typeshed does not know.)
        self._records = cast(_Records, getattr(self._tls, _C_RECORDS, self._tls))
        self._sniffed = False  # whether the first bytes from the peer were looked at
        self.can_send = False
        self.closed = False
        self.handshake_done = False
        self.peer_closed = False

    # --- the handshake -------------------------------------------------------------

    def start(self) -> bytes:
        """Client side: begin the handshake; return the ClientHello to send."""
        self._advance_handshake()
        return self.data_to_send()

    def _advance_handshake(self) -> bool:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TlsError(describe_ssl_error(exc)) from None
        self.handshake_done = True
        self.can_send = not self.closed
        return True

    # --- data ------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take ciphertext from the peer; return all the plaintext it completes.

        ``receive_into`` with a buffer of its own, for callers that keep none.
        """
        buffer = bytearray(len(data) + MAX_RECORD_CIPHERTEXT)
        return bytes(buffer[: self.receive_into(data, memoryview(buffer))])

    def receive_into(self, data: bytes | bytearray | memoryview, buffer: memoryview) -> int:
        """Take ciphertext from the peer; decrypt all the plaintext it completes into
        ``buffer``, which must hold ``len(data) + MAX_RECORD_CIPHERTEXT`` bytes, and
        return its length: no bytes object per record, no join.

        Runs the handshake while it is pending. Every decrypted byte is returned, none
        is left inside OpenSSL. Afterwards, send ``data_to_send()`` if
        ``outgoing.pending``.
        """
        if not self.handshake_done:
            self._sniff(data)
            self._incoming.write(data)
            if not self._advance_handshake():
                return 0
            return self._read_into(buffer, 0)
        self._incoming.write(data)  # OpenSSL's copy of the ciphertext, the only one
        # One read (one record) is the common case, a heartbeat: read here, without
        # the loop of _read_into (a Python call).
        try:
            filled = self._records.read(MAX_RECORD_PLAINTEXT, buffer)
        except ssl.SSLWantReadError:
            return 0  # a partial record: OpenSSL keeps it for the next read
        except ssl.SSLZeroReturnError:
            self.peer_closed = True
            return 0
        except ssl.SSLError as exc:
            raise TlsError(describe_ssl_error(exc)) from None
        if not filled:  # close_notify
            self.peer_closed = True
        elif self._incoming.pending:
            return self._read_into(buffer, filled)  # more records came in the same read
        return filled

    def _sniff(self, data: bytes | bytearray | memoryview) -> None:
        """The first bytes from the peer: a TLS record, or NotTlsError."""
        if self._sniffed or not data:
            return
        self._sniffed = True
        if data[0] not in _TLS_CONTENT_TYPES or (len(data) > 1 and data[1] != _TLS_MAJOR_VERSION):
            plain = bytes(data)
            raise NotTlsError(_describe_plain_text(plain, self._tls.server_side), plain)

    def _read_into(self, buffer: memoryview, filled: int) -> int:
        """Decrypt every complete record in the incoming BIO into ``buffer`` after
        its first ``filled`` bytes; return the new length."""
        # The loop ends when the incoming BIO is empty, without the cost of a raised
        # SSLWantReadError in the common case; the exception only ends a partial
        # record. Receiving one heartbeat record over memory BIOs took 1.3-1.45 us this
        # way and 2.6-2.8 us ended by the exception (time.process_time over 200,000
        # records, three rounds, on the project's 2-core machine). No record's
        # plaintext is left inside OpenSSL for pending() to find: each read may take
        # MAX_RECORD_PLAINTEXT bytes, a whole record's (the buffer's size guarantees
        # that much room).
        read = self._records.read
        incoming = self._incoming
        while True:
            try:
                count = read(MAX_RECORD_PLAINTEXT, buffer[filled:] if filled else buffer)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            except ssl.SSLError as exc:
                raise TlsError(describe_ssl_error(exc)) from None
            if not count:  # close_notify
                self.peer_closed = True
                break
            filled += count
            if not incoming.pending:
                break
        return filled

    def send(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Encrypt ``plaintext``; return the ciphertext to send (with anything else
        the layer had to send first)."""
        if not self.can_send:
            raise RuntimeError("TLS layer cannot send: handshake pending or layer closed")
        self._records.write(plaintext)  # a memory BIO takes everything at once
        return self.outgoing.read()

    def data_to_send(self) -> bytes:
        """Ciphertext the layer produced on its own: handshake records, alerts,
        session tickets. b"" when there is none."""
        return self.outgoing.read() if self.outgoing.pending else b""

    def close(self) -> bytes:
        """Our close_notify, the first time once the handshake is done; b"" after."""
        if self.closed:
            return b""
        self.closed = True
        self.can_send = False
        if not self.handshake_done:
            return b""  # nothing to close: there is no session yet
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is written; we do not wait for the peer's
        except ssl.SSLError:
            return b""  # the session already failed; there is nothing to close cleanly
        return self.outgoing.read()

    # --- the peer ------------------------------------------------------------------

    def peer_certificate(self) -> Certificate | None:
        """The peer's verified certificate, or None (no handshake yet, or the peer
        sent none because none was asked for)."""
        if not self.handshake_done:
            return None
        return self._tls.getpeercert() or None

    @property
    def version(self) -> str | None:
        """The negotiated protocol version, such as "TLSv1.3"."""
        return self._tls.version()


# 1000 handshakes a second hold handshakes to about 40% of one core at 0.4 ms each,
# leaving the rest of it for established peers (19,000 of them pinging every 2 s take
# about 20%, docs/explanation/figures.md).
DEFAULT_HANDSHAKE_RATE = 1000.0

# The bucket holds a quarter of a second's worth (250 at the default rate): a burst of
# reconnects right after a restart is absorbed without refusals, and costs at most
# about 0.1 s of loop time.
HANDSHAKE_BURST_SECONDS = 0.25


class HandshakeLimiter:
    """A token bucket for new TLS handshakes, one per server process.

    A full handshake costs the server about 0.44 ms of CPU with an ECDSA certificate
    (``python -m bench --tls``'s server CPU per handshake; docs/explanation/figures.md,
    "TLS"). Without a cap, a reconnect storm of thousands of clients would
    take the loop away from the heartbeats of peers already connected for seconds; with
    one, handshakes over the rate are refused at once and their clients retry after a
    jittered back-off.
    ``allow(now)`` takes a token if there is one; ``refused`` counts the others.
    """

    __slots__ = ("rate", "burst", "refused", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a handshake limit needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.refused = 0
        self._tokens = burst
        self._updated = now

    @classmethod
    def per_second(cls, rate: float, now: float) -> HandshakeLimiter:
        """``rate`` handshakes a second, with a burst of HANDSHAKE_BURST_SECONDS' worth
        (at least one)."""
        return cls(rate, max(1.0, rate * HANDSHAKE_BURST_SECONDS), now)

    def allow(self, now: float) -> bool:
        tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        self.refused += 1
        return False

"""The sans-IO TLS layer: two layers talking through memory, with real certificates."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from hbloop.core.protocol import FrameDecoder, RemoteProtocolError
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    PING_FRAME,
    FrameType,
    encode_data,
    encode_error,
    encode_hello,
)
from hbloop.net import tls
from hbloop.net.tls import (
    HandshakeLimiter,
    NotTlsError,
    TlsConfigError,
    TlsError,
    TlsLayer,
    client_context,
    server_context,
)

from pki import Pki, handshake


def server_layer(pki: Pki, client_ca: Path | None = None, issued: str = "server") -> TlsLayer:
    cert = getattr(pki, issued)
    return TlsLayer(server_context(cert.cert, cert.key, client_ca), server_side=True)


def client_layer(
    pki: Pki,
    ca: Path | None = None,
    cert: str | None = None,
    hostname: str = "127.0.0.1",
    maximum: ssl.TLSVersion | None = None,
) -> TlsLayer:
    issued = getattr(pki, cert) if cert else None
    context = client_context(
        ca or pki.ca, issued.cert if issued else None, issued.key if issued else None
    )
    if maximum is not None:
        context.maximum_version = maximum
    return TlsLayer(context, server_side=False, server_hostname=hostname)


@pytest.fixture
def pair(pki: Pki) -> tuple[TlsLayer, TlsLayer]:
    server, client = server_layer(pki), client_layer(pki)
    handshake(server, client)
    return server, client


# --- the handshake and data ---------------------------------------------------------


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2])
def test_handshake_then_frames_both_ways(pki: Pki, maximum: ssl.TLSVersion | None) -> None:
    server, client = server_layer(pki), client_layer(pki, maximum=maximum)
    assert not server.handshake_done
    handshake(server, client)
    assert server.version == ("TLSv1.2" if maximum else "TLSv1.3")
    hello = encode_hello("alice", 10_000, token="a.b.c")
    assert server.receive(client.send(hello)) == hello
    assert client.receive(server.send(PING_FRAME)) == PING_FRAME
    assert server.data_to_send() == client.data_to_send() == b""


def test_can_send_once_the_handshake_is_done_until_close(pki: Pki) -> None:
    server, client = server_layer(pki), client_layer(pki)
    assert not server.can_send and not client.can_send
    handshake(server, client)
    assert server.can_send and client.can_send
    client.receive(server.close())
    assert not server.can_send
    with pytest.raises(RuntimeError):
        server.send(PING_FRAME)


def test_records_through_the_sslobject_without_its_c_object(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Records go through the SSLObject's C object where CPython has one; an SSLObject
    # without it (another implementation, a later CPython) is used as it is.
    monkeypatch.setattr(tls, "_C_RECORDS", "_no_such_attribute")
    server, client = server_layer(pki), client_layer(pki)
    assert server._records is server._tls
    handshake(server, client)
    big = encode_data(b"z" * 40_000)  # three records
    assert server.receive(client.send(PING_FRAME + big)) == PING_FRAME + big
    assert client.receive(server.send(PING_FRAME)) == PING_FRAME


def test_ciphertext_byte_at_a_time(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, client = pair
    message = encode_data(b"x" * 1000)
    ciphertext = client.send(message)
    received = b"".join(server.receive(ciphertext[i : i + 1]) for i in range(len(ciphertext)))
    assert received == message


def test_a_full_record_is_read_whole(pair: tuple[TlsLayer, TlsLayer]) -> None:
    # receive() stops when the incoming BIO is empty, without asking pending(): each
    # read takes up to MAX_RECORD_PLAINTEXT bytes, a whole record, so none of a
    # record's plaintext can stay decrypted inside OpenSSL.
    server, client = pair
    count = tls.MAX_RECORD_PLAINTEXT // len(PING_FRAME)
    pings = PING_FRAME * count  # one record, as full as whole frames make it
    plaintext = server.receive(client.send(pings))
    assert plaintext == pings
    assert FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(plaintext) == [(FrameType.PING, b"")] * count
    assert server._tls.pending() == 0


def test_several_records_in_one_receive(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, client = pair
    big = encode_data(b"y" * 40_000)  # three records
    ciphertext = client.send(PING_FRAME) + client.send(big) + client.send(PING_FRAME)
    assert server.receive(ciphertext) == PING_FRAME + big + PING_FRAME
    assert server._tls.pending() == 0


def test_a_partial_record_waits_for_the_rest(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, client = pair
    record = client.send(PING_FRAME)
    ciphertext = record + client.send(PING_FRAME)
    assert server.receive(ciphertext[: len(record) + 3]) == PING_FRAME
    assert server.receive(ciphertext[len(record) + 3 :]) == PING_FRAME


# --- closing --------------------------------------------------------------------------


def test_close_notify_is_sent_once(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, client = pair
    close_notify = server.close()
    assert close_notify
    assert server.close() == b""
    with pytest.raises(RuntimeError):
        server.send(PING_FRAME)
    assert not client.peer_closed
    assert client.receive(close_notify) == b""
    assert client.peer_closed


def test_frames_before_close_notify_are_delivered(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, client = pair
    assert client.receive(server.send(PING_FRAME) + server.close()) == PING_FRAME
    assert client.peer_closed


def test_no_close_notify_before_the_handshake(pki: Pki) -> None:
    layer = server_layer(pki)
    assert layer.close() == b""
    assert layer.close() == b""
    with pytest.raises(RuntimeError):
        client_layer(pki).send(PING_FRAME)


# --- certificates -------------------------------------------------------------------------


def test_the_server_sees_the_client_certificate(pki: Pki) -> None:
    server, client = server_layer(pki, client_ca=pki.ca), client_layer(pki, cert="alice")
    assert server.peer_certificate() is None  # no handshake yet
    handshake(server, client)
    certificate = server.peer_certificate()
    assert certificate is not None
    assert certificate["subject"] == ((("commonName", "alice"),),)
    server_certificate = client.peer_certificate()
    assert server_certificate is not None
    assert ("IP Address", "127.0.0.1") in server_certificate["subjectAltName"]


def test_without_client_ca_no_client_certificate_is_asked(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, _client = pair
    assert server.peer_certificate() is None


@pytest.mark.parametrize(
    ("issued", "trusted", "hostname", "reason"),
    [
        ("server", "rogue_ca", "127.0.0.1", "certificate verify failed: unknown CA"),
        ("expired_server", "ca", "127.0.0.1", "certificate verify failed: certificate has expired"),
        (
            "server",
            "ca",
            "example.com",
            "certificate verify failed: Hostname mismatch, certificate is not valid for "
            "'example.com'.",
        ),
    ],
    ids=["unknown-ca", "expired", "wrong-host"],
)
def test_the_client_refuses_a_bad_server_certificate(
    pki: Pki, issued: str, trusted: str, hostname: str, reason: str
) -> None:
    server = server_layer(pki, issued=issued)
    client = client_layer(pki, ca=getattr(pki, trusted), hostname=hostname)
    with pytest.raises(TlsError) as info:
        handshake(server, client)
    assert info.value.reason == reason
    # The client's alert tells the server why.
    with pytest.raises(TlsError) as told:
        server.receive(client.data_to_send())
    assert told.value.reason.startswith("peer refused the handshake: ")


@pytest.mark.parametrize(
    ("cert", "server_reason", "client_reason"),
    [
        (
            "rogue_alice",
            "certificate verify failed: unknown CA",
            "peer refused the handshake: unknown ca",
        ),
        (
            None,
            "peer did not return a certificate",
            "peer refused the handshake: certificate required",
        ),
    ],
    ids=["untrusted-client-certificate", "no-client-certificate"],
)
def test_the_server_refuses_a_bad_client_certificate(
    pki: Pki, cert: str | None, server_reason: str, client_reason: str
) -> None:
    server, client = server_layer(pki, client_ca=pki.ca), client_layer(pki, cert=cert)
    with pytest.raises(TlsError) as info:
        handshake(server, client)
    assert info.value.reason == server_reason
    # In TLS 1.3 the client finishes first and learns of the refusal from the alert
    # that the server left to send.
    assert client.handshake_done
    with pytest.raises(TlsError) as told:
        client.receive(server.data_to_send())
    assert told.value.reason == client_reason


def test_a_tampered_record_is_an_error(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, client = pair
    ciphertext = bytearray(client.send(PING_FRAME))
    ciphertext[-1] ^= 0x01
    with pytest.raises(TlsError) as info:
        server.receive(ciphertext)
    assert "bad record mac" in info.value.reason


# --- the wrong protocol -------------------------------------------------------------------


def test_a_plain_hbloop_client_on_a_tls_port(pki: Pki) -> None:
    hello = encode_hello("alice", 0)
    with pytest.raises(NotTlsError) as info:
        server_layer(pki).receive(hello)
    assert info.value.reason == (
        "peer sent plain text, not TLS: an hbloop HELLO (is the client missing --tls?)"
    )
    assert info.value.data == hello


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x09garbage", b"\x00"])
def test_other_plain_text_on_a_tls_port(pki: Pki, data: bytes) -> None:
    with pytest.raises(NotTlsError) as info:
        server_layer(pki).receive(data)
    assert info.value.reason == "peer sent plain text, not TLS"


def test_a_tls_client_on_a_plain_port_relays_the_servers_error(pki: Pki) -> None:
    client = client_layer(pki)
    client_hello = client.start()
    # What a plain hbloop server answers to those bytes, as its decoder words it.
    with pytest.raises(RemoteProtocolError) as refused:
        FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(client_hello)
    answer = encode_error(refused.value.code, refused.value.message)
    with pytest.raises(NotTlsError) as info:
        client.receive(answer)
    assert info.value.reason == (
        "server answered in plain text, not TLS: ERROR RESERVED_BITS flags 0x01 must be "
        "zero; looks like TLS: this port speaks plain hbloop"
    )


# --- contexts -------------------------------------------------------------------------


def test_contexts_refuse_old_protocols(pki: Pki) -> None:
    server = server_context(pki.server.cert, pki.server.key)
    client = client_context(pki.ca)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_RENEGOTIATION
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert server.verify_mode == ssl.CERT_NONE
    assert server_context(pki.server.cert, pki.server.key, pki.ca).verify_mode == (
        ssl.CERT_REQUIRED
    )


def test_unusable_files_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsConfigError) as info:
        server_context(missing, pki.server.key)
    assert str(info.value) == (
        f"cannot load certificate {missing} with key {pki.server.key}: No such file or directory"
    )
    with pytest.raises(TlsConfigError) as info:
        server_context(pki.server.cert, pki.alice.key)
    assert str(info.value).endswith(f"{pki.alice.key} is not the key of {pki.server.cert}")
    with pytest.raises(TlsConfigError) as info:
        client_context(cafile=pki.server.key)
    assert str(info.value).startswith(f"cannot load CA certificates from {pki.server.key}: ")


# --- the handshake rate limit ----------------------------------------------------------------


def test_the_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = HandshakeLimiter(rate=4, burst=3, now=100.0)
    assert [limiter.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.refused == 1
    assert not limiter.allow(100.125)  # half a token has come back
    assert limiter.allow(100.25)
    # A long pause refills the bucket to the burst, no further.
    assert [limiter.allow(200.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.refused == 3


def test_the_limiter_needs_sane_settings() -> None:
    with pytest.raises(ValueError):
        HandshakeLimiter(rate=0, burst=10, now=0.0)
    with pytest.raises(ValueError):
        HandshakeLimiter(rate=10, burst=0.5, now=0.0)


def test_a_limiter_per_second_bursts_a_quarter_second_worth() -> None:
    assert HandshakeLimiter.per_second(1000, now=0.0).burst == 250
    slow = HandshakeLimiter.per_second(2, now=0.0)  # a quarter second is half a handshake
    assert slow.burst == 1
    assert [slow.allow(0.0), slow.allow(0.1), slow.allow(0.5)] == [True, False, True]

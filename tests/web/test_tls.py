"""TLS of the web console: 1.2 and 1.3 accepted, 1.1 and 1.0 refused by the server, plain HTTP gets nothing."""

from __future__ import annotations

import socket
import ssl
import warnings

import pytest

from .client import Served

pytestmark = [pytest.mark.guest]


def handshake(served: Served, version: ssl.TLSVersion) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(served.cert))
        ctx.minimum_version = version
        ctx.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old protocol at all
    with socket.create_connection(("127.0.0.1", served.info["port"]), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            return str(tls.version())


@pytest.mark.parametrize("version,name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_modern_tls_accepted(served: Served, version: ssl.TLSVersion, name: str) -> None:
    assert handshake(served, version) == name


@pytest.mark.parametrize("version", ["TLSv1_1", "TLSv1"])
def test_old_tls_refused(served: Served, version: str) -> None:
    with pytest.raises(ssl.SSLError) as info:
        handshake(served, getattr(ssl.TLSVersion, version))
    # This client did offer the old protocol (no local "no protocols available"); the server ended the
    # handshake (a protocol_version alert, or just closing: asyncio's TLS does not always flush the alert).
    assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value).upper(), info.value


def test_plain_http_gets_no_console(served: Served) -> None:
    """Plain HTTP gets no page and no console, and the server ends the connection by itself.

    A server that hangs fails here (the read times out). Checked by breaking it: a TCP listener that
    accepts and never answers, put in place of the served port, makes this test fail with "hung"."""
    for request in (b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                    b"GET /ws/vms/web1/console HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", served.info["port"]), timeout=30) as raw:
            raw.sendall(request)
            raw.settimeout(20)
            reply = b""
            try:
                while chunk := raw.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass  # closed with a reset: ended all the same
            except TimeoutError:
                pytest.fail(f"the server hung on plain HTTP instead of closing the connection (got {reply[:80]!r})")
        assert not reply.startswith(b"HTTP/"), reply[:200]
        assert b"login" not in reply


def test_certificate_fingerprint_is_the_served_one(served: Served) -> None:
    pem = ssl.get_server_certificate(("127.0.0.1", served.info["port"]))
    import hashlib

    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    assert served.info["fingerprint"].replace(":", "") == digest

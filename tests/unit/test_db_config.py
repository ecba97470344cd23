"""Connection settings: DATABASE_URL parsing, the RDS secret format, TLS modes, SQL literals."""

from __future__ import annotations

import ssl

import pytest

from payments.adapters.db import ConnectionParams, _ssl_context, bind, params_from_rds_secret, parse_database_url
from payments.errors import ConfigurationError
from payments.settings import DatabaseSettings, database_settings


def test_tcp_url_with_password_and_sslmode() -> None:
    p = parse_database_url("postgresql://app:p%40ss@db.example.com:6543/payments?sslmode=require")
    assert (p.user, p.password, p.host, p.port, p.database, p.unix_sock, p.ssl_mode) == (
        "app",
        "p@ss",
        "db.example.com",
        6543,
        "payments",
        None,
        "require",
    )
    assert "p@ss" not in repr(p)


def test_socket_url() -> None:
    p = parse_database_url("postgresql://postgres@/postgres?host=/tmp/pg&port=5433")
    assert p.unix_sock == "/tmp/pg/.s.PGSQL.5433" and p.host is None and p.ssl_mode == "disable"


def test_ssl_mode_setting_overrides_the_url_and_prefer_is_read_safely() -> None:
    assert parse_database_url("postgresql://u@h/d?sslmode=disable", "verify-full").ssl_mode == "verify-full"
    assert parse_database_url("postgresql://u@h/d?sslmode=prefer").ssl_mode == "require"


@pytest.mark.parametrize("url", ["mysql://u@h/d", "postgresql://u@h/d?sslmode=allow"])
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_database_url(url)


def test_rds_secret_format() -> None:
    secret = {
        "engine": "postgres",
        "username": "app",
        "password": "s3cret",
        "host": "x.rds.amazonaws.com",
        "port": 5432,
        "dbname": "payments",
    }
    p = params_from_rds_secret(secret)
    assert (p.user, p.password, p.host, p.database, p.ssl_mode) == (
        "app",
        "s3cret",
        "x.rds.amazonaws.com",
        "payments",
        "require",
    )
    with pytest.raises(ConfigurationError) as caught:
        params_from_rds_secret({"username": "app", "password": "s3cret"})
    assert "s3cret" not in str(caught.value)


def test_tls_modes() -> None:
    base = ConnectionParams(user="u", database="d")
    assert _ssl_context(base) is False
    require = _ssl_context(ConnectionParams(user="u", database="d", ssl_mode="require"))
    assert require is not None and require.verify_mode == ssl.CERT_NONE and not require.check_hostname
    full = _ssl_context(ConnectionParams(user="u", database="d", ssl_mode="verify-full"))
    assert full is not None and full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname


def test_settings_errors_never_echo_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@h/d")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError) as caught:
        database_settings()
    assert "hunter2" not in str(caught.value) and "DB_CONNECT_TIMEOUT" in str(caught.value)
    assert DatabaseSettings(DATABASE_URL="postgresql://u@h/d").url


def test_bind_renders_literals_and_leaves_casts() -> None:
    sql = bind("SELECT :a::text, :b, :c, :d WHERE x = :a", a="O'Reilly; DROP TABLE t", b=None, c=5, d=True)
    assert sql == "SELECT 'O''Reilly; DROP TABLE t'::text, NULL, 5, TRUE WHERE x = 'O''Reilly; DROP TABLE t'"
    with pytest.raises(KeyError):
        bind("SELECT :missing")

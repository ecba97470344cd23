"""Connection settings: DATABASE_URL parsing, the RDS secret format, TLS modes, SQL literals."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pg8000.exceptions import DatabaseError, InterfaceError

from payments.adapters.db import (
    RDS_CA_BUNDLE,
    ConnectionParams,
    Database,
    _ssl_context,
    bind,
    params_from_rds_secret,
    params_provider,
    parse_database_url,
)
from payments.errors import ConfigurationError, DatabaseUnavailable
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
    assert (p.user, p.password, p.host, p.database, p.ssl_mode, p.ssl_root_cert) == (
        "app",
        "s3cret",
        "x.rds.amazonaws.com",
        "payments",
        "verify-full",  # a deployed function: the server's certificate and name are checked
        None,  # the Amazon RDS bundle shipped in the layer
    )
    with pytest.raises(ConfigurationError) as caught:
        params_from_rds_secret({"username": "app", "password": "s3cret"})
    assert "s3cret" not in str(caught.value)


def test_tls_modes() -> None:
    base = ConnectionParams(user="u", database="d")
    assert _ssl_context(base) is False
    require = _ssl_context(ConnectionParams(user="u", database="d", ssl_mode="require"))
    assert isinstance(require, ssl.SSLContext)
    assert require.verify_mode == ssl.CERT_NONE and not require.check_hostname
    full = _ssl_context(ConnectionParams(user="u", database="d", ssl_mode="verify-full"))
    assert isinstance(full, ssl.SSLContext)
    assert full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname
    assert full.minimum_version >= ssl.TLSVersion.TLSv1_2
    # libpq's checks (chain, validity, host name), without Python 3.13's extra RFC 5280 strictness
    assert not full.verify_flags & ssl.VERIFY_X509_STRICT


def _ca_names(context: ssl.SSLContext | bool) -> list[str]:
    assert isinstance(context, ssl.SSLContext)
    return [dict(item[0] for item in ca["subject"])["commonName"] for ca in context.get_ca_certs()]


def test_verify_full_trusts_the_shipped_rds_bundle_unless_given_a_ca(tmp_path: Path) -> None:
    # No CA given: the Amazon RDS bundle in the layer, and nothing else (not the system's store)
    names = _ca_names(_ssl_context(ConnectionParams(user="u", database="d", ssl_mode="verify-full")))
    assert len(names) == RDS_CA_BUNDLE.read_text().count("BEGIN CERTIFICATE")
    assert "Amazon RDS eu-central-1 Root CA RSA2048 G1" in names
    # A CA file: that file alone
    own = tmp_path / "own.pem"
    own.write_bytes(RDS_CA_BUNDLE.read_bytes().split(b"\n\n")[1])  # one certificate of the bundle
    assert len(_ca_names(_ssl_context(ConnectionParams("u", "d", ssl_mode="verify-full", ssl_root_cert=str(own))))) == 1
    # `system`: the operating system's store (libpq 16's sslrootcert=system)
    system = _ssl_context(ConnectionParams("u", "d", ssl_mode="verify-full", ssl_root_cert="system"))
    assert isinstance(system, ssl.SSLContext) and system.check_hostname


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unusable_ca_bundle_is_a_configuration_error_naming_the_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError) as caught:
        _ssl_context(ConnectionParams("u", "d", ssl_mode="verify-full", ssl_root_cert=str(path)))
    assert str(path) in str(caught.value)


def test_sslrootcert_from_the_url_and_the_setting_that_wins_over_it() -> None:
    url = "postgresql://u@db.example.com/d?sslmode=verify-full&sslrootcert=/etc/ssl/supabase.crt"
    assert parse_database_url(url).ssl_root_cert == "/etc/ssl/supabase.crt"
    assert parse_database_url(url, None, "/opt/ca.pem").ssl_root_cert == "/opt/ca.pem"
    assert parse_database_url("postgresql://u@h/d?sslmode=verify-full").ssl_root_cert is None  # the RDS bundle
    secret = {"username": "u", "password": "p", "host": "h"}
    assert params_from_rds_secret(secret, "require", "/opt/ca.pem").ssl_root_cert == "/opt/ca.pem"
    assert params_from_rds_secret(secret, "require").ssl_mode == "require"


def test_tls_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.example.com/d?sslmode=require&sslrootcert=/url.pem")
    monkeypatch.setenv("DB_SSLMODE", "verify-full")
    monkeypatch.setenv("DB_SSLROOTCERT", "/setting.pem")
    params = params_provider(database_settings())(False)
    assert (params.ssl_mode, params.ssl_root_cert) == ("verify-full", "/setting.pem")
    # Template parameters left empty arrive as "": the defaults apply
    settings = DatabaseSettings(DB_SSLMODE="", DB_SSLROOTCERT="", DATABASE_URL="postgresql://u@h/d")
    assert settings.ssl_mode is None and settings.ssl_root_cert is None


def test_no_tls_on_a_unix_socket() -> None:
    with pytest.raises(ConfigurationError):
        parse_database_url("postgresql://u@/d?host=/tmp&sslmode=require")
    with pytest.raises(ConfigurationError):
        parse_database_url("postgresql://u@/d?host=/tmp", "verify-full")
    assert parse_database_url("postgresql://u@/d?host=/tmp&sslmode=prefer").ssl_mode == "disable"


def test_settings_errors_never_echo_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@h/d")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError) as caught:
        database_settings()
    assert "hunter2" not in str(caught.value) and "DB_CONNECT_TIMEOUT" in str(caught.value)
    assert DatabaseSettings(DATABASE_URL="postgresql://u@h/d").url


def test_bind_renders_literals_and_leaves_casts() -> None:
    sql = bind("SELECT :a::text, :b, :c, :d WHERE x = :a", a="O'Reilly; DROP TABLE t", b=None, c=5, d=True)
    assert sql == "SELECT E'O''Reilly; DROP TABLE t'::text, NULL, (5), TRUE WHERE x = E'O''Reilly; DROP TABLE t'"
    with pytest.raises(KeyError):
        bind("SELECT :missing")


def test_a_url_without_sslmode_is_verified_unless_it_is_this_machine() -> None:
    from payments.adapters.db import parse_database_url

    remote = parse_database_url("postgresql://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres")
    assert remote.ssl_mode == "verify-full"
    assert parse_database_url("postgresql://u@localhost:5432/db").ssl_mode == "disable"
    assert parse_database_url("postgresql://u@127.0.0.1/db").ssl_mode == "disable"
    assert parse_database_url("postgresql://u@/db?host=/run/postgresql").ssl_mode == "disable"
    assert parse_database_url("postgresql://u@db.example.com/db?sslmode=require").ssl_mode == "require"


def _masked_auth_failure(state: str) -> InterfaceError:
    """What pg8000 raises when its close() fails while it handles the server's FATAL: a network error whose
    context is the server's answer."""
    try:
        try:
            raise DatabaseError({"S": "FATAL", "C": state, "M": 'password authentication failed for user "app"'})
        except DatabaseError:
            raise InterfaceError("network error") from None  # noqa: B904 - pg8000's own shape: context, no cause
    except InterfaceError as masked:
        masked.__suppress_context__ = False
        return masked


@pytest.mark.parametrize("masked", [False, True], ids=["server error", "masked by a network error"])
def test_a_failed_login_reads_the_secret_again_even_when_masked(masked: bool) -> None:
    # Given a login refused as a rotated password is (28P01), possibly masked by pg8000's close()
    refreshes: list[bool] = []

    def params(refresh: bool) -> ConnectionParams:
        refreshes.append(refresh)
        return parse_database_url("postgresql://app:pw@db.example.test/payments", ssl_mode="disable")

    def refused(*_: object, **__: object) -> None:
        error = _masked_auth_failure("28P01")
        raise error if masked else error.__context__  # type: ignore[misc]

    db = Database(params, connect=refused)  # type: ignore[arg-type]
    # When the function connects
    with pytest.raises(DatabaseUnavailable) as raised:
        db.run("SELECT 1")
    # Then the secret was read again once (refresh) before giving up, and the reason is the server's
    assert refreshes == [False, True]
    assert "password authentication failed" in raised.value.message


def test_bind_never_rewrites_inside_literals_comments_or_casts() -> None:
    # Given a statement whose strings, identifiers and comments hold text that looks like placeholders
    sql = (
        "SELECT ':a', E'it\\'s :a', 'o''clock :a', \"col:a\", $$ :a $$, $tag$ :a $tag$, x::text, "
        "-- :a in a comment\n /* :a */ :a::uuid, :b"
    )
    rendered = bind(sql, a="11111111-1111-4111-8111-111111111111", b=7)
    # Then only the two real placeholders are rendered, everything else is byte for byte as written
    assert rendered == (
        "SELECT ':a', E'it\\'s :a', 'o''clock :a', \"col:a\", $$ :a $$, $tag$ :a $tag$, x::text, "
        "-- :a in a comment\n /* :a */ E'11111111-1111-4111-8111-111111111111'::uuid, (7)"
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("inf"), TypeError),
        (1.5, TypeError),
        ({"a": 1}, TypeError),
        ([1], TypeError),
        (b"bytes", TypeError),
        (Decimal("NaN"), ValueError),
        (datetime(2026, 1, 1), ValueError),  # naive: ambiguous
        ("nul\x00", ValueError),
    ],
    ids=["inf", "float", "dict", "list", "bytes", "nan", "naive-datetime", "nul"],
)
def test_bind_accepts_only_the_types_the_project_binds(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        bind("SELECT :v", v=value)


def test_bind_renders_an_aware_datetime_as_a_timestamptz() -> None:
    assert bind("SELECT :t", t=datetime(2026, 11, 26, 14, 0, tzinfo=UTC)) == (
        "SELECT (E'2026-11-26T14:00:00+00:00'::timestamptz)"
    )

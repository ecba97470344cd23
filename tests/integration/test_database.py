"""The pg8000 adapter against real PostgreSQL: literals, reconnects, transactions, secrets."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from payments.adapters.db import Database, bind, default_database, literal, parse_database_url
from payments.errors import DatabaseUnavailable
from payments.idempotency import PostgresPersistenceLayer
from tests.support.pg import connect, database
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    params = parse_database_url(database_url)
    if params.unix_sock is None:
        pytest.skip("the TCP proxy fronts the embedded server's Unix socket")
    p = TcpProxy(params.unix_sock)
    yield p
    p.close()


@pytest.mark.parametrize(
    "value",
    ["O'Reilly", "back\\slash", "$$dollar$$", "שלום עולם", "emoji 🎉", "semi; DROP TABLE payments; --", "\n\t"],
)
def test_literals_round_trip_exactly(db: Database, value: str) -> None:
    assert db.run(bind("SELECT :v::text", v=value)) == [[value]]


def test_an_aware_datetime_round_trips_exactly(db: Database) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    israel = timezone(timedelta(hours=2))
    for moment in (datetime(2026, 11, 26, 14, 0, 5, 123456, tzinfo=UTC), datetime(2026, 3, 27, 1, 30, tzinfo=israel)):
        assert db.run(bind("SELECT :t = :u::timestamptz, :t", t=moment, u=moment.isoformat())) == [[True, moment]]


def test_no_session_state_outside_a_transaction(db: Database) -> None:
    # Given the idempotency layer has done its work on this connection
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

    @idempotent_function(
        data_keyword_argument="order",
        config=IdempotencyConfig(event_key_jmespath="id"),
        persistence_store=PostgresPersistenceLayer(database=db),
    )
    def fn(order: dict) -> dict:
        return {"ok": True}

    fn(order={"id": "1"})
    fn(order={"id": "1"})
    # Then nothing was left in the session for a pooler to trip over: no prepared statements, no open transaction
    assert db.run("SELECT count(*) FROM pg_prepared_statements") == [[0]]
    assert db.run("SELECT now() = statement_timestamp()") == [[True]]  # autocommit: no transaction spans statements


def test_connection_cut_by_a_proxy_reconnects_once(proxy: TcpProxy, database_url: str) -> None:
    # Given a warm connection over TCP
    name = parse_database_url(database_url).database
    db = database(f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}")
    assert db.run("SELECT 1") == [[1]]
    # When the network drops it without a word / Then the next statement reconnects and runs
    proxy.cut_all()
    assert db.run("SELECT 2") == [[2]]
    assert db.connects == 2
    db.close()


def test_break_inside_a_transaction_is_an_error_and_leaves_nothing(db: Database, database_url: str) -> None:
    admin = connect(database_url)
    # When the connection is killed between two statements of one transaction
    with pytest.raises(DatabaseUnavailable), db.transaction() as tx:
        tx.run("INSERT INTO rate_limits (bucket, window_start, count) VALUES ('t', now(), 1)")
        pid = tx.run("SELECT pg_backend_pid()")[0][0]
        admin.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        time.sleep(0.1)
        tx.run("UPDATE rate_limits SET count = 2")
    # Then nothing was committed, and the next statement reconnects
    assert db.run("SELECT count(*) FROM rate_limits") == [[0]]
    admin.close()


def test_a_connection_to_a_server_turned_read_only_is_dropped_and_the_write_sent_anew(db: Database) -> None:
    # Given a connection kept from before a failover, now to a server that is read-only (here: this session only)
    db.run("SET default_transaction_read_only = on")
    # When a write is sent on it / Then the server's refusal (25006) drops it, and the write goes out once more on a
    # fresh connection (to whatever server the name now names): it is written, no error
    assert db.run("INSERT INTO rate_limits (bucket, window_start, count) VALUES ('ro', now(), 1) RETURNING count") == [
        [1]
    ]
    assert (db.connects, db.resent) == (2, 1)


def test_a_transaction_refused_by_a_read_only_server_is_not_yet_and_the_next_one_reconnects(db: Database) -> None:
    db.run("SET default_transaction_read_only = on")
    # A read-only server refuses a transaction's write: nothing was written, an outage of ours ("not yet"), never a
    # statement refused for good (which a callback's path counts and alarms as CallbackNotSettled)
    with (
        pytest.raises(DatabaseUnavailable, match=r"not committed: the server is read-only \(25006\)"),
        db.transaction() as tx,
    ):
        tx.run("INSERT INTO rate_limits (bucket, window_start, count) VALUES ('ro', now(), 1)")
    with db.transaction() as tx:
        tx.run("INSERT INTO rate_limits (bucket, window_start, count) VALUES ('ro', now(), 2)")
    assert db.run("SELECT count FROM rate_limits WHERE bucket = 'ro'") == [[2]]
    assert db.connects == 2


def test_error_inside_a_transaction_rolls_back(db: Database) -> None:
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.run("INSERT INTO rate_limits (bucket, window_start, count) VALUES ('t', now(), 1)")
        raise RuntimeError("business rule failed")
    assert db.run("SELECT count(*) FROM rate_limits") == [[0]]
    assert db.connects == 1  # the connection survived and is reused


def test_credentials_from_a_secrets_manager_secret_in_rds_format(
    proxy: TcpProxy, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = parse_database_url(database_url).database
    with mock_aws():
        # Given an RDS-format secret and DB_SECRET_ARN (which wins over a DATABASE_URL)
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(
            Name="payments/db",
            SecretString=json.dumps(
                {
                    "engine": "postgres",
                    "username": "postgres",
                    "password": "unused-with-trust",
                    "host": "127.0.0.1",
                    "port": proxy.port,
                    "dbname": name,
                }
            ),
        )["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("DB_SECRET_ARN", arn)
        monkeypatch.setenv("DB_SSLMODE", "disable")
        monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nowhere")
        # When the environment's database is used / Then it connected where the secret says
        assert default_database().run("SELECT current_database()") == [[name]]
        # And a warm invocation reuses the connection
        default_database().run("SELECT 1")
        assert default_database().connects == 1


def test_unreadable_secret_is_database_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("DB_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:missing-AbCdEf")
        with pytest.raises(DatabaseUnavailable):
            default_database().run("SELECT 1")


@pytest.fixture
def password_role(database_url: str) -> Iterator[str]:
    """A role that must log in with a password (the test cluster trusts everyone else)."""
    admin = connect(database_url)
    hba = Path(admin.run("SHOW hba_file")[0][0])
    if not os.access(hba, os.W_OK):
        admin.close()
        pytest.skip("needs write access to the server's pg_hba.conf")
    original = hba.read_text()
    admin.run("DROP ROLE IF EXISTS rotating_app")
    admin.run("CREATE ROLE rotating_app LOGIN PASSWORD 'old-Pa55word'")
    hba.write_text("local all rotating_app scram-sha-256\nhost all rotating_app all scram-sha-256\n" + original)
    admin.run("SELECT pg_reload_conf()")
    time.sleep(0.2)
    try:
        yield "rotating_app"
    finally:
        hba.write_text(original)
        admin.run("SELECT pg_reload_conf()")
        admin.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rotating_app'")
        time.sleep(0.1)
        admin.run("DROP ROLE IF EXISTS rotating_app")
        admin.close()


def rds_secret_in_use(
    monkeypatch: pytest.MonkeyPatch, secret_name: str, role: str, port: int, dbname: str
) -> tuple[Any, str, dict[str, Any]]:
    """An RDS-format secret (in moto, which the caller has started) for `role`'s old password, that the functions'
    database reads: its client, ARN and value."""
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    secret = {
        "engine": "postgres",
        "username": role,
        "password": "old-Pa55word",
        "host": "127.0.0.1",
        "port": port,
        "dbname": dbname,
    }
    arn = client.create_secret(Name=secret_name, SecretString=json.dumps(secret))["ARN"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    monkeypatch.setenv("DB_SSLMODE", "disable")
    return client, arn, secret


def test_rotated_password_is_read_again_after_an_auth_failure(
    proxy: TcpProxy,
    database_url: str,
    password_role: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = parse_database_url(database_url).database
    admin = connect(database_url)
    with mock_aws():
        # Given a warm connection made with the secret's current password (cached by the function)
        client, arn, secret = rds_secret_in_use(monkeypatch, "payments/rotating", password_role, proxy.port, name)
        assert default_database().run("SELECT current_user") == [[password_role]]

        # When the secret is rotated (new password in the database and the secret) and the
        # connection drops, while the function still holds the old value in its cache
        admin.run(f"ALTER ROLE {password_role} PASSWORD 'new-Pa55word'")
        client.put_secret_value(SecretId=arn, SecretString=json.dumps({**secret, "password": "new-Pa55word"}))
        admin.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :u", u=password_role)
        time.sleep(0.1)

        # Then the next statement fails to log in with the cached password, reads the secret again, and works
        assert default_database().run("SELECT current_user") == [[password_role]]
        assert default_database().connects == 2
    admin.close()
    # And neither password appeared in a log line or on the console
    seen = caplog.text + "".join(capsys.readouterr())
    assert "Pa55word" not in seen


def test_connection_errors_never_carry_the_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = database(f"postgresql://app:Secr3t-Pa55@/postgres?host={tmp_path}&port=1")
    with pytest.raises(DatabaseUnavailable) as caught:
        db.run("SELECT 1")
    chain = [caught.value, caught.value.__cause__, caught.value.__context__]
    assert all("Secr3t-Pa55" not in repr(e) for e in chain)
    assert "Secr3t-Pa55" not in caplog.text


HOSTILE_TEXT = [
    "plain",
    "it's",
    "back\\slash",
    "\\'; DROP TABLE payments; --",
    "\\\\'; SELECT pg_sleep(5); --",
    "E'\\x41'",
    "שלום",
    "trailing\\",
]


@pytest.mark.parametrize("setting", ["on", "off"])
def test_bound_values_mean_the_same_whatever_the_session_says(db: Database, setting: str) -> None:
    # Given a session whose standard_conforming_strings was changed after connect (a pooled session)
    db.run(f"SET standard_conforming_strings = {setting}")
    db.run("CREATE TEMP TABLE echo (t text, n numeric)")
    # When hostile text and negative numbers are bound next to a minus sign
    for text in HOSTILE_TEXT:
        [[t, n]] = db.run(bind("SELECT :t::text, 1-:n", t=text, n=-5))
        # Then each comes back exactly as given, and no second statement ran
        assert (t, n) == (text, 6)
        db.run(bind("INSERT INTO echo (t, n) VALUES (:t, :n)", t=text, n=Decimal("-49.90")))
    assert db.run("SELECT t FROM echo ORDER BY ctid") == [[t] for t in HOSTILE_TEXT]
    assert db.run("SELECT count(*) FROM payments") == [[0]]


def test_literals_refuse_what_cannot_be_sent_safely() -> None:
    with pytest.raises(ValueError):
        literal("a\x00b")
    with pytest.raises(TypeError):
        literal(1.5)
    assert literal(None) == "NULL" and literal(True) == "TRUE" and literal(-3) == "(-3)"
    assert literal("a'b\\c") == "E'a''b\\\\c'"


def test_a_failed_connection_is_counted_for_the_alarm(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from payments.http import error_response
    from payments.observability import metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "PaymentsTest")
    metrics.namespace = "PaymentsTest"
    # Given a database that does not exist
    db = database(database_url.rsplit("/", 1)[0] + "/no_such_database")
    with pytest.raises(DatabaseUnavailable) as raised:
        db.run("SELECT 1")
    metrics.flush_metrics()
    # Then DatabaseConnectFailed is counted (the stack's alarm fires at one), and callers get a 503
    assert '"DatabaseConnectFailed"' in capsys.readouterr().out
    assert error_response(raised.value).status_code == 503


def test_the_stack_placeholder_secret_is_refused_with_a_clear_error() -> None:
    from payments.adapters.db import params_from_rds_secret
    from payments.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="placeholder"):
        params_from_rds_secret({"placeholder": "fill me", "username": "", "password": "", "host": ""})


def test_a_kept_row_description_reads_each_statement_as_pg8000_would(db: Database) -> None:
    """The connection keeps each row description it read: the same statement again reads the same, one with other
    columns (same count, other types or names) reads its own, and a reader registered afterwards is used."""
    import pg8000.native

    from payments.adapters import db as db_module

    assert db.run("SELECT 1::int AS a, 'x'::text AS b") == [[1, "x"]]
    assert db.run("SELECT 2::int AS a, 'y'::text AS b") == [[2, "y"]]
    assert db.run("SELECT 'z'::text AS a, 3::int AS b") == [["z", 3]]
    assert db.run("SELECT 4::bigint AS a, NULL::text AS b") == [[4, None]]
    assert db.run("SELECT 1 WHERE false") == []
    conn = db._connection()
    assert isinstance(conn, db_module.GuardedConnection)
    assert len(conn._descriptions) == 4
    conn.register_in_adapter(23, lambda text: f"int:{text}")  # int4
    assert conn._descriptions == {}
    assert db.run("SELECT 5::int AS a, 'w'::text AS b") == [["int:5", "w"]]
    conn.run("SET client_encoding TO 'LATIN1'")
    assert conn.run("SELECT 'é'::text AS a, 6::int AS b") == [["é", "int:6"]]
    conn.run("SET client_encoding TO 'UTF8'")
    assert conn.run("SELECT 'é'::text AS a, 6::int AS b") == [["é", "int:6"]]
    assert isinstance(conn, pg8000.native.Connection)


def test_a_connection_keeps_a_bounded_number_of_row_descriptions(db: Database) -> None:
    from payments.adapters import db as db_module

    for i in range(db_module._DESCRIPTIONS_KEPT + 10):
        assert db.run(f"SELECT {i} AS c{i}") == [[i]]
    assert len(db._connection()._descriptions) <= db_module._DESCRIPTIONS_KEPT

"""cleanup: what it purges and expires, what it never touches, its admin and debug endpoints."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pg8000.native
import pytest
from moto import mock_aws

from ops.lambda_context import LocalLambdaContext
from payments.adapters.cleanup_store import TELL_EVERY_MS, cleanup_steps, run_paced
from payments.adapters.db import ConnectionParams, Database, QueryError, parse_database_url
from payments.errors import DatabaseUnavailable
from payments.services import cleanup as cleanup_service
from payments.services.cleanup import CleanupPolicy, CleanupReport, run_cleanup
from tests.support.api import invoke, reset_function_state
from tests.support.faults import answer_lost
from tests.support.payments import Env
from tests.support.pg import connect, database
from tests.support.tcp_proxy import TcpProxy

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed-schema.sql"
ADMIN_TOKEN = "test-admin-token-0123456789"
CLEANUP = "CleanupFunction"
DEBUG = "DebugFunction"


@pytest.fixture
def production(empty_database_url: str) -> Iterator[tuple[str, Database]]:
    """The production database (seed rows) after migrations, plus records of every kind."""
    from ops.migrate import migrate

    conn = connect(empty_database_url)
    conn.run(SEED.read_text(encoding="utf-8"))
    conn.close()
    db = database(empty_database_url)
    migrate(db)
    now = int(time.time())
    db.run(f"""
        INSERT INTO payments (id, user_id, amount, status, created_at, review_reason) VALUES
          ('cccccccc-0000-4000-8000-000000000001', '22222222-2222-4222-8222-222222222222', 10, 'pending',
           now() - interval '3 hours', NULL),
          ('cccccccc-0000-4000-8000-000000000002', '22222222-2222-4222-8222-222222222222', 10, 'pending',
           now() - interval '10 minutes', NULL),
          ('cccccccc-0000-4000-8000-000000000003', '22222222-2222-4222-8222-222222222222', 10, 'pending',
           now() - interval '5 hours', 'saved-card charge outcome unknown (gateway unavailable)');
        -- An old pending payment a retry reused: its saved-card charge was marked a moment ago (Hyp being asked).
        INSERT INTO payments (id, user_id, amount, status, created_at, charge_attempt_id, charge_attempted_at) VALUES
          ('cccccccc-0000-4000-8000-000000000004', '22222222-2222-4222-8222-222222222222', 10, 'pending',
           now() - interval '5 hours', 'dddddddd-0000-4000-8000-000000000004', now() - interval '5 seconds');
        INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash, created_at, updated_at) VALUES
          ('fn#expired-1', 'completed', {now - 10}, 'h', now(), now()),
          ('fn#expired-2', 'completed', {now - 3600}, 'h', now(), now()),
          ('fn#expired-3', 'pending', {now - 1}, 'h', now(), now()),
          ('fn#live', 'completed', {now + 3600}, 'h', now(), now());
        INSERT INTO idempotency_keys (key, status, created_at, updated_at) VALUES
          ('web-recent-done', 'completed', now() - interval '1 hour', now() - interval '1 hour'),
          ('web-old-pending', 'pending', now() - interval '3 days', now() - interval '3 days'),
          ('web-old-no-status', NULL, now() - interval '30 days', now() - interval '30 days');
        INSERT INTO idempotency_keys (key, status, payment_id, created_at, updated_at) VALUES
          ('web-old-done-open-payment', 'completed', 'cccccccc-0000-4000-8000-000000000003',
           now() - interval '3 days', now() - interval '3 days');
        INSERT INTO rate_limits (bucket, window_start, count) VALUES
          ('old', now() - interval '2 days', 3), ('current', now(), 1);
    """)
    yield empty_database_url, db
    db.close()


def keys(db: Database) -> set[str]:
    return {r[0] for r in db.run("SELECT key FROM idempotency_keys")}


def statuses(db: Database) -> dict[str, str]:
    return {r[0]: r[1] for r in db.run("SELECT id::text, status FROM payments")}


WEB_APP_RETENTION = CleanupPolicy(web_app_retention_seconds=24 * 3600)
WEB_APP_KEYS = {
    "web-recent-done",
    "web-old-pending",
    "web-old-no-status",
    "web-old-done-open-payment",
    "web-9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
}


def test_by_default_the_web_app_rows_are_all_kept(production: tuple[str, Database]) -> None:
    _, db = production
    # Given the default policy (no retention for the web app's own rows, as the web app keeps them)
    report = run_cleanup(db)
    # Then none of them is purged, however old or finished
    assert report.purged_web_app_records == 0
    assert keys(db) == {"fn#live", "web-3f2c1e0a-7b7d-4d8e-9a51-1c1d2e3f4a5b"} | WEB_APP_KEYS


def test_purges_and_expires_exactly_what_it_should(production: tuple[str, Database]) -> None:
    _, db = production
    report = run_cleanup(db, policy=WEB_APP_RETENTION)
    assert report.as_dict() == {
        "purged_idempotency_records": 3,
        "purged_web_app_records": 1,
        "expired_payments": 2,
        "payments_flagged_for_review": 1,
        "refunds_outcome_unknown": 0,
        "purged_rate_limit_windows": 1,
        "complete": True,
        "counts_exact": True,
    }
    # Expired layer records gone; the live one kept. The web app's: the 10-day-old finished row purged; the
    # recent finished one, every pending one, one with no status and one naming a payment in review kept.
    assert keys(db) == {"fn#live"} | WEB_APP_KEYS
    payments = statuses(db)
    assert payments["cccccccc-0000-4000-8000-000000000001"] == "expired"  # 3 h pending
    assert payments["cccccccc-0000-4000-8000-000000000002"] == "pending"  # 10 min: Hyp's page may still be open
    assert payments["cccccccc-0000-4000-8000-000000000003"] == "needs_review"  # unknown charge: a human looks
    assert payments["cccccccc-0000-4000-8000-000000000004"] == "pending"  # its charge is in flight: not stale
    assert payments["bbbbbbbb-0000-4000-8000-000000000002"] == "expired"  # the production seed's 2-hour-old one
    assert payments["bbbbbbbb-0000-4000-8000-000000000001"] == "completed"
    # And running again does nothing more
    assert run_cleanup(db, policy=WEB_APP_RETENTION).as_dict() == {
        "purged_idempotency_records": 0,
        "purged_web_app_records": 0,
        "expired_payments": 0,
        "payments_flagged_for_review": 0,
        "refunds_outcome_unknown": 0,
        "purged_rate_limit_windows": 0,
        "complete": True,
        "counts_exact": True,
    }


def test_works_in_bounded_batches(production: tuple[str, Database], counting) -> None:  # noqa: ANN001
    # Given a trigger noting the transaction of every row the cleanup deletes or updates
    url, db = production
    note_transactions(db)
    counted = database(url, counting)
    report = run_cleanup(counted, policy=CleanupPolicy(batch_size=1, web_app_retention_seconds=24 * 3600))
    assert report.purged_idempotency_records == 3 and report.expired_payments == 2
    # Then every batch of one row was a transaction of its own, the purges' (on the server) as the payments'
    per_table = db.run("SELECT tbl, count(*), count(DISTINCT xid) FROM row_transactions GROUP BY tbl ORDER BY tbl")
    assert per_table == [["idempotency_keys", 4, 4], ["payments", 3, 3], ["rate_limits", 1, 1]]
    # And the payments' steps sent a statement per batch (2 expired + an empty one, 1 flagged + an empty one), the
    # purges one a step (its block)
    assert counting.round_trips >= (2 + 1) + (1 + 1) + 3
    counted.close()


def note_transactions(db: Database) -> None:
    """A trigger on the cleanup's tables noting the transaction of every row deleted or updated."""
    db.run("""
        CREATE TABLE row_transactions (tbl text, xid xid8, at timestamptz);
        CREATE FUNCTION note_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO row_transactions VALUES (TG_TABLE_NAME, pg_current_xact_id(), clock_timestamp());
          RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END $$;
        CREATE TRIGGER note_xid BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION note_transaction();
        CREATE TRIGGER note_xid BEFORE UPDATE ON payments FOR EACH ROW EXECUTE FUNCTION note_transaction();
        CREATE TRIGGER note_xid BEFORE DELETE ON rate_limits FOR EACH ROW EXECUTE FUNCTION note_transaction();
    """)


def record_statements(db: Database) -> list[str]:
    """Every statement `db` sends from now on, in order (the list fills as it runs)."""
    sent: list[str] = []
    real_execute = db._execute

    def execute(conn: object, sql: str) -> list:
        sent.append(sql)
        return real_execute(conn, sql)  # type: ignore[arg-type]

    db._execute = execute  # type: ignore[method-assign]
    return sent


def slow_deletes(db: Database, seconds: float) -> None:
    """Every row deleted from the idempotency table takes `seconds` (a trigger sleeping)."""
    db.run(f"""
        CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep({seconds}); RETURN OLD; END $$;
        CREATE TRIGGER slow BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION slow_delete();
    """)


def test_stops_when_the_time_budget_is_spent(production: tuple[str, Database]) -> None:
    _, db = production
    report = run_cleanup(db, time_left_ms=lambda: 1_000, reserve_ms=5_000)
    assert report.complete is False and report.purged_idempotency_records == 0


def test_never_touches_a_payment_being_completed_and_never_waits_on_a_claim(production: tuple[str, Database]) -> None:
    url, db = production
    # Given a callback holds the stale payment's row (completing it), and a claim holds an expired record
    holder = connect(url)
    holder.run("BEGIN")
    holder.run("SELECT 1 FROM payments WHERE id = 'cccccccc-0000-4000-8000-000000000001' FOR UPDATE")
    holder.run("SELECT 1 FROM idempotency_keys WHERE key = 'fn#expired-1' FOR UPDATE")
    # When the cleanup runs / Then it finishes without waiting, skipping exactly those rows
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(report=run_cleanup(database(url))))
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "cleanup waited on a lock"
    assert result["report"].expired_payments == 1 and result["report"].purged_idempotency_records == 2
    assert statuses(db)["cccccccc-0000-4000-8000-000000000001"] == "pending"
    assert "fn#expired-1" in keys(db)
    holder.run("ROLLBACK")
    holder.close()


def test_concurrent_runs_do_the_work_once(production: tuple[str, Database]) -> None:
    url, db = production
    reports: list = []
    barrier = threading.Barrier(4)

    def run() -> None:
        own = database(url)
        barrier.wait()
        reports.append(run_cleanup(own, policy=CleanupPolicy(batch_size=1, web_app_retention_seconds=24 * 3600)))
        own.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r.purged_idempotency_records for r in reports) == 3
    assert sum(r.expired_payments for r in reports) == 2
    assert sum(r.purged_web_app_records for r in reports) == 1


def test_purges_commit_lazily_and_payment_changes_durably(production: tuple[str, Database]) -> None:
    # Given triggers that note the commit mode of every row the cleanup deletes or updates
    _, db = production
    db.run("""
        CREATE TABLE commit_modes (tbl text, op text, mode text);
        CREATE FUNCTION note_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO commit_modes VALUES (TG_TABLE_NAME, TG_OP, current_setting('synchronous_commit'));
          RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END $$;
        CREATE TRIGGER note BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION note_commit_mode();
        CREATE TRIGGER note BEFORE UPDATE ON payments FOR EACH ROW EXECUTE FUNCTION note_commit_mode();
        CREATE TRIGGER note BEFORE DELETE ON rate_limits FOR EACH ROW EXECUTE FUNCTION note_commit_mode();
    """)
    report = run_cleanup(db, policy=WEB_APP_RETENTION)
    assert report.purged_idempotency_records == 3 and report.expired_payments == 2
    modes = {(t, op, mode) for t, op, mode in db.run("SELECT tbl, op, mode FROM commit_modes")}
    # Then purging (expired records, the web app's old rows, old windows) does not wait for its WAL flush;
    # changing payments does
    assert modes == {
        ("idempotency_keys", "DELETE", "off"),
        ("payments", "UPDATE", "on"),
        ("rate_limits", "DELETE", "off"),
    }
    # And the setting lasted only for those batches: the session's own is untouched
    assert db.run("SHOW synchronous_commit") == [["on"]]


def test_paces_between_full_batches_in_proportion_to_their_time(production: tuple[str, Database]) -> None:
    _, db = production
    pauses: list[float] = []
    started = time.monotonic()
    report = run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=25), sleep=pauses.append)
    took = time.monotonic() - started
    assert report.purged_idempotency_records == 3 and report.complete
    # The steps that change payments pause here after each full batch (2 expired payments, 1 flagged: each step
    # pauses after every batch but its last, short one), each 3 times its batch (25 %); the purges pause on the
    # server (the next test)
    assert len(pauses) == 2 + 1 and all(0 < p <= 3 * took for p in pauses)
    # Back to back (100 %) it never pauses
    pauses.clear()
    run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100), sleep=pauses.append)
    assert pauses == []


def test_purges_pause_on_the_server_in_proportion_to_their_batches(production: tuple[str, Database]) -> None:
    # Given deletes that take 30 ms a row, and the time of each noted
    _, db = production
    slow_deletes(db, 0.03)
    note_transactions(db)
    sent = record_statements(db)
    # When the expired records are purged a row a batch, batches filling 25 % of the time
    report = run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=25), sleep=lambda _: None)
    assert report.purged_idempotency_records == 3
    # Then each batch after the first started about its own time (30 ms) plus 3 times that (the pause) after the one
    # before (a pause makes up what the one before slept over or under, within a millisecond or two), and the last
    # at least that long after the first: the pauses are the server's, one statement ran them all
    at = [r[0] for r in db.run("SELECT at FROM row_transactions WHERE tbl = 'idempotency_keys' ORDER BY at")]
    assert len(at) == 3
    assert all((b - a).total_seconds() >= 0.03 + 3 * 0.03 - 0.003 for a, b in zip(at, at[1:], strict=False))
    assert (at[-1] - at[0]).total_seconds() >= 2 * (0.03 + 3 * 0.03) - 0.001
    blocks = [sql for sql in sent if sql.startswith("DO")]
    assert len(blocks) == 3  # one a purge step: the expired records, the web app's old rows, old windows
    assert all("pg_sleep" in sql for sql in blocks)
    # And back to back (100 %) the block never sleeps
    sent.clear()
    run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100), sleep=lambda _: None)
    assert [sql for sql in sent if "pg_sleep" in sql] == []


def test_purges_fill_the_share_of_time_asked_whatever_a_pause_rounds_to(production: tuple[str, Database]) -> None:
    # Given 60 more expired records whose deletes keep the server busy about 0.55 ms a row (shorter than the
    # shortest pause pg_sleep can take: it wakes on whole milliseconds), each delete's start and end noted
    _, db = production
    now = int(time.time())
    db.run(f"""
        INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash, created_at, updated_at)
        SELECT 'fn#share-' || g, 'completed', {now - 60}, 'h', now(), now() FROM generate_series(1, 60) g;
        CREATE TABLE busy_deletes (began timestamptz, ended timestamptz);
        CREATE FUNCTION busy_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE began timestamptz := clock_timestamp();
        BEGIN
          WHILE clock_timestamp() < began + interval '550 microseconds' LOOP END LOOP;
          INSERT INTO busy_deletes VALUES (began, clock_timestamp());
          RETURN OLD;
        END $$;
        CREATE TRIGGER busy BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION busy_delete();
    """)
    # When they are purged a row a batch, batches asked to fill half the time
    report = run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=50), sleep=lambda _: None)
    assert report.purged_idempotency_records == 63
    # Then the deletes filled about half the time from the first to the last, less what each batch spends outside its
    # delete (about 0.45; the pauses make up what each other rounded), where a pause after each batch of its own slept
    # 1 ms at least (about 0.32)
    [[busy, span]] = db.run(
        "SELECT extract(epoch FROM sum(ended - began))::float8, extract(epoch FROM max(ended) - min(began))::float8"
        " FROM busy_deletes"
    )
    assert 0.38 <= busy / span <= 0.6, (busy, span)


def test_a_purge_statement_runs_at_most_a_quarter_of_the_query_timeout(production: tuple[str, Database]) -> None:
    # Given deletes that take 40 ms a row, and a database whose answers are awaited 0.2 s at most
    url, db = production
    slow_deletes(db, 0.04)
    parsed = parse_database_url(url)
    short = Database(lambda refresh: parsed, query_timeout=0.2)
    statements = record_statements(short)
    # When the expired records are purged a row a batch, back to back
    report = run_cleanup(short, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100))
    # Then they are all purged, in statements that each stop starting batches after 0.05 s (a quarter of the timeout),
    # none of them taken for a broken connection
    assert report.purged_idempotency_records == 3 and report.complete
    assert short.connects == 1
    blocks = [sql for sql in statements if sql.startswith("DO")]
    assert blocks and all("ELSE 50 END" in sql for sql in blocks)
    short.close()


def add_expired(db: Database, n: int) -> int:
    """`n` more expired records; how many expired ones there are then."""
    now = int(time.time())
    db.run(f"""INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash)
               SELECT 'x#' || g, 'completed', {now - 100}, 'h' FROM generate_series(1, {n}) g""")
    return expired_left(db)


def expired_left(db: Database) -> int:
    return int(db.run(f"SELECT count(*) FROM idempotency_keys WHERE expiry_timestamp < {int(time.time())}")[0][0])


def purged_with_the_block_killed(url: str, cleaner: Database) -> CleanupReport:
    """A cleanup a row a batch, back to back, whose paced statement's server process another connection kills after
    0.25 s."""
    admin = connect(url)

    def kill() -> None:
        time.sleep(0.25)
        admin.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'DO $paced$%' AND pid <> pg_backend_pid()"
        )

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        return run_cleanup(cleaner, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100))
    finally:
        killer.join()
        admin.close()


def test_a_purge_whose_connection_is_killed_midway_counts_what_committed(production: tuple[str, Database]) -> None:
    # Given 23 expired records, each delete taking 20 ms, and the statement's server process killed after 0.25 s
    url, db = production
    before = add_expired(db, 20)
    slow_deletes(db, 0.02)
    cleaner = Database(db._params)
    # When the purge runs a row a batch, back to back
    report = purged_with_the_block_killed(url, cleaner)
    # Then the statement was sent again on a new connection, everything was purged, and the count is exact: the
    # batches the killed statement committed (each took longer than the block waits between notices: each told) and the
    # new one's
    assert cleaner.connects == 2
    assert expired_left(db) == 0
    assert report.purged_idempotency_records == before and report.complete
    # And, sent twice, the report says its counts may be lower bounds (a sending broken midway cannot tell them all)
    assert report.counts_exact is False
    cleaner.close()


def test_a_purge_of_quick_batches_tells_its_count_now_and_then_and_exactly_at_its_end(
    production: tuple[str, Database],
) -> None:
    # Given 400 expired records, purged a row a batch (each batch far quicker than the block waits between notices)
    _, db = production
    before = add_expired(db, 397)
    heard: list[list[list[str]]] = []
    run_noticed = db.run_noticed

    def noticed(sql: str, into: list[list[str]] | None = None) -> tuple[list[list[object]], list[list[str]]]:
        rows, notices = run_noticed(sql, into)
        heard.append(notices)
        return rows, notices

    db.run_noticed = noticed  # type: ignore[method-assign]
    # When one paced statement purges them all
    done = run_paced(
        db, cleanup_steps("public.idempotency_keys")[0], run_ms=60_000, duty_cycle_percent=100, max_pause_seconds=1.0,
        now=int(time.time()), batch=1,
    )  # fmt: skip
    # Then its count is exact and whole, told at its end
    assert (done.handled, done.more, done.exact) == (before, False, True)
    assert expired_left(db) == 0
    [[[*said, last]]] = heard  # one statement, sent once
    assert last.endswith(f"{before} 0 in all")
    # And on the way it told far fewer notices than it ran batches (one each TELL_EVERY_MS at most)
    assert len(said) < before / 4


def test_a_batch_of_up_to_half_the_query_timeout_never_outlasts_it(production: tuple[str, Database]) -> None:
    # Given answers awaited 0.2 s, batches of a row taking 10 ms, and one row taking 100 ms (half the timeout)
    _, db = production
    db.run(f"INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash) "
           f"VALUES ('slow', 'completed', {int(time.time()) - 100}, 'h')")  # fmt: skip
    before = add_expired(db, 6)
    db.run("""
        CREATE FUNCTION uneven_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(CASE WHEN OLD.key = 'slow' THEN 0.1 ELSE 0.01 END); RETURN OLD; END $$;
        CREATE TRIGGER uneven BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION uneven_delete();
    """)
    short = Database(db._params, query_timeout=0.2)
    # When the purge runs a row a batch, back to back
    report = run_cleanup(short, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100))
    # Then no statement outlasted the timeout (it would have been sent again on a new connection), and the count is
    # exact
    assert short.connects == 1
    assert report.purged_idempotency_records == before and expired_left(db) == 0
    short.close()


def conflict_once_on_the_fifth(db: Database, seconds: float) -> None:
    """The delete of record `x#5` fails once with a serialization failure (40001; as a deadlock 40P01 or a SERIALIZABLE
    default_transaction_isolation would); every delete takes `seconds`."""
    db.run(f"""
        CREATE SEQUENCE conflict_once;
        CREATE FUNCTION conflict_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_sleep({seconds});
          IF OLD.key = 'x#5' AND nextval('conflict_once') = 1 THEN
            RAISE EXCEPTION 'conflict' USING ERRCODE = '40001';
          END IF;
          RETURN OLD;
        END $$;
        CREATE TRIGGER conflict BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION conflict_once();
    """)


def test_a_purge_sent_again_after_a_conflict_counts_every_attempts_told_batches(
    production: tuple[str, Database],
) -> None:
    # Given 8 expired records, batches that each take longer than the block waits between notices (so each is told),
    # and one batch that fails once with a conflict, after earlier batches committed
    _, db = production
    before = add_expired(db, 5)
    conflict_once_on_the_fifth(db, 2 * TELL_EVERY_MS / 1000)
    # When the purge runs a row a batch, back to back
    report = run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100))
    # Then everything was purged (the block was sent again on the same connection)
    assert expired_left(db) == 0 and report.complete
    # And the count is exact: the first attempt's committed batches and the second's; but a statement that failed
    # midway was sent again, so the report says its counts may be lower bounds
    assert report.purged_idempotency_records == before
    assert report.counts_exact is False


def test_a_purge_sent_again_after_a_conflict_says_its_count_is_a_lower_bound(production: tuple[str, Database]) -> None:
    # Given 8 expired records, batches far quicker than the block waits between notices, and one batch that fails
    # once with a conflict, after earlier batches committed
    _, db = production
    before = add_expired(db, 5)
    conflict_once_on_the_fifth(db, 0)
    # When the purge runs a row a batch, back to back
    report = run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100))
    # Then everything was purged, the batches the failed statement committed untold are not counted, and the report
    # says its counts are lower bounds
    assert expired_left(db) == 0 and report.complete
    assert 0 < report.purged_idempotency_records < before
    assert report.counts_exact is False


def test_a_noticed_statement_connects_once_when_the_database_is_down() -> None:
    attempts: list[int] = []

    def params(refresh: bool) -> ConnectionParams:
        return parse_database_url("postgresql://app:pw@db.example.test/payments", ssl_mode="disable")

    def refused(*_: object, **__: object) -> None:
        attempts.append(1)
        raise OSError("connection refused")

    db = Database(params, connect=refused)  # type: ignore[arg-type]
    with pytest.raises(DatabaseUnavailable):
        db.run("SELECT 1")
    assert len(attempts) == 1
    attempts.clear()
    with pytest.raises(DatabaseUnavailable):
        db.run_noticed("SELECT 1")
    assert len(attempts) == 1  # as run: one attempt, one failure counted


def test_a_stale_connection_broken_on_send_counts_nothing_twice(production: tuple[str, Database]) -> None:
    _, db = production
    step = cleanup_steps("public.idempotency_keys")[0]
    params = {"now": int(time.time()), "batch": 1}
    first = run_paced(db, step, run_ms=1000, duty_cycle_percent=100, max_pause_seconds=1.0, **params)
    assert (first.handled, first.more) == (3, False)
    before = add_expired(db, 4)
    # the proxy drops the idle connection: our socket is shut, pg8000 raises on send
    db._conn._usock.shutdown(socket.SHUT_RDWR)
    second = run_paced(
        db, step, run_ms=1000, duty_cycle_percent=100, max_pause_seconds=1.0, now=int(time.time()), batch=1
    )
    assert db.connects == 2
    assert (second.handled, second.more) == (before, False)


def test_a_triggers_notice_is_never_taken_for_the_count(production: tuple[str, Database]) -> None:
    # Given a trigger on the table raising notices that look like the block's, and the statement killed midway
    url, db = production
    before = add_expired(db, 20)
    db.run("""
        CREATE FUNCTION chatty_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE NOTICE 'paced batches: 1000000 1';
          RAISE NOTICE 'paced batches 0123456789abcdef0123456789abcdef: 1000000 1';
          PERFORM pg_sleep(0.02);
          RETURN OLD;
        END $$;
        CREATE TRIGGER chatty BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION chatty_delete();
    """)
    cleaner = Database(db._params)
    report = purged_with_the_block_killed(url, cleaner)
    # Then only the statement's own notices (its token) were counted
    assert cleaner.connects == 2 and expired_left(db) == 0
    assert report.purged_idempotency_records == before


def test_a_purge_statement_ends_well_within_the_sessions_statement_timeout(production: tuple[str, Database]) -> None:
    # Given deletes that take 0.2 s a row, and a session whose statements are cancelled after 0.5 s (a role's setting)
    _, db = production
    slow_deletes(db, 0.2)
    db.run("SET statement_timeout = '500ms'")
    # When the expired records are purged a row a batch, back to back (0.6 s in all: a statement of a second would
    # be cancelled)
    report = run_cleanup(db, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100))
    # Then none was cancelled: each statement ended after half the timeout
    assert report.purged_idempotency_records == 3 and report.complete
    assert db.run("SHOW statement_timeout") == [["500ms"]]


def test_pacing_never_sleeps_into_the_reserve() -> None:
    from payments.services.cleanup import MAX_PAUSE_SECONDS, _pause

    assert _pause(0.01, 25, 60_000) == pytest.approx(0.03)
    assert _pause(0.01, 50, 60_000) == pytest.approx(0.01)
    assert _pause(0.01, 100, 60_000) == 0
    assert _pause(10.0, 25, 60_000) == MAX_PAUSE_SECONDS  # a slow batch never parks the run
    assert _pause(0.01, 25, 4) == pytest.approx(0.004)  # only what is left before the reserve
    assert _pause(0.01, 25, -100) == 0


def test_pacing_honours_the_time_budget(production: tuple[str, Database]) -> None:
    # Given deletes that take 0.3 s a row
    _, db = production
    slow_deletes(db, 0.3)

    def budget() -> Callable[[], int]:
        """Half a second left before a reserve of 5 s."""
        deadline = time.monotonic() + 5.5
        return lambda: int((deadline - time.monotonic()) * 1000)

    # When the purge runs a row a batch, paced to 1 %: the pause after a batch would be 99 times the batch
    time_left_ms = budget()
    # (no payment old enough for the payment steps, which run first: one short statement each)
    policy = CleanupPolicy(batch_size=1, duty_cycle_percent=1, pending_payment_max_age_seconds=10**9)
    report = run_cleanup(db, policy=policy, time_left_ms=time_left_ms, reserve_ms=5_000)
    # Then it stops with the reserve left: the server's statement paused only until its half second was up (not the
    # second a pause may take), and no statement followed it
    assert report.complete is False and report.purged_idempotency_records == 1
    assert time_left_ms() > 5_000 - 400
    # And back to back, the statement starts no batch after its half second: 2 of the 2 left (0.3 s each), then it
    # ends with more possibly left, and the run with it
    time_left_ms = budget()
    policy = CleanupPolicy(batch_size=1, duty_cycle_percent=100, pending_payment_max_age_seconds=10**9)
    report = run_cleanup(db, policy=policy, time_left_ms=time_left_ms, reserve_ms=5_000)
    assert report.complete is False and report.purged_idempotency_records == 2


def test_the_payment_steps_run_before_a_purge_that_uses_up_the_time(production: tuple[str, Database]) -> None:
    # Given a purge that cannot finish in the run's time (deletes of 0.3 s a row, half a second left before the
    # reserve: a backlog larger than a run can purge)
    _, db = production
    slow_deletes(db, 0.3)
    deadline = time.monotonic() + 5.5
    report = run_cleanup(
        db,
        policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100),
        time_left_ms=lambda: int((deadline - time.monotonic()) * 1000),
        reserve_ms=5_000,
    )
    # Then the run ends unfinished, but the stale payments were expired and the charged one sent to review first
    assert report.complete is False and report.purged_idempotency_records < 3
    assert (report.expired_payments, report.payments_flagged_for_review) == (2, 1)
    assert statuses(db)["cccccccc-0000-4000-8000-000000000003"] == "needs_review"


def test_a_paced_purge_reports_only_what_committed(production: tuple[str, Database]) -> None:
    # Given a purge whose second batch the database refuses
    _, db = production
    db.run("""
        CREATE FUNCTION refuse_second() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.key = 'fn#expired-2' THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END IF;
          RETURN OLD;
        END $$;
        CREATE TRIGGER refuse BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION refuse_second();
    """)
    step = cleanup_steps("public.idempotency_keys")[0]
    params = {"now": int(time.time()), "batch": 1}
    # When it runs: Then the refusal is raised, and the batch before it stays committed
    with pytest.raises(QueryError):
        run_paced(db, step, run_ms=1_000, duty_cycle_percent=100, max_pause_seconds=1.0, **params)
    left = keys(db) & {"fn#expired-1", "fn#expired-2", "fn#expired-3"}
    assert "fn#expired-2" in left and len(left) < 3
    # And a later run on the same session counts only its own batches, never the one before
    db.run("DROP TRIGGER refuse ON idempotency_keys")
    done = run_paced(db, step, run_ms=1_000, duty_cycle_percent=100, max_pause_seconds=1.0, **params)
    assert (done.handled, done.more) == (len(left), False)
    assert keys(db) & {"fn#expired-1", "fn#expired-2", "fn#expired-3"} == set()
    # And a step that changes payments is never run on the server's loop (its commits are durable, one a statement)
    with pytest.raises(ValueError, match="durabl"):
        run_paced(db, cleanup_steps("public.idempotency_keys")[2], run_ms=1_000, duty_cycle_percent=100,
                  max_pause_seconds=1.0, **params)  # fmt: skip


def test_every_paced_batch_is_read_committed_whatever_the_databases_default(
    production: tuple[str, Database],
) -> None:
    # Given a database whose sessions default to REPEATABLE READ (where a claim taking an expired row over while a
    # batch waited for it failed the whole paced statement with 40001), and a trigger noting each batch's level
    url, db = production
    name = urlsplit(url).path.lstrip("/")
    db.run(f"""
        ALTER DATABASE {pg8000.native.identifier(name)} SET default_transaction_isolation = 'repeatable read';
        CREATE TABLE purge_levels (level text NOT NULL);
        CREATE FUNCTION note_level() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO purge_levels VALUES (current_setting('transaction_isolation'));
          RETURN OLD;
        END $$;
        CREATE TRIGGER note_level BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION note_level();
    """)
    fresh = database(url)  # a new session: the database's default applies
    try:
        [[level]] = fresh.run("SHOW transaction_isolation")
        assert level == "repeatable read"
        # When the purge runs its batches on the server, one row a batch
        step = cleanup_steps("public.idempotency_keys")[0]
        done = run_paced(
            fresh, step, run_ms=1_000, duty_cycle_percent=100, max_pause_seconds=1.0, now=int(time.time()), batch=1
        )
    finally:
        fresh.close()
    # Then every batch ran READ COMMITTED (each statement sees the rows committed before it)
    assert done.handled == 3
    assert [row[0] for row in db.run("SELECT level FROM purge_levels")] == ["read committed"] * 3


def test_a_paced_purge_is_counted_whatever_the_sessions_messages_setting(production: tuple[str, Database]) -> None:
    # Given a session (a role's default, say) that is sent no notices
    _, db = production
    db.run("SET client_min_messages = error")
    # When the expired records are purged: Then the count is still told, and nothing is left in the session
    report = run_cleanup(db, policy=CleanupPolicy(batch_size=2))
    assert report.purged_idempotency_records == 3 and report.complete
    assert db.run("SHOW client_min_messages") == [["error"]]
    assert db.run("SHOW synchronous_commit") == [["on"]]
    # And a statement that tells nothing is no count: an error, not a guess
    assert db.run_noticed("SELECT 1") == ([[1]], [[]])


def test_a_purge_goes_on_when_a_pooler_drops_the_servers_notices(
    production: tuple[str, Database], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a connection through a pooler that does not pass the server's notices on (the paced block tells what
    # its batches did in notices only)
    url, db = production
    params = parse_database_url(url)
    if params.unix_sock is None:
        pytest.skip("the TCP proxy fronts the embedded server's Unix socket")
    proxy = TcpProxy(params.unix_sock, drop_notices=True)
    pooled = database(f"postgresql://postgres@127.0.0.1:{proxy.port}/{params.database}")
    try:
        assert pooled.run_noticed("DO $$ BEGIN RAISE NOTICE 'heard?'; END $$") == ([], [[]])
        with pytest.raises(QueryError, match="told nothing"):  # (its batches purged the 3 expired records)
            run_paced(pooled, cleanup_steps("public.idempotency_keys")[0], run_ms=1_000, duty_cycle_percent=100,
                      max_pause_seconds=1.0, now=int(time.time()), batch=2)  # fmt: skip
        db.run("""INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash, created_at, updated_at)
                  SELECT 'fn#more-' || g, 'completed', 1, 'h', now(), now() FROM generate_series(1, 7) g""")
        # When the cleanup runs through it, its paced statements short enough to do one batch each
        monkeypatch.setattr(cleanup_service, "PACED_RUN_MS", 1)
        with caplog.at_level("WARNING"):
            report = run_cleanup(pooled, policy=CleanupPolicy(batch_size=2, duty_cycle_percent=50))
    finally:
        pooled.close()
        proxy.close()
    # Then every step still ran to the end: the purges went on one batch per statement, counted by their rows (of the
    # 7 expired records, the first statement's batch of 2 done but uncounted, and the report says so)
    assert report.complete and not report.counts_exact
    assert not {k for k in keys(db) if k.startswith("fn#expired") or k.startswith("fn#more-")}
    assert report.purged_idempotency_records == 5
    assert statuses(db)["cccccccc-0000-4000-8000-000000000001"] == "expired"
    assert db.run("SELECT bucket FROM rate_limits") == [["current"]]
    # And the lost notices were said once
    lost = [r for r in caplog.records if "notices" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelname == "WARNING"


# -- the function: schedule, admin endpoint, debug endpoint ----------------------------------------


@pytest.fixture
def admin(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("ADMIN_API_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("STAGE", "dev")
    for name in (CLEANUP, DEBUG):
        reset_function_state(name)
    yield env
    for name in (CLEANUP, DEBUG):
        reset_function_state(name)


def test_admin_cleanup_needs_the_token_and_answers_counts(admin: Env) -> None:
    admin.rows("INSERT INTO idempotency_keys (key, status, expiry_timestamp) VALUES ('fn#old', 'completed', 1)")
    missing = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency")
    wrong = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers={"Authorization": "Bearer nope"})
    assert missing.status == wrong.status == 401 and missing.body == wrong.body  # no hint which
    assert admin.rows("SELECT count(*) FROM idempotency_keys") == [[1]]
    ok = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status == 200 and ok.json["purged_idempotency_records"] == 1 and ok.json["complete"] is True


def test_a_cleanup_asked_over_http_ends_within_api_gateways_30_seconds(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the function has minutes left (its timeout is longer than API Gateway waits for an answer)
    from ops.template import load, load_module

    monkeypatch.setattr(LocalLambdaContext, "get_remaining_time_in_millis", lambda self: 110_000)
    module = load_module(load().functions[CLEANUP])
    budgets: list[int] = []
    real = module.run_cleanup

    reserves: list[int] = []

    def watched(db: Database, **kwargs: object) -> object:
        budgets.append(kwargs["time_left_ms"]())  # type: ignore[operator]
        reserves.append(kwargs["reserve_ms"])  # type: ignore[arg-type]
        return real(db, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "run_cleanup", watched)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # When it is asked over HTTP, its time counts from the request's arrival (API Gateway's timeEpoch), and no batch
    # starts that could run past the deadline (a batch may take the whole query timeout), with time to answer after
    assert invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=headers).status == 200
    assert 0 < budgets[-1] <= module.HTTP_DEADLINE_MS < 30_000
    from payments.settings import database_settings

    assert reserves[-1] >= database_settings().query_timeout_seconds * 1000 + 1000
    # While the hourly run (EventBridge) uses the function's whole time
    module.lambda_handler(
        {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}},
        LocalLambdaContext(function_name=CLEANUP, timeout_seconds=120),
    )
    assert budgets[-1] == 110_000


@pytest.mark.parametrize("epoch", [None, 1_000], ids=["no timeEpoch", "a sample event's old timeEpoch"])
def test_an_http_cleanup_counts_from_now_when_the_event_cannot_say_when_it_arrived(
    admin: Env, epoch: int | None
) -> None:
    from ops.local_api import build_event
    from ops.template import load_handler
    from tests.support.api import TEMPLATE

    event = build_event(
        method="POST",
        target="/admin/cleanup-idempotency",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        body=b"",
        source_ip="203.0.113.7",
        route_key="POST /admin/cleanup-idempotency",
        path_parameters={},
        claims=None,
    )
    if epoch is None:
        del event["requestContext"]["timeEpoch"]
    else:
        event["requestContext"]["timeEpoch"] = epoch
    admin.rows("INSERT INTO idempotency_keys (key, status, expiry_timestamp) VALUES ('fn#old', 'completed', 1)")
    handler = load_handler(TEMPLATE.functions[CLEANUP])
    result = handler(event, LocalLambdaContext(function_name=CLEANUP, timeout_seconds=120))
    # Not a 500, nor a run whose deadline passed before it began: it purges
    assert result["statusCode"] == 200, result
    report = json.loads(result["body"])
    assert report["complete"] is True and report["purged_idempotency_records"] == 1


def test_an_unprintable_idempotency_key_is_a_400_before_the_cleanup_changes_anything(admin: Env) -> None:
    # The audit row (written after the batches commit) could not hold it: the run was a 500 with no audit row
    admin.rows("INSERT INTO idempotency_keys (key, status, expiry_timestamp) VALUES ('fn#old', 'completed', 1)")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": "a\x00b"}
    answer = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=headers)
    assert answer.status == 400 and "Idempotency-Key" in answer.json["detail"], answer.body
    assert admin.rows("SELECT count(*) FROM idempotency_keys WHERE key = 'fn#old'") == [[1]]


def test_admin_token_from_secrets_manager(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(Name="payments/admin", SecretString=json.dumps({"token": "s3cret-admin-token-xyz"}))
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("ADMIN_TOKEN_SECRET_ARN", arn["ARN"])
        from payments.settings import cleanup_settings

        cleanup_settings.cache_clear()
        reset_function_state(CLEANUP)
        headers = {"Authorization": "Bearer s3cret-admin-token-xyz"}
        assert invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=headers).status == 200
        env_token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the secret wins over the environment
        assert invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=env_token).status == 401


def test_the_function_paces_as_configured(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.template import load, load_module
    from payments.settings import cleanup_settings

    assert CleanupPolicy().duty_cycle_percent == cleanup_settings().duty_cycle_percent == 25  # the same default
    monkeypatch.setenv("CLEANUP_DUTY_CYCLE_PERCENT", "40")
    cleanup_settings.cache_clear()
    try:
        assert load_module(load().functions[CLEANUP])._policy().duty_cycle_percent == 40
    finally:
        monkeypatch.delenv("CLEANUP_DUTY_CYCLE_PERCENT")
        cleanup_settings.cache_clear()


def test_the_benchmark_purges_with_the_functions_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.cleanup import CleanupBench
    from payments.settings import cleanup_settings

    monkeypatch.setenv("CLEANUP_DUTY_CYCLE_PERCENT", "40")
    monkeypatch.setenv("CLEANUP_BATCH_SIZE", "200")
    cleanup_settings.cache_clear()
    try:
        policy = CleanupBench().policy
    finally:
        cleanup_settings.cache_clear()
    assert (policy.duty_cycle_percent, policy.batch_size) == (40, 200)


def test_schedule_runs_the_cleanup(admin: Env) -> None:
    admin.rows("INSERT INTO idempotency_keys (key, status, expiry_timestamp) VALUES ('fn#old', 'completed', 1)")
    event = json.loads((Path(__file__).resolve().parents[2] / "events" / "cleanup_schedule.json").read_text())
    from ops.template import load, load_handler

    report = load_handler(load().functions[CLEANUP])(event, LocalLambdaContext(function_name=CLEANUP))
    assert report["purged_idempotency_records"] == 1


@pytest.mark.parametrize("kind", ["basic", "duplicate", "cleanup"])
def test_debug_endpoint_exercises_the_real_store(admin: Env, kind: str) -> None:
    answer = invoke(
        DEBUG, "GET", f"/debug/test-idempotency?type={kind}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert answer.status == 200, answer.body
    body = answer.json
    assert body["ok"] is True and body["type"] == kind and body["function_ran"] == 1, body
    assert body["record_after_first_call"] == "completed"


@pytest.mark.parametrize("kind", ["basic", "duplicate", "cleanup"])
def test_debug_endpoint_with_the_database_down_is_not_yet(
    admin: Env, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's outage, which Powertools wraps in its own error, is ours: 503 with Retry-After, never a 500
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@/postgres?host=/nonexistent&port=1")
    reset_function_state(DEBUG)
    answer = invoke(
        DEBUG, "GET", f"/debug/test-idempotency?type={kind}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert answer.status == 503, answer.body
    assert answer.headers.get("retry-after") and answer.json["status"] == 503


def test_debug_endpoint_refuses_unknown_types_strangers_and_prod(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    unknown = invoke(DEBUG, "GET", "/debug/test-idempotency?type=chaos", headers=auth)
    assert unknown.status == 400 and "basic, duplicate, cleanup" in unknown.json["detail"]
    assert invoke(DEBUG, "GET", "/debug/test-idempotency?type=basic").status == 401
    monkeypatch.setenv("STAGE", "prod")
    from payments.settings import api_settings

    api_settings.cache_clear()
    assert invoke(DEBUG, "GET", "/debug/test-idempotency?type=basic", headers=auth).status == 404


def test_debug_route_exists_only_outside_prod_in_the_template() -> None:
    import yaml

    from ops.template import TEMPLATE, _CfnLoader

    resources = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)["Resources"]  # noqa: S506
    assert resources["DebugFunction"]["Condition"] == "IsNotProd"
    assert resources["DebugFunction"]["Properties"]["Events"]["TestIdempotency"]["Properties"]["Path"] == (
        "/debug/test-idempotency"
    )


def test_one_cleanup_run_leaves_one_audit_row_when_the_audit_inserts_answer_is_lost(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an expired record for the run to purge
    admin.rows("INSERT INTO idempotency_keys (key, status, expiry_timestamp) VALUES ('fn#old', 'completed', 1)")
    # And the audit row's INSERT commits on the server, then its answer is lost (the connection breaks)
    with answer_lost(admin.url, monkeypatch, lambda sql: "INSERT INTO public.admin_audit_log" in sql) as fired:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": "run-1"}
        answer = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=headers)
    assert fired
    rows = admin.rows("SELECT id, after_state FROM admin_audit_log WHERE action = 'cleanup'")
    # Then the one run the admin asked for is one audit row (it was two: the INSERT, sent again on a new connection,
    # added a second row)
    assert answer.status == 200, answer.body
    assert len(rows) == 1, rows


# -- the server's clock stepping back (an NTP step, a VM's clock corrected) ---------------------------------------


def _busy_deletes(db: Database, n: int, microseconds: int) -> None:
    """`n` more expired records whose deletes keep the server busy `microseconds` each, measured on the real clock;
    each delete counted in the sequence clock.deleted."""
    now = int(time.time())
    db.run(f"""
        CREATE SCHEMA clock;
        CREATE SEQUENCE clock.deleted;
        INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash, created_at, updated_at)
        SELECT 'fn#jump-' || g, 'completed', {now - 60}, 'h', now(), now() FROM generate_series(1, {n}) g;
        CREATE TABLE busy_deletes (began timestamptz, ended timestamptz);
        CREATE FUNCTION busy_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE began timestamptz := pg_catalog.clock_timestamp();
        BEGIN
          PERFORM nextval('clock.deleted');
          WHILE pg_catalog.clock_timestamp() < began + interval '{microseconds} microseconds' LOOP END LOOP;
          INSERT INTO busy_deletes VALUES (began, pg_catalog.clock_timestamp());
          RETURN OLD;
        END $$;
        CREATE TRIGGER busy BEFORE DELETE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION busy_delete();
    """)


def _clock_steps_back_during_a_delete(db: Database, nth: int, seconds: float) -> None:
    """The session's clock_timestamp() (the server's wall clock) steps back `seconds` while the `nth` delete runs
    (inside a batch), as an NTP step or a VM's clock correction does: every reading after that is `seconds` earlier."""
    db.run(f"""
        CREATE FUNCTION clock.clock_timestamp() RETURNS timestamptz LANGUAGE sql VOLATILE AS $$
          SELECT pg_catalog.clock_timestamp()
                 - CASE WHEN (SELECT last_value FROM clock.deleted) >= {nth}
                        THEN interval '{int(seconds * 1000)} milliseconds' ELSE interval '0' END $$;
    """)
    db.run("SET search_path = clock, pg_catalog, public")


def test_a_clock_stepping_back_during_a_batch_does_not_stop_the_pacing(production: tuple[str, Database]) -> None:
    # Given 1,500 expired records whose deletes keep the server busy 0.4 ms each (0.6 s in all), and a server clock
    # that steps back 3 s during the 20th delete
    _, db = production
    _busy_deletes(db, 1500, 400)
    _clock_steps_back_during_a_delete(db, nth=20, seconds=3.0)
    # When they are purged a row a batch, batches asked to fill a quarter of the time
    policy = CleanupPolicy(batch_size=1, duty_cycle_percent=25, pending_payment_max_age_seconds=10**9)
    report = run_cleanup(db, policy=policy, sleep=lambda _: None)
    assert report.purged_idempotency_records == 1503
    # Then the deletes still filled about a quarter of the real time (before c0553bd the batch measured as having
    # taken -3 s got the floor's pause, and the pacing went on), not nearly all of it: the purge ran back to back,
    # never pausing, until its batches had been busy another 3 s (here: the whole backlog)
    [[busy, span]] = db.run(
        "SELECT extract(epoch FROM sum(ended - began))::float8, extract(epoch FROM max(ended) - min(began))::float8"
        " FROM busy_deletes"
    )
    assert busy / span <= 0.4, (busy, span)


def test_a_clock_stepping_back_never_keeps_a_purge_statement_past_its_end(production: tuple[str, Database]) -> None:
    # Given 300 expired records whose deletes take 20 ms each (6 s in all), a server clock that steps back 3 s during
    # the 20th delete (every session's), and a cleaner whose answers are awaited 2 s at most (statements of 0.5 s)
    from payments.adapters.db import parse_database_url

    url, db = production
    _busy_deletes(db, 300, 20_000)
    _clock_steps_back_during_a_delete(db, nth=20, seconds=3.0)
    [[name]] = db.run("SELECT current_database()")
    db.run(f'ALTER DATABASE "{name}" SET search_path = clock, pg_catalog, public')
    parsed = parse_database_url(url)
    cleaner = Database(lambda refresh: parsed, query_timeout=2.0)
    # When they are purged a row a batch, back to back, for at most 3 s of the run
    policy = CleanupPolicy(batch_size=1, duty_cycle_percent=100, pending_payment_max_age_seconds=10**9)
    deadline = time.monotonic() + 8
    try:
        report = run_cleanup(
            cleaner, policy=policy, time_left_ms=lambda: int((deadline - time.monotonic()) * 1000), reserve_ms=5_000
        )
    finally:
        connects = cleaner.connects
        cleaner.close()
    # Then each statement ended about half a second after it began (the run's statements on one connection, the counts
    # exact), not 3 s later, its client having given up on it (the connection taken for broken, the statement sent
    # again while the first still ran on the server)
    assert connects == 1 and report.counts_exact, (connects, report)

"""The migration run on a live database never holds one table while waiting for another.

The web app's transactions use several tables in turn (a request that debited credits, then reads a payment). A run
that took its locks as each file reached a table held `payments` (001's ALTER TABLE) while waiting for
`credit_transactions` (003's index): with such a request, a cycle, and PostgreSQL aborted whichever waiter checked
first, the web app's request or the run (which then failed instead of trying again). The run now takes every lock it
needs first, in rounds shorter than the server's deadlock check, and a deadlock on its side gives way like a busy
table. What each file locks is read from its text: checked here against the locks the files really take."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pg8000.exceptions
import pytest

from ops.migrate import _tables, _take_locks, covers, discover, locks_needed, run
from tests.support.pg import connect, database

SEED = Path(__file__).resolve().parent.parent / "fixtures" / "seed-schema.sql"
USER = "11111111-1111-4111-8111-111111111111"  # the seed's user
PAYMENT = "bbbbbbbb-0000-4000-8000-000000000001"


@pytest.fixture
def production(empty_database_url: str) -> str:
    conn = connect(empty_database_url)
    conn.run(SEED.read_text(encoding="utf-8"))
    conn.close()
    return empty_database_url


class _RolledBack(Exception):
    pass


def _uncovered(url: str, sqls: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """In one transaction rolled back: the locks `locks_needed` takes for `sqls`, then the statements; every lock they
    hold on a table that existed before, not covered by what was taken first."""
    db = database(url)
    found: dict[str, Any] = {}
    try:
        with pytest.raises(_RolledBack), db.transaction() as tx:
            existing = _tables(tx)
            needed = locks_needed(sqls, existing)
            _take_locks(tx, needed, 5.0, 5000)
            for sql in sqls:
                tx.run(sql)
            held = tx.run(
                "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND c.relkind IN ('r', 'p')"
                " AND c.relnamespace = 'public'::regnamespace"
            )
            found["needed"] = needed
            found["uncovered"] = sorted(
                (table, _mode(mode))
                for table, mode in held
                if table in existing and not covers(needed.get(table, "ACCESS SHARE"), _mode(mode))
            )
            raise _RolledBack()
    finally:
        db.close()
    return found["needed"], found["uncovered"]


def _mode(pg_locks_mode: str) -> str:
    """pg_locks' `RowExclusiveLock` as the mode's name, `ROW EXCLUSIVE`."""
    name = pg_locks_mode.removesuffix("Lock")
    return "".join(" " + c if c.isupper() and i else c for i, c in enumerate(name)).upper()


def test_mode_names_read_from_pg_locks() -> None:
    assert _mode("AccessExclusiveLock") == "ACCESS EXCLUSIVE"
    assert _mode("ShareRowExclusiveLock") == "SHARE ROW EXCLUSIVE"
    assert _mode("RowExclusiveLock") == "ROW EXCLUSIVE"


def test_the_locks_taken_first_cover_every_file_run_at_once_on_the_production_schema(production: str) -> None:
    # The first run: every file pending, the web app's tables there
    needed, uncovered = _uncovered(production, [m.sql for m in discover()])
    assert uncovered == [], needed
    assert needed["payments"] == "ACCESS EXCLUSIVE" and "credit_transactions" in needed, needed


def test_the_locks_taken_first_cover_each_file_run_alone(production: str) -> None:
    # Later runs: one file pending, every table the earlier files made there (the backend's own, used by the functions)
    db = database(production)
    try:
        for migration in discover():
            needed, uncovered = _uncovered(production, [migration.sql])
            assert uncovered == [], (migration.name, needed)
            with db.transaction() as tx:
                tx.run(migration.sql)
    finally:
        db.close()


def _run_in_thread(url: str) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def go() -> None:
        db = database(url)
        try:
            outcome.append(run(db, lock_timeout_seconds=5, attempts=5, sleep=lambda s: time.sleep(min(s, 1))))
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted
            outcome.append(exc)
        finally:
            db.close()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, outcome


def _wait_until_the_run_waits_for(url: str, table: str) -> None:
    probe = connect(url)
    try:
        for _ in range(500):
            if probe.run(
                "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = to_regclass(:t)", t=f"public.{table}"
            ):
                return
            time.sleep(0.01)
        raise AssertionError(f"the run never waited for {table}")
    finally:
        probe.close()


@pytest.mark.parametrize("reads_after", [0.0, 1.3], ids=["at once", "past the deadlock check"])
def test_a_web_app_request_using_two_tables_is_never_aborted_and_the_run_goes_on(
    production: str, reads_after: float
) -> None:
    # Given a web app request that debited credits (a usage row) and is still going
    web = connect(production)
    web.run("BEGIN")
    web.run("INSERT INTO credit_transactions (user_id, amount, type) VALUES (:u, -5, 'usage')", u=USER)
    # When the first migration runs and waits for credit_transactions
    thread, outcome = _run_in_thread(production)
    _wait_until_the_run_waits_for(production, "credit_transactions")
    time.sleep(reads_after)
    # And the request then reads the payment it is about
    error = None
    try:
        web.run("SELECT status FROM payments WHERE id = :p", p=PAYMENT)
        web.run("COMMIT")
    except pg8000.exceptions.DatabaseError as exc:
        error = exc.args[0].get("C"), exc.args[0].get("M")
    web.close()
    thread.join(60)
    # Then the request went on, never aborted; and the run gave way, was tried again, and applied every file
    assert error is None, f"the web app's request was aborted: {error}"
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert outcome[0].applied == [m.name for m in discover()]  # type: ignore[attr-defined]


def test_a_round_waiting_for_several_tables_in_turn_still_gives_way_before_a_request_checks(production: str) -> None:
    """lock_timeout bounds each table's wait, not a statement's: a round that locked its tables in one statement
    per mode waited for three tables in turn, holding the first ones past a request's deadlock check (an outside
    review of the first form). Each table has its own statement now, the round's time left set before each."""
    # Given three web app requests, each reading one of the tables the run locks, and ending within half a second
    w2, w3, w4 = connect(production), connect(production), connect(production)
    w2.run("BEGIN")
    w2.run("SELECT count(*) FROM idempotency_keys")
    w3.run("BEGIN")
    w3.run("SELECT count(*) FROM invoices")
    w4.run("BEGIN")
    w4.run("SELECT count(*) FROM profiles")
    thread, outcome = _run_in_thread(production)
    _wait_until_the_run_waits_for(production, "idempotency_keys")
    started = time.monotonic()
    threading.Timer(0.35, lambda: w2.run("COMMIT")).start()
    threading.Timer(0.75, lambda: w3.run("COMMIT")).start()
    time.sleep(0.05)
    # When the last of them reads the ledger too (a balance, then its history)
    error = None
    try:
        w4.run("SELECT count(*) FROM credit_transactions")
        w4.run("COMMIT")
    except pg8000.exceptions.DatabaseError as exc:
        error = exc.args[0].get("C"), exc.args[0].get("M"), round(time.monotonic() - started, 2)
    for conn in (w2, w3, w4):
        conn.close()
    thread.join(60)
    # Then it is never the one aborted, and the run applies everything
    assert error is None, f"the web app's request was aborted: {error}"
    assert outcome and not isinstance(outcome[0], Exception), outcome


@pytest.mark.parametrize(
    ("sql", "table", "mode"),
    [
        ('ALTER TABLE "public"."payments" ADD COLUMN IF NOT EXISTS note text', "payments", "ACCESS EXCLUSIVE"),
        ("CREATE INDEX payments_note_idx ON public . payments (status)", "payments", "SHARE"),
        ("CREATE POLICY p_read ON public.payments FOR SELECT USING (true)", "payments", "ACCESS EXCLUSIVE"),
        ("DROP POLICY IF EXISTS p_read ON payments", "payments", "ACCESS EXCLUSIVE"),
        ("COMMENT ON TABLE public.payments IS 'x'", "payments", "SHARE UPDATE EXCLUSIVE"),
        ("COMMENT ON COLUMN public.payments.status IS 'x'", "payments", "SHARE UPDATE EXCLUSIVE"),
        ("TRUNCATE TABLE public.transcripts", "transcripts", "ACCESS EXCLUSIVE"),
        ("DROP INDEX IF EXISTS public.payments_user_idx", "payments", "ACCESS EXCLUSIVE"),
    ],
)
def test_what_a_file_may_write_is_read_as_the_lock_it_takes(production: str, sql: str, table: str, mode: str) -> None:
    # The index a DROP INDEX names, made first (the production schema has none of that name)
    db = database(production)
    with db.transaction() as tx:
        tx.run("CREATE INDEX IF NOT EXISTS payments_user_idx ON public.payments (user_id)")
    db.close()
    needed, uncovered = _uncovered(production, [sql])
    assert needed.get(table) == mode and uncovered == [], (needed, uncovered)


def test_a_table_the_role_may_not_lock_is_left_to_the_files_own_statement(production: str) -> None:
    """LOCK TABLE in SHARE ROW EXCLUSIVE mode needs UPDATE, DELETE or TRUNCATE on the table; a foreign key to it only
    REFERENCES: a role that may only reference a web app table would fail the run at the lock the file does not need
    to take that way. That table is left to the file's statement (its lock then taken as the file reaches it)."""
    role = f"referrer_{uuid.uuid4().hex[:12]}"  # roles are the server's, not the database's: one of its own
    db = database(production)
    try:
        with db.transaction() as tx:
            tx.run(f"CREATE ROLE {role} NOLOGIN")
            tx.run(f"GRANT USAGE ON SCHEMA public TO {role}")
            tx.run(f"GRANT REFERENCES, SELECT ON public.videos TO {role}")
            tx.run(f"GRANT ALL ON public.payments TO {role}")
        with pytest.raises(_RolledBack), db.transaction() as tx:
            tx.run(f"SET LOCAL ROLE {role}")
            _take_locks(tx, {"payments": "ACCESS EXCLUSIVE", "videos": "SHARE ROW EXCLUSIVE"}, 5.0, 5000)
            held = tx.run(
                "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE l.pid = pg_backend_pid() AND c.relname IN ('payments', 'videos')"
            )
            assert sorted(held) == [["payments", "AccessExclusiveLock"]], held
            raise _RolledBack()
    finally:
        with db.transaction() as tx:
            tx.run(f"REVOKE ALL ON public.videos, public.payments FROM {role}")
            tx.run(f"REVOKE ALL ON SCHEMA public FROM {role}")
            tx.run(f"DROP ROLE {role}")
        db.close()

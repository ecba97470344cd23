"""Near the invocation's end a transaction's lock wait and statement time are cut to what is left, taken once
connected: a reconnect (the connection broken while Hyp was asked; the secret read again, a slow connect) has spent some
of it (an outside review: the limits were taken before the reconnect, and the transaction outlived the invocation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ops.lambda_context import LocalLambdaContext
from payments import deadline
from payments.adapters.db import ROOM_SECONDS, Database, GuardedConnection, QueryError, parse_database_url
from payments.errors import DatabaseUnavailable
from tests.support.pg import connect


def _held_row(db: Database, database_url: str) -> Any:
    """A row of a table of its own, held (FOR UPDATE) by another session, the web app's: that session, to end."""
    db.run("CREATE TABLE IF NOT EXISTS deadline_row (id int PRIMARY KEY)")
    db.run("INSERT INTO deadline_row VALUES (1) ON CONFLICT DO NOTHING")
    holder = connect(database_url)
    holder.run("BEGIN")
    holder.run("SELECT * FROM deadline_row WHERE id = 1 FOR UPDATE")
    return holder


def _near_the_end(work: Callable[[], None], holder: Any, timeout: float = 3.0) -> tuple[str, float]:
    """`work()` in an invocation of `timeout` seconds, started now, then the holder's transaction ended: its outcome
    ('ok', or the SQLSTATE the database refused it with) and how long it took."""
    deadline.start(LocalLambdaContext(function_name="f", timeout_seconds=timeout))
    started = time.monotonic()
    try:
        work()
        return "ok", time.monotonic() - started
    except QueryError as exc:
        return str(exc.sqlstate), time.monotonic() - started
    finally:
        deadline.clear()
        holder.run("ROLLBACK")
        holder.close()


def test_a_reconnect_is_taken_off_the_transactions_time(database_url: str) -> None:
    parsed = parse_database_url(database_url)
    asked: list[bool] = []

    def params(refresh: bool) -> Any:
        asked.append(refresh)
        if len(asked) > 1:
            time.sleep(1.5)  # the reconnect: the secret read again, a slow connect
        return parsed

    db = Database(params, connect=GuardedConnection)
    holder = _held_row(db, database_url)  # the web app holds the row
    [[pid]] = db.run("SELECT pg_backend_pid()")
    holder.run("SELECT pg_terminate_backend(:p)", p=pid)  # the function's connection broke
    time.sleep(0.1)
    timeout = 3.0

    def work() -> None:
        with db.transaction() as tx:
            tx.run("SELECT * FROM deadline_row WHERE id = 1 FOR UPDATE")

    try:
        outcome, took = _near_the_end(work, holder, timeout)
    finally:
        db.close()
    # "Not yet" (the lock not granted), with ROOM_SECONDS left for the caller's fallback and answer
    assert outcome == "55P03" and len(asked) == 2, (outcome, asked)
    assert took <= timeout - ROOM_SECONDS + 0.1, f"gave up after {took:.2f} s of a {timeout} s invocation"


def test_an_autocommit_statement_near_the_end_does_not_outlive_the_invocation(database_url: str) -> None:
    """An autocommit statement had no lock timeout: only the socket's query timeout (10 s), and again on a new
    connection. With the web app holding the row, storing Hyp's answer by one (a page's URL, a charge attempt released)
    outlived the invocation (an outside review). Near the end it takes a transaction's limits, in its own round trip;
    its rows are its own."""
    db = Database(lambda refresh: parse_database_url(database_url), connect=GuardedConnection)
    holder = _held_row(db, database_url)  # the web app holds the row
    timeout = 3.0

    def work() -> None:
        assert db.run("SELECT 7, 'free'") == [[7, "free"]]  # what a statement answers is its own, near the end too
        db.run("UPDATE deadline_row SET id = 1 WHERE id = 1 RETURNING id")

    outcome, took = _near_the_end(work, holder, timeout)
    try:
        # Far from any end (none known: not in Lambda), nothing is sent before it
        assert db.run("SELECT current_setting('lock_timeout')") == [["0"]]
    finally:
        db.close()
    assert outcome == "55P03", outcome
    assert took <= timeout - ROOM_SECONDS + 0.1, f"gave up after {took:.2f} s of a {timeout} s invocation"


# Seconds until the invocation's end where the server still gives a statement 100 ms (its floor, `_limits`) and the
# client waited only 50 ms for the answer: it gave up first, broke the connection, and called a COMMIT that committed
# one that did not (an outside review of the client-side waits near the end)
LEFT = 0.28


def _db(database_url: str) -> Database:
    db = Database(lambda refresh: parse_database_url(database_url), connect=GuardedConnection)
    db.run("SELECT 1")  # connected earlier in the invocation (the cached connection)
    return db


def test_a_statement_within_the_servers_limit_near_the_end_is_answered(database_url: str) -> None:
    db = _db(database_url)
    deadline.start(LocalLambdaContext(function_name="f", timeout_seconds=LEFT))
    try:
        # 80 ms: under the 100 ms statement_timeout `_near_the_end` sets for it; the server answers
        rows = db.run("SELECT 1 FROM pg_sleep(0.08)")
    finally:
        deadline.clear()
    assert rows == [[1]]


def test_a_commit_that_committed_near_the_end_is_not_reported_as_not_committed(database_url: str) -> None:
    db = _db(database_url)
    db.run("CREATE TABLE IF NOT EXISTS near_end_stored (id int PRIMARY KEY)")
    db.run(
        "CREATE OR REPLACE FUNCTION near_end_slow() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN PERFORM pg_sleep(0.08); RETURN NULL; END$$"
    )
    db.run(
        "DO $$BEGIN CREATE CONSTRAINT TRIGGER near_end_at_commit AFTER INSERT ON near_end_stored "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION near_end_slow(); "
        "EXCEPTION WHEN duplicate_object THEN NULL; END$$"
    )
    deadline.start(LocalLambdaContext(function_name="f", timeout_seconds=LEFT + 0.05))
    error: DatabaseUnavailable | None = None
    try:
        # Hyp's answer stored near the end; the COMMIT (a deferred check, a synchronous standby) takes 80 ms,
        # within the statement_timeout the BEGIN set
        with db.transaction() as tx:
            tx.run("INSERT INTO near_end_stored VALUES (1)")
    except DatabaseUnavailable as exc:
        error = exc
    finally:
        deadline.clear()
    stored = db.run("SELECT count(*) FROM near_end_stored")
    # It committed: the caller must not be told 'it was not committed' (it then acts as if Hyp's answer were unstored)
    assert stored == [[1]]
    assert error is None, f"committed, yet reported: {error}"

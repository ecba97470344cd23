"""Serialization failures (40001) and deadlocks (40P01) are retried, never answered with a 5xx.

Under SERIALIZABLE (how Aurora DSQL and some Postgres deployments run) the server rolls a statement or
transaction back with SQLSTATE 40001 when concurrent work could not be ordered; 40P01 is a deadlock
victim. Both are safe to run again. First `Database.run` and `Database.atomic` against real 40001s and
40P01s on the test server, then the concurrency suites with `default_transaction_isolation =
serializable` on the test's database.

The concurrency suites run each function in worker processes (one invocation at a time each, each
with its own connection: real execution environments), calling the same `invoke`-based helpers the
other suites use. Threads inside one process would not do: the functions share one connection per
process (statements would take turns on it, so nothing could conflict) and the resolver keeps the
current request on a module-level object.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pg8000.native
import pytest

from ops.seed import DEMO_USER_ID
from payments.adapters import db as db_module
from payments.adapters.db import CONFLICT_ATTEMPTS, Database, QueryError, Transaction
from tests.integration.test_hypay_callback import browser, location, notify, pay
from tests.support.api import Answer, reset_function_state
from tests.support.payments import (
    CREATE,
    CVV,
    OTHER_USER,
    PENDING_PAGE,
    PRO,
    STARTER,
    SUCCESS_PAGE,
    Env,
    post,
)
from tests.support.pg import connect

THIRD_USER = "0e000000-0000-4000-8000-000000000003"


# -- the test database under SERIALIZABLE ----------------------------------------------------------


def _isolation(url: str) -> str:
    conn = connect(url)
    try:
        return conn.run("SHOW default_transaction_isolation")[0][0]
    finally:
        conn.close()


@pytest.fixture
def serializable(database_url: str) -> str:
    """Every new session on this test's database runs SERIALIZABLE transactions."""
    name = urlsplit(database_url).path.lstrip("/")
    conn = connect(database_url)
    try:
        conn.run(f"ALTER DATABASE {pg8000.native.identifier(name)} SET default_transaction_isolation = 'serializable'")
    finally:
        conn.close()
    assert _isolation(database_url) == "serializable"
    return database_url


# -- Database.run and Database.atomic against real conflicts ----------------------------------------

_FLAKY = """
CREATE SEQUENCE attempts;
CREATE TABLE ledger (id serial PRIMARY KEY, note text NOT NULL UNIQUE);
-- Raises SQLSTATE `state` on the first `failures` calls (a sequence counts them: nextval survives the
-- rollback the error causes), then returns the call's number.
CREATE FUNCTION flaky(failures int, state text DEFAULT '40001') RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('attempts');
BEGIN
  IF n <= failures THEN
    RAISE EXCEPTION 'simulated conflict, call %', n USING ERRCODE = state;
  END IF;
  RETURN n;
END $$;
"""


@pytest.fixture
def flaky(database_url: str) -> Callable[[], int]:
    """Installs `flaky(failures, state)`; returns a function telling how often it was called."""
    conn = connect(database_url)
    conn.run(_FLAKY)
    conn.close()

    def calls() -> int:
        c = connect(database_url)
        try:
            last, called = c.run("SELECT last_value, is_called FROM attempts")[0]
            return int(last) if called else 0
        finally:
            c.close()

    return calls


@pytest.fixture
def seen(db: Database, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """What `db` went through: the SQLSTATE of every failed statement, and every backoff (attempt, sleep)."""
    record = SimpleNamespace(states=[], backoffs=[], sleeps=[])
    execute = db._execute

    def recording_execute(conn: pg8000.native.Connection, sql: str) -> Any:
        try:
            return execute(conn, sql)
        except QueryError as exc:
            record.states.append(exc.sqlstate)
            raise

    backoff = db_module._backoff

    def recording_backoff(attempt: int) -> None:
        record.backoffs.append(attempt)
        backoff(attempt)

    monkeypatch.setattr(db, "_execute", recording_execute)
    monkeypatch.setattr(db_module, "_backoff", recording_backoff)

    def recording_sleep(seconds: float) -> None:
        record.sleeps.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(db_module, "time", SimpleNamespace(sleep=recording_sleep))
    return record


def _in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _wait_until_blocked(url: str, marker: str, timeout: float = 10.0) -> None:
    """Until a session running a statement containing `marker` waits for a lock."""
    admin = connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = admin.run(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position(:m IN query) > 0 "
                "AND pid <> pg_backend_pid()",
                m=marker,
            )
            if rows[0][0]:
                return
            time.sleep(0.01)
        raise AssertionError(f"no session blocked on {marker!r}")
    finally:
        admin.close()


def test_run_retries_a_real_serialization_failure(serializable: str, db: Database, seen: SimpleNamespace) -> None:
    # Given a row another transaction has updated but not committed
    url = serializable
    setup = connect(url)
    setup.run("CREATE TABLE counter (k int PRIMARY KEY, v int NOT NULL); INSERT INTO counter VALUES (1, 0)")
    setup.close()
    holder = connect(url)
    holder.run("BEGIN")
    holder.run("UPDATE counter SET v = v + 1 WHERE k = 1")
    # When the database updates it too (blocked behind the holder), and the holder commits
    thread, out = _in_background(lambda: db.run("UPDATE counter SET v = v + 10 WHERE k = 1 /* ours */ RETURNING v"))
    _wait_until_blocked(url, "/* ours */")
    holder.run("COMMIT")
    holder.close()
    thread.join(10)
    # Then its first attempt was rolled back with 40001 (its snapshot predates the holder's commit), and
    # the statement was run again and applied once on top of the holder's update
    assert "error" not in out, out
    assert seen.states == ["40001"] and seen.backoffs == [1]
    assert out["value"] == [[11]]
    assert db.run("SELECT v FROM counter") == [[11]]


def test_run_retries_a_real_deadlock(database_url: str, db: Database, seen: SimpleNamespace) -> None:
    # Given a holder that locked row 1, and a statement that locks row 2 then waits for row 1
    url = database_url
    setup = connect(url)
    setup.run("""
        CREATE TABLE pair (k int PRIMARY KEY, v int NOT NULL);
        INSERT INTO pair VALUES (1, 0), (2, 0);
        CREATE FUNCTION two_then_one() RETURNS int LANGUAGE plpgsql AS $$
        BEGIN
          UPDATE pair SET v = v + 10 WHERE k = 2;
          UPDATE pair SET v = v + 10 WHERE k = 1;
          RETURN (SELECT sum(v) FROM pair);
        END $$""")
    setup.close()
    holder = connect(url)
    holder.run("BEGIN")
    holder.run("UPDATE pair SET v = v + 1 WHERE k = 1")
    thread, out = _in_background(lambda: db.run("SELECT two_then_one() /* ours */"))
    _wait_until_blocked(url, "/* ours */")
    # When the holder then wants row 2: a deadlock. The statement waited first, so its deadlock check
    # (deadlock_timeout, 1 s) fires first and it is the victim
    holder.run("UPDATE pair SET v = v + 1 WHERE k = 2")
    holder.run("COMMIT")
    holder.close()
    thread.join(15)
    # Then the statement was rolled back with 40P01 and run again (a retry that started before the holder
    # committed may also meet a 40001: retried as well), and it applied once
    assert "error" not in out, out
    assert seen.states[0] == "40P01" and set(seen.states) <= {"40P01", "40001"}, seen.states
    assert len(seen.backoffs) == len(seen.states)
    assert out["value"] == [[22]]
    assert db.run("SELECT k, v FROM pair ORDER BY k") == [[1, 11], [2, 11]]


def test_run_retries_until_the_conflict_clears(db: Database, flaky: Callable[[], int], seen: SimpleNamespace) -> None:
    assert db.run("SELECT flaky(2)") == [[3]]
    assert flaky() == 3 and seen.states == ["40001", "40001"] and seen.backoffs == [1, 2]
    assert db.run("SELECT flaky(4, '40P01')") == [[5]]  # deadlocks too: call 4 fails, call 5 succeeds
    assert seen.states[2:] == ["40P01"] and seen.backoffs[2:] == [1]


@pytest.mark.parametrize("state", ["40001", "40P01"])
def test_run_gives_up_after_bounded_jittered_attempts(
    db: Database, flaky: Callable[[], int], seen: SimpleNamespace, state: str
) -> None:
    started = time.monotonic()
    with pytest.raises(QueryError) as raised:
        db.run(f"SELECT flaky(1000, '{state}')")
    # The caller sees the conflict itself, after CONFLICT_ATTEMPTS tries and CONFLICT_ATTEMPTS - 1 sleeps
    assert raised.value.sqlstate == state
    assert flaky() == CONFLICT_ATTEMPTS == 10
    assert seen.backoffs == list(range(1, CONFLICT_ATTEMPTS))
    # Full jitter under a doubling cap of at most 200 ms: each sleep in [0, min(200 ms, 10 ms * 2^(n-1))]
    assert len(seen.sleeps) == CONFLICT_ATTEMPTS - 1
    assert all(0 <= s <= min(0.2, 0.01 * 2**i) for i, s in enumerate(seen.sleeps))
    assert time.monotonic() - started < 3
    # And the connection is fine afterwards
    assert db.run("SELECT 1") == [[1]]


def test_run_does_not_retry_other_errors(db: Database, flaky: Callable[[], int], seen: SimpleNamespace) -> None:
    with pytest.raises(QueryError) as raised:
        db.run("SELECT flaky(1, '23505')")
    assert raised.value.sqlstate == "23505" and flaky() == 1 and seen.backoffs == []
    # A real unique violation: sent once
    db.run("INSERT INTO ledger (note) VALUES ('once')")
    with pytest.raises(QueryError) as duplicate:
        db.run("INSERT INTO ledger (note) VALUES ('once')")
    assert duplicate.value.sqlstate == "23505" and seen.backoffs == []


def test_a_statement_inside_a_transaction_is_not_retried_alone(
    db: Database, flaky: Callable[[], int], seen: SimpleNamespace
) -> None:
    # Resending one statement of a rolled-back transaction would run it without the ones before it
    with pytest.raises(QueryError) as raised, db.transaction() as tx:
        tx.run("INSERT INTO ledger (note) VALUES ('before')")
        tx.run("SELECT flaky(1)")
    assert raised.value.sqlstate == "40001" and flaky() == 1 and seen.backoffs == []
    assert db.run("SELECT count(*) FROM ledger") == [[0]]


def test_atomic_reruns_the_whole_work_and_commits_once(
    db: Database, flaky: Callable[[], int], seen: SimpleNamespace
) -> None:
    calls: list[int] = []

    def work(tx: Transaction) -> int:
        calls.append(len(calls) + 1)
        tx.run(f"INSERT INTO ledger (note) VALUES ('attempt {len(calls)}')")
        tx.run("SELECT flaky(2)")  # the first two attempts are rolled back here
        tx.run(f"INSERT INTO ledger (note) VALUES ('after {len(calls)}')")
        return len(calls)

    assert db.atomic(work) == 3
    assert calls == [1, 2, 3] and seen.backoffs == [1, 2]
    # Only the last attempt's writes, committed once; and no transaction left open
    assert db.run("SELECT note FROM ledger ORDER BY id") == [["attempt 3"], ["after 3"]]
    assert db.run("SELECT now() = statement_timestamp()") == [[True]]


def test_atomic_reruns_the_work_after_a_real_write_skew(serializable: str, db: Database, seen: SimpleNamespace) -> None:
    # Given two doctors on call, and the rule that one of them must stay
    setup = connect(serializable)
    setup.run(
        "CREATE TABLE oncall (doctor text PRIMARY KEY, on_duty bool NOT NULL);"
        "INSERT INTO oncall VALUES ('alice', true), ('bob', true)"
    )
    setup.close()
    calls: list[int] = []

    def bob_leaves() -> None:
        bob = connect(serializable)
        bob.run("BEGIN ISOLATION LEVEL SERIALIZABLE")
        if bob.run("SELECT count(*) FROM oncall WHERE on_duty")[0][0] >= 2:
            bob.run("UPDATE oncall SET on_duty = false WHERE doctor = 'bob'")
        bob.run("COMMIT")
        bob.close()

    def alice_leaves(tx: Transaction) -> bool:
        calls.append(1)
        on_duty = tx.run("SELECT count(*) FROM oncall WHERE on_duty")[0][0]
        if len(calls) == 1:
            bob_leaves()  # concurrently, Bob reads the same and leaves first
        if on_duty < 2:
            return False
        tx.run("UPDATE oncall SET on_duty = false WHERE doctor = 'alice'")
        return True

    # When Alice leaves in one atomic unit of work
    left = db.atomic(alice_leaves)
    # Then her first attempt was rolled back (40001: read/write dependencies), the second read Bob's
    # commit, and she stays
    assert seen.states == ["40001"] and len(calls) == 2 and left is False
    assert db.run("SELECT doctor FROM oncall WHERE on_duty") == [["alice"]]


def test_atomic_retries_a_serialization_failure_at_commit(
    db: Database, flaky: Callable[[], int], seen: SimpleNamespace
) -> None:
    # A deferred constraint trigger fails the first COMMIT with 40001
    db.run("""
        CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM flaky(1); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON ledger
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit()""")
    calls: list[int] = []

    def work(tx: Transaction) -> None:
        calls.append(1)
        tx.run("INSERT INTO ledger (note) VALUES ('committed')")

    db.atomic(work)
    assert len(calls) == 2 and seen.states == ["40001"] and flaky() == 2
    assert db.run("SELECT note FROM ledger") == [["committed"]]
    assert db.run("SELECT now() = statement_timestamp()") == [[True]]


def test_atomic_gives_up_after_bounded_attempts(db: Database, flaky: Callable[[], int], seen: SimpleNamespace) -> None:
    calls: list[int] = []

    def work(tx: Transaction) -> None:
        calls.append(1)
        tx.run("INSERT INTO ledger (note) VALUES ('never')")
        tx.run("SELECT flaky(1000)")

    with pytest.raises(QueryError) as raised:
        db.atomic(work)
    assert raised.value.sqlstate == "40001"
    assert len(calls) == CONFLICT_ATTEMPTS and seen.backoffs == list(range(1, CONFLICT_ATTEMPTS))
    assert db.run("SELECT count(*) FROM ledger") == [[0]]


def test_atomic_does_not_retry_other_errors_unless_asked(
    db: Database, flaky: Callable[[], int], seen: SimpleNamespace
) -> None:
    db.run("INSERT INTO ledger (note) VALUES ('taken')")
    calls: list[int] = []

    def insert_taken(tx: Transaction) -> None:
        calls.append(1)
        tx.run("INSERT INTO ledger (note) VALUES ('mine')")
        tx.run("INSERT INTO ledger (note) VALUES ('taken')")

    with pytest.raises(QueryError) as raised:
        db.atomic(insert_taken)
    assert raised.value.sqlstate == "23505" and len(calls) == 1 and seen.backoffs == []
    assert db.run("SELECT note FROM ledger") == [["taken"]]

    # With retry_on, a unique violation (a concurrent writer's, say) re-runs the work, which decides again
    calls.clear()

    def insert_or_reuse(tx: Transaction) -> str:
        calls.append(1)
        if len(calls) == 1:
            tx.run("INSERT INTO ledger (note) VALUES ('taken')")
        return tx.run("SELECT note FROM ledger WHERE note = 'taken'")[0][0]

    assert db.atomic(insert_or_reuse, retry_on=("23505",)) == "taken" and len(calls) == 2

    # And still bounded
    calls.clear()
    with pytest.raises(QueryError):
        db.atomic(insert_taken, retry_on=("23505",))
    assert len(calls) == CONFLICT_ATTEMPTS
    assert db.run("SELECT note FROM ledger") == [["taken"]]


# -- execution environments: worker processes calling the functions ---------------------------------

# Counters shared with the workers:
# - SEEN: conflicts (40001, 40P01) the database raised, each then retried or escaped;
# - ESCAPED: conflicts that escaped Database.run / Database.atomic (the retries ran out);
# - UNAVAILABLE: DatabaseUnavailable errors raised;
# - IN_PROGRESS: requests refused as "in progress" (CallbackInProgress: 503 or the "confirming" page, by
#   design; RequestInProgress: 409);
# - FAILED: requests that failed with any other error (a callback's is also answered 503 or "confirming":
#   the answers alone cannot tell it from "in progress").
SEEN, ESCAPED, UNAVAILABLE, IN_PROGRESS, FAILED = range(5)


def _start_environment(environment: dict[str, str], counters: Any) -> None:
    """Runs once in each worker: the functions' environment, the instrumentation, the cold start."""
    os.environ.update(environment)
    from payments import errors
    from payments.adapters import db as dbm

    def bump(i: int) -> None:
        with counters.get_lock():
            counters[i] += 1

    execute, run, atomic = dbm.Database._execute, dbm.Database.run, dbm.Database.atomic

    def counting_execute(self: Database, conn: Any, sql: str) -> Any:
        try:
            return execute(self, conn, sql)
        except dbm.QueryError as exc:
            if exc.sqlstate in dbm.RETRYABLE_CONFLICTS:
                bump(SEEN)
            raise

    def counting(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Database, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except dbm.QueryError as exc:
                if exc.sqlstate in dbm.RETRYABLE_CONFLICTS:
                    bump(ESCAPED)
                    what = args[0] if args and isinstance(args[0], str) else getattr(args[0], "__qualname__", "?")
                    what = " ".join(str(what).split())[:160]
                    print(f"[worker {os.getpid()}] conflict escaped {method.__name__}: {what}", file=sys.stderr)
                raise

        return wrapper

    unavailable_init = errors.DatabaseUnavailable.__init__

    def counting_unavailable(self: Any, *args: Any, **kwargs: Any) -> None:
        bump(UNAVAILABLE)
        unavailable_init(self, *args, **kwargs)

    from payments.services import create_payment as cp
    from payments.services import handle_callback as hc

    def counting_service(call: Callable[..., Any], in_progress: type[Exception]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return call(self, *args, **kwargs)
            except in_progress:
                bump(IN_PROGRESS)
                raise
            except errors.AnotherChargeUnsettled:
                raise  # an answer (a user's card is charged by one payment at a time), not a failure
            except Exception as exc:
                bump(FAILED)
                state = getattr(exc, "sqlstate", None)
                print(f"[worker {os.getpid()}] failed: {exc!r} sqlstate={state} <- {exc.__cause__!r}", file=sys.stderr)
                raise

        return wrapper

    hc.HandleCallback.__call__ = counting_service(hc.HandleCallback.__call__, hc.CallbackInProgress)  # type: ignore[method-assign]
    cp.CreatePayment.__call__ = counting_service(cp.CreatePayment.__call__, errors.RequestInProgress)  # type: ignore[method-assign]
    dbm.Database._execute = counting_execute  # type: ignore[method-assign]
    dbm.Database.run = counting(run)  # type: ignore[method-assign]
    dbm.Database.atomic = counting(atomic)  # type: ignore[method-assign]
    errors.DatabaseUnavailable.__init__ = counting_unavailable  # type: ignore[method-assign]


def _warm(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _session_isolation() -> str:
    return db_module.default_database().run("SHOW transaction_isolation")[0][0]


class Environments:
    """`size` execution environments (worker processes), each running one invocation at a time."""

    def __init__(self, size: int, **overrides: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.counters = context.Array("i", 5)
        environment = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("DATABASE_", "HYPAY_", "WEB_APP_", "POWERTOOLS_", "CREATE_PAYMENT_"))
        }
        self.pool = ProcessPoolExecutor(
            max_workers=size,
            mp_context=context,
            initializer=_start_environment,
            initargs=(environment | overrides, self.counters),
        )
        self.size = size
        # Start them all before the burst (a cold start takes about a second), so it is concurrent
        pids = {f.result(60) for f in [self.pool.submit(_warm, 0.3) for _ in range(size)]}
        assert pids

    def submit(self, fn: Callable[..., Answer], *args: Any, **kwargs: Any) -> Future[Answer]:
        return self.pool.submit(fn, *args, **kwargs)

    def isolation_levels(self) -> set[str]:
        return {f.result(30) for f in [self.pool.submit(_session_isolation) for _ in range(self.size * 2)]}

    @property
    def seen(self) -> int:
        return self.counters[SEEN]

    @property
    def escaped(self) -> int:
        return self.counters[ESCAPED]

    @property
    def unavailable(self) -> int:
        return self.counters[UNAVAILABLE]

    @property
    def in_progress(self) -> int:
        return self.counters[IN_PROGRESS]

    @property
    def failed(self) -> int:
        return self.counters[FAILED]

    def counts(self) -> dict[str, int]:
        return {
            "conflicts met": self.seen,
            "in progress": self.in_progress,
            "failed": self.failed,
            "conflicts escaped": self.escaped,
            "database unavailable": self.unavailable,
        }

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def many_purchases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "1000")
    from payments.settings import api_settings

    api_settings.cache_clear()
    reset_function_state(CREATE)


@pytest.fixture
def environments(env: Env, many_purchases: None) -> Iterator[Environments]:
    # Patient gateway calls: the simulator answers every delivery's verification from this process
    envs = Environments(6, HYPAY_TIMEOUT="10", HYPAY_BUDGET="20")
    yield envs
    envs.close()


def _results(futures: list[Future[Answer]]) -> list[Answer]:
    return [f.result(60) for f in futures]


def _five_hundreds(answers: list[Answer]) -> list[tuple[int, Any]]:
    return [(a.status, a.body) for a in answers if a.status >= 500]


def _assert_balances_are_their_purchases(env: Env, users: list[str]) -> None:
    for user in users:
        [(credits, purchased, rows)] = env.rows(
            "SELECT p.credits, COALESCE(sum(t.amount), 0)::int, count(t.*) FROM profiles p "
            "LEFT JOIN credit_transactions t ON t.user_id = p.id AND t.type = 'purchase' "
            "WHERE p.id = :u::uuid GROUP BY p.credits",
            u=user,
        )
        assert credits == purchased, (user, credits, purchased, rows)


def test_concurrent_callbacks_under_serializable(
    serializable: str, env: Env, environments: Environments, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 18 paid payments of three users (Starter and Pro alternating)
    env.rows(f"INSERT INTO profiles (id, email, full_name) VALUES ('{THIRD_USER}', 'third@example.com', 'Third')")
    users = [DEMO_USER_ID, OTHER_USER, THIRD_USER]
    paid: list[tuple[str, str, Any]] = []  # (user, payment id, Hyp transaction)
    for user in users:
        for i in range(6):
            answer = post({"credit_pack_id": STARTER if i % 2 else PRO}, key=f"cb-{i}", user=user)
            assert answer.status == 201, answer.body
            paid.append((user, answer.json["payment_id"], pay(env, answer.json)))
    expected = {pid: (100 if i % 2 else 500) for i, (_, pid, _) in enumerate(paid)}

    # When each is delivered four times (two browser redirects, two notifications), all at once: the
    # copies of one transaction next to each other and next to the user's other payments, six at a time
    rng = random.Random(20240401)
    jobs: list[tuple[Callable[[str], Answer], str, str]] = []
    for g in range(0, len(paid), 3):
        group = [(kind, t.redirect_query, pid) for _, pid, t in paid[g : g + 3] for kind in (browser, notify) * 2]
        rng.shuffle(group)
        jobs += group
    futures = [environments.submit(kind, raw) for kind, raw, _ in jobs]
    answers = _results(futures)

    # Then no delivery failed: browsers go to the success page (or, while another delivery of the same
    # transaction is running, to "confirming"); notifications are acknowledged or told that one is running
    assert _five_hundreds([a for (kind, _, _), a in zip(jobs, answers, strict=True) if kind is browser]) == []
    outcomes: Counter[str] = Counter()
    for (kind, _, pid), answer in zip(jobs, answers, strict=True):
        if kind is browser:
            page, query = location(answer)
            assert page in (SUCCESS_PAGE, PENDING_PAGE) and query == {"payment_id": [pid]}, (page, query)
            outcomes["browser " + ("success" if page == SUCCESS_PAGE else "confirming")] += 1
        elif answer.status == 503:
            assert answer.headers["retry-after"], answer.headers
            outcomes["notify 503"] += 1  # Hyp sends it again
        else:
            assert answer.status == 200 and answer.body == "OK", (answer.status, answer.body)
            outcomes["notify ok"] += 1
    # And the only deliveries not processed were those that met another delivery of the same transaction
    # in progress (Hyp's retry, or the page's polling, takes them): nothing failed, nothing was unavailable,
    # no conflict escaped the retries
    counts = environments.counts()
    assert (environments.failed, environments.escaped, environments.unavailable) == (0, 0, 0), (
        counts,
        outcomes,
    )
    assert outcomes["notify 503"] + outcomes["browser confirming"] == environments.in_progress, (counts, outcomes)

    # And every payment is completed with its credits granted once; each balance is its purchases
    for _, pid, _ in paid:
        assert env.rows(
            "SELECT p.status, count(t.*), COALESCE(sum(t.amount), 0)::int FROM payments p "
            "LEFT JOIN credit_transactions t ON t.payment_id = p.id WHERE p.id = :p::uuid GROUP BY p.status",
            p=pid,
        ) == [["completed", 1, expected[pid]]]
    _assert_balances_are_their_purchases(env, users)
    assert sum(env.credits(u) for u in users) == sum(expected.values())

    # And a later delivery of each (Hyp's retry, a reload) finds it done
    again = _results([environments.submit(f, t.redirect_query) for _, _, t in paid for f in (notify, browser)])
    assert [a.status for a in again[0::2]] == [200] * len(paid)
    assert {location(a)[0] for a in again[1::2]} == {SUCCESS_PAGE}
    assert sum(env.credits(u) for u in users) == sum(expected.values())

    # And all of it ran SERIALIZABLE
    assert _isolation(serializable) == "serializable"
    assert environments.isolation_levels() == {"serializable"}
    with capsys.disabled():
        print(f"\n[serializable callbacks] {dict(outcomes)}; {counts}")


def test_concurrent_purchases_of_one_user_under_serializable(
    serializable: str,
    env: Env,
    saved_card: str,
    environments: Environments,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a user with a saved card (its first payment made the token; it stays pending)
    first = env.payments()
    signs_before = env.sim.calls.count("SIGN")

    # When the user sends, all at once: 8 requests with one key, 24 with a key each, 6 saved-card charges
    same = [("same", {"credit_pack_id": STARTER})] * 8
    distinct = [(f"k-{i}", {"credit_pack_id": STARTER if i % 2 else PRO}) for i in range(24)]
    charges = [(f"charge-{i}", {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}) for i in range(6)]
    rest = distinct + charges
    random.Random(7).shuffle(rest)
    requests = same[:4] + rest[:10] + same[4:] + rest[10:]
    answers = _results([environments.submit(post, body, key) for key, body in requests])

    # Then none is a 5xx (nor rate limited): each key's own request is created, the repeated key is
    # created once and otherwise replayed or "still running, retry"
    counts = environments.counts()
    assert _five_hundreds(answers) == [], (_five_hundreds(answers), counts)
    by_key: dict[str, list[Answer]] = {}
    for (key, _), answer in zip(requests, answers, strict=True):
        by_key.setdefault(key, []).append(answer)
    refused: list[str] = []  # a user's card is charged by one payment at a time: a charge asked meanwhile is refused
    for key, [answer] in ((k, a) for k, a in by_key.items() if k != "same"):
        if key.startswith("charge-") and answer.status == 409 and "another saved-card charge" in answer.body:
            refused.append(key)
            continue
        assert answer.status == 201 and "idempotent-replayed" not in answer.headers, (key, answer.status, answer.body)
        if key.startswith("charge-"):
            assert answer.json["status"] == "completed", answer.body
    assert len(refused) < len(charges)
    repeated = by_key["same"]
    statuses = Counter(a.status for a in repeated)
    assert {a.status for a in repeated} <= {201, 409}, [(a.status, a.body) for a in repeated]
    fresh = [a for a in repeated if a.status == 201 and "idempotent-replayed" not in a.headers]
    assert len(fresh) == 1
    assert {a.json["payment_id"] for a in repeated if a.status == 201} == {fresh[0].json["payment_id"]}
    assert all(int(a.headers["retry-after"]) >= 1 for a in repeated if a.status == 409)
    assert (environments.failed, environments.escaped, environments.unavailable) == (0, 0, 0), counts
    assert statuses[409] == environments.in_progress, (statuses, counts)

    # And each refused charge, bought again with a new key once the others are done, is charged (a refusal at the
    # mark, after the check before writing passed, left its key's payment pending, nothing asked of Hyp)
    left = env.rows(
        "SELECT count(*) FROM payments WHERE idempotency_key LIKE '%:charge-%' AND status = 'pending'"
        " AND charge_attempt_id IS NULL"
    )[0][0]
    for key in refused:
        [(_, body)] = {k: b for k, b in charges if k == key}.items()
        again = environments.submit(post, body, f"{key}-again").result(60)
        assert again.status == 201 and again.json["status"] == "completed", again.body
        by_key[key] = [again]
        answers.append(again)

    # And one payment per key, one page signed per created page, credits once per charge
    created = {a.json["payment_id"] for a in answers if a.status == 201}
    assert len(env.payments()) == len(first) + len(created) + left == len(first) + 24 + 6 + 1 + left
    assert env.sim.calls.count("SIGN") - signs_before == 24 + 1
    for key in (k for k, _ in charges):
        [answer] = by_key[key]
        assert env.rows(
            "SELECT amount FROM credit_transactions WHERE payment_id = :p::uuid", p=answer.json["payment_id"]
        ) == [[500]]
    assert env.credits() == 6 * 500
    _assert_balances_are_their_purchases(env, [DEMO_USER_ID])

    # And a replay of the repeated key now answers the one payment
    replay = environments.submit(post, {"credit_pack_id": STARTER}, "same").result(60)
    assert replay.status == 201 and replay.json["payment_id"] == fresh[0].json["payment_id"]

    assert _isolation(serializable) == "serializable"
    assert environments.isolation_levels() == {"serializable"}
    with capsys.disabled():
        print(f"\n[serializable purchases] same key: {dict(statuses)}; {counts}")

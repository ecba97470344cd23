"""Migrations take the production database (seed fixture) and an empty one to the full schema."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pg8000.native
import pytest

from ops.migrate import _LOCK_ID, MigrationError, discover, migrate
from tests.support import schema
from tests.support.pg import connect, database

SEED = Path(__file__).resolve().parent.parent / "fixtures" / "seed-schema.sql"
SEED_TABLES = ["profiles", "credit_packs", "payments", "credit_transactions", "invoices", "idempotency_keys"]
NEW_COLUMNS = {
    "idempotency_keys": {"expiry_timestamp", "in_progress_expiry_timestamp"},
    "payments": {"currency", "credits", "save_card", "hypay_ccode", "review_reason", "charge_attempt_id"},
}


def snapshot(url: str) -> dict[str, list[dict]]:
    conn = connect(url)
    try:
        return {
            table: sorted(
                (row[0] for row in conn.run(f"SELECT to_jsonb(t) FROM public.{table} t")),
                key=lambda r: json.dumps(r, sort_keys=True),
            )
            for table in SEED_TABLES
        }
    finally:
        conn.close()


def columns(url: str, table: str) -> set[str]:
    conn = connect(url)
    try:
        rows = conn.run(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = :t",
            t=table,
        )
        return {r[0] for r in rows}
    finally:
        conn.close()


def test_production_database_migrates_without_touching_a_row(empty_database_url: str) -> None:
    # Given the production database as it stands, with its rows
    conn = connect(empty_database_url)
    conn.run(SEED.read_text(encoding="utf-8"))
    conn.close()
    before = snapshot(empty_database_url)
    web_app_columns = {t: columns(empty_database_url, t) for t in SEED_TABLES}
    db = database(empty_database_url)

    # When every migration runs
    applied = migrate(db)

    # Then all were applied, the new columns exist, and every seed row and column is as it was
    assert applied == [m.name for m in discover()]
    after = snapshot(empty_database_url)
    for table, rows in before.items():
        assert len(after[table]) == len(rows), table
        trimmed = sorted(
            ({k: v for k, v in row.items() if k in web_app_columns[table]} for row in after[table]),
            key=lambda r: json.dumps(r, sort_keys=True),
        )
        assert trimmed == rows, f"{table} rows changed"
    for table, new in NEW_COLUMNS.items():
        assert new <= columns(empty_database_url, table)
    for table, cols in web_app_columns.items():
        assert cols <= columns(empty_database_url, table), f"{table} lost a column"

    # And running again is a no-op
    assert migrate(db) == []
    assert snapshot(empty_database_url) == after
    db.close()


def test_empty_database_migrates_to_the_same_schema(empty_database_url: str, database_url: str) -> None:
    # Given an empty database / When migrated twice
    db = database(empty_database_url)
    assert migrate(db) == [m.name for m in discover()]
    assert migrate(db) == []
    db.close()
    # Then its tables have the same columns as the fully migrated template's
    for table in SEED_TABLES + ["saved_cards", "rate_limits", "hypay_transactions"]:
        assert columns(empty_database_url, table) == columns(database_url, table), table


def test_every_migration_file_is_safe_to_rerun_by_hand(database_url: str) -> None:
    # Given a migrated database / When each file is run again as psql would (outside the runner)
    conn = connect(database_url)
    try:
        for migration in discover():
            conn.run(migration.sql)
    finally:
        conn.close()
    # Then nothing failed and the runner still considers it up to date
    db = database(database_url)
    assert migrate(db) == []
    db.close()


def test_changed_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    # Given a copy of sql/ whose first file changed after it was applied
    for migration in discover():
        (tmp_path / migration.name).write_text(migration.sql, encoding="utf-8")
    first = discover()[0]
    (tmp_path / first.name).write_text(first.sql + "\n-- edited\n", encoding="utf-8")
    db = database(database_url)
    # Then the runner refuses instead of skipping it silently
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(db, tmp_path)
    db.close()


def test_credit_grant_constraints_hold(database_url: str) -> None:
    # Given a user with one completed payment and its purchase grant
    conn = connect(database_url)
    conn.run("INSERT INTO profiles (id, email) VALUES ('33333333-3333-4333-8333-333333333333', 'a@example.com')")
    conn.run(
        "INSERT INTO payments (id, user_id, amount, status, hypay_transaction_id) VALUES "
        "('cccccccc-0000-4000-8000-000000000001', '33333333-3333-4333-8333-333333333333', 10, 'completed', '555')"
    )
    grant = (
        "INSERT INTO credit_transactions (user_id, amount, type, payment_id) VALUES "
        "('33333333-3333-4333-8333-333333333333', 10, 'purchase', 'cccccccc-0000-4000-8000-000000000001')"
    )
    conn.run(grant)
    # Then a second grant for the same payment, a reused Hyp transaction id and an unknown status fail
    import pg8000.exceptions

    for statement in (
        grant,
        "INSERT INTO payments (user_id, amount, hypay_transaction_id) VALUES "
        "('33333333-3333-4333-8333-333333333333', 10, '555')",
        "INSERT INTO payments (user_id, amount, status) VALUES ('33333333-3333-4333-8333-333333333333', 10, 'paid')",
    ):
        with pytest.raises(pg8000.exceptions.DatabaseError):
            conn.run(statement)
    conn.close()


@pytest.mark.parametrize("recorded", [0, 2], ids=["nothing-recorded", "two-recorded"])
def test_a_failure_midway_leaves_the_schema_and_the_records_as_they_were(
    empty_database_url: str, tmp_path: Path, recorded: int
) -> None:
    # Given production, with the first `recorded` migrations applied and recorded
    conn = connect(empty_database_url)
    conn.run(SEED.read_text(encoding="utf-8"))
    conn.close()
    migrations = discover()
    db = database(empty_database_url)
    if recorded:
        (tmp_path / "first").mkdir()
        for migration in migrations[:recorded]:
            (tmp_path / "first" / migration.name).write_text(migration.sql, encoding="utf-8")
        migrate(db, tmp_path / "first")
    # And a 004 that fails after its own statements (and 003's before it) have taken effect
    for migration in migrations:
        (tmp_path / migration.name).write_text(migration.sql, encoding="utf-8")
    failing = next(m for m in migrations if m.version == "004")
    (tmp_path / failing.name).write_text(failing.sql + "\nSELECT 1 / 0;\n", encoding="utf-8")
    before_schema, data = schema.catalog(empty_database_url), schema.rows(empty_database_url)

    # When the pending migrations run
    with pytest.raises(MigrationError, match=f"{failing.name} failed: division by zero .*nothing was applied"):
        migrate(db, tmp_path)

    # Then the schema, every row and the records are exactly as before (003 included: one transaction)
    assert schema.catalog(empty_database_url) == before_schema
    assert schema.rows(empty_database_url) == data
    # And once the file is mended, the next run applies all that was pending
    (tmp_path / failing.name).write_text(failing.sql, encoding="utf-8")
    assert migrate(db, tmp_path) == [m.name for m in migrations[recorded:]]
    db.close()


def test_a_table_in_use_makes_the_run_give_way_instead_of_holding_up_the_web_app(empty_database_url: str) -> None:
    import threading
    import time

    from ops.migrate import run

    # Given production, with the web app in the middle of a transaction that read payments (a slow request, or a
    # session left idle in its transaction)
    seed = connect(empty_database_url)
    seed.run(SEED.read_text(encoding="utf-8"))
    seed.close()
    web_app = connect(empty_database_url)
    web_app.run("BEGIN")
    web_app.run("SELECT count(*) FROM public.payments")
    # When the migrations run, each table lock allowed to wait briefly, twice
    said: list[str] = []
    paused: list[float] = []
    outcome: dict[str, BaseException] = {}

    def migrating() -> None:
        db = database(empty_database_url)
        try:
            run(db, lock_timeout_seconds=1.0, attempts=2, say=said.append, sleep=paused.append)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["raised"] = exc
        finally:
            db.close()

    runner = threading.Thread(target=migrating)
    runner.start()
    monitor = connect(empty_database_url)
    deadline = time.monotonic() + 10
    while not monitor.run("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
        assert time.monotonic() < deadline, "the migration never waited for the web app's table"
        time.sleep(0.02)
    # And another web-app request reads payments while the migration waits for the table
    other: dict[str, object] = {}
    reader = threading.Thread(
        target=lambda: other.update(rows=connect(empty_database_url).run("SELECT count(*) FROM public.payments"))
    )
    reader.start()
    # Then that request is served while the first transaction is still open: the run gave way (its wait is
    # bounded on the server, not only by the client), instead of queueing the web app behind it
    reader.join(20)
    assert not reader.is_alive() and "rows" in other, "a web-app request waited behind the migration"
    runner.join(20)
    assert not runner.is_alive()
    assert isinstance(outcome.get("raised"), MigrationError) and "stayed in use" in str(outcome["raised"])
    assert len(said) == 1 and "trying again" in said[0] and paused == [2.0]
    # And nothing was applied
    assert monitor.run("SELECT to_regclass('public.schema_migrations')") == [[None]]  # not even its ledger
    # Once the web app's transaction ends, the run applies everything
    web_app.run("COMMIT")
    db = database(empty_database_url)
    assert migrate(db) == [m.name for m in discover()]
    db.close()
    for conn in (web_app, monitor):
        conn.close()


def test_the_command_reports_an_unreachable_database_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.migrate import main

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/nothing")
    assert main([]) == 1
    assert "error: could not connect to the database; nothing was applied" in capsys.readouterr().err


def test_the_command_names_the_database_it_worked_on_never_its_password(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.migrate import main
    from payments.adapters.db import parse_database_url

    # Given a deployer's DATABASE_URL (with a password in it)
    params = parse_database_url(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url.replace("postgres@", "postgres:s3cret-pw@", 1))
    # When the runner finishes ("up to date": a DATABASE_URL not exported would have meant the local one)
    assert main([]) == 0
    out = capsys.readouterr()
    # Then it said which database it was, and nothing of the password
    where = f"{params.unix_sock}/" if params.unix_sock else f"{params.host}:{params.port}/"
    assert f"{where}{params.database}" in out.err and ".5432:" not in out.err
    assert "not set" not in out.err and "s3cret-pw" not in out.err + out.out
    assert "database is up to date" in out.out


@pytest.mark.parametrize(("seconds", "sent"), [(5.0, "5000ms"), (0.0004, "1ms"), (0, "0ms")])
def test_the_lock_timeout_is_sent_in_milliseconds_and_zero_means_no_limit(seconds: float, sent: str) -> None:
    from ops.migrate import _run

    statements: list[str] = []

    class Tx:
        def run(self, sql: str) -> list[list[object]]:
            statements.append(sql)
            return [[False]]

    _run(Tx(), [], False, None, seconds)  # type: ignore[arg-type]
    assert f"SET LOCAL lock_timeout = '{sent}'" in statements
    # after the runners' advisory lock, which another runner waits for however long (the transaction's own lock
    # timeout lifted before it)
    assert statements[:2] == ["SET LOCAL lock_timeout = 0", "SELECT pg_advisory_xact_lock(7304202611)"]
    assert statements.index(f"SET LOCAL lock_timeout = '{sent}'") == 2


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read", "serializable"])
def test_a_runner_that_waited_for_another_finds_the_database_up_to_date(
    empty_database_url: str, isolation: str
) -> None:
    # Given a database whose sessions default to `isolation`, and a runner holding the migrations' lock
    seed = connect(empty_database_url)
    seed.run(SEED.read_text(encoding="utf-8"))
    name = urlsplit(empty_database_url).path.lstrip("/")
    seed.run(f"ALTER DATABASE {pg8000.native.identifier(name)} SET default_transaction_isolation = '{isolation}'")
    seed.close()
    holder = connect(empty_database_url)
    holder.run("BEGIN")
    holder.run(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
    first = database(empty_database_url)
    second = database(empty_database_url)
    out: dict[str, object] = {}

    def go(db: Any, key: str) -> None:
        try:
            out[key] = migrate(db)
        except BaseException as exc:  # noqa: BLE001
            out[key] = exc

    # When two runners wait for it, one behind the other, and it lets go
    a = threading.Thread(target=go, args=(first, "a"))
    a.start()
    mon = connect(empty_database_url)
    while not mon.run("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"):
        time.sleep(0.02)
    b = threading.Thread(target=go, args=(second, "b"))
    b.start()
    while len(mon.run("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'")) < 2:
        time.sleep(0.02)
    holder.run("COMMIT")
    a.join(60)
    b.join(60)
    for conn in (holder, mon, first, second):
        conn.close()
    # Then the first applies every migration and the second finds the database up to date (under REPEATABLE READ its
    # snapshot predated its wait: it ran every file again, then failed on schema_migrations' key)
    results = sorted([out["a"], out["b"]], key=lambda v: bool(v))
    assert results[0] == [] and results[1] == [m.name for m in discover()], out


# What the web app runs to erase a user, knowing only its own tables (children first, as their foreign keys ask).
_ERASE_USER = [
    "DELETE FROM public.idempotency_keys WHERE payment_id IN (SELECT id FROM public.payments WHERE user_id = :u::uuid)",
    "DELETE FROM public.credit_transactions WHERE user_id = :u::uuid",
    "DELETE FROM public.invoices WHERE user_id = :u::uuid",
    "DELETE FROM public.payments WHERE user_id = :u::uuid",
    "DELETE FROM public.profiles WHERE id = :u::uuid",
]


def _migrated_production(url: str) -> pg8000.native.Connection:
    """The production database (the seed schema) migrated; a connection to it."""
    conn = connect(url)
    conn.run(SEED.read_text(encoding="utf-8"))
    db = database(url)
    migrate(db)
    db.close()
    return conn


def test_the_web_app_still_deletes_a_user_or_a_payment_whose_card_was_kept(empty_database_url: str) -> None:
    # Given the production database migrated, and a user whose card the backend kept after two payments
    conn = _migrated_production(empty_database_url)
    user, first, second = (
        "5eed0000-0000-4000-8000-000000000001",
        "5eed0000-0000-4000-8000-000000000002",
        "5eed0000-0000-4000-8000-000000000003",
    )
    conn.run("INSERT INTO public.profiles (id, email, credits) VALUES (:u::uuid, 'erase@example.com', 0)", u=user)
    for payment in (first, second):
        conn.run(
            "INSERT INTO public.payments (id, user_id, amount, status) VALUES (:p::uuid, :u::uuid, 49.90, 'completed')",
            p=payment,
            u=user,
        )
    conn.run(
        "INSERT INTO public.saved_cards (user_id, token, expiry_month, expiry_year, last4, payment_id)"
        " VALUES (:u::uuid, '1234567890123456789', 12, 2030, '0000', :p::uuid)",
        u=user,
        p=second,
    )
    # When the web app deletes the payment that saved the card / Then the card stays the user's, naming no payment
    conn.run("DELETE FROM public.payments WHERE id = :p::uuid", p=second)
    assert conn.run("SELECT payment_id FROM public.saved_cards WHERE user_id = :u::uuid", u=user) == [[None]]
    # When it erases the user as it did before this backend / Then it can, and the card goes with them
    conn.run("BEGIN")
    for sql in _ERASE_USER:
        conn.run(sql, u=user)
    conn.run("COMMIT")
    assert conn.run("SELECT count(*) FROM public.saved_cards WHERE user_id = :u::uuid", u=user) == [[0]]
    conn.close()


def test_018_finds_the_cards_keys_by_their_columns_whatever_their_names(empty_database_url: str) -> None:
    # Given a database migrated up to 017 whose card keys were renamed (a restore by another tool)
    conn = _migrated_production(empty_database_url)
    conn.run("""
        ALTER TABLE public.saved_cards DROP CONSTRAINT saved_cards_user_id_fkey;
        ALTER TABLE public.saved_cards DROP CONSTRAINT saved_cards_payment_id_fkey;
        ALTER TABLE public.saved_cards ADD CONSTRAINT saved_cards_user
          FOREIGN KEY (user_id) REFERENCES public.profiles(id);
        ALTER TABLE public.saved_cards ADD CONSTRAINT saved_cards_payment
          FOREIGN KEY (payment_id) REFERENCES public.payments(id);
        DELETE FROM public.schema_migrations WHERE version = '018';
    """)
    # When 018 runs (and again, by hand)
    db = database(empty_database_url)
    assert any("018" in name for name in migrate(db))
    db.close()
    sql = (Path(__file__).resolve().parents[2] / "sql" / "018_saved_cards_go_with_their_user.sql").read_text()
    conn.run(sql)
    # Then each column has one key, with the rule
    keys = conn.run("""
        SELECT a.attname, c.confdeltype FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.conrelid = 'public.saved_cards'::regclass AND c.contype = 'f' ORDER BY 1""")
    assert keys == [["payment_id", "n"], ["user_id", "c"]]
    conn.close()


@pytest.mark.parametrize("column", ["user_id", "payment_id"])
def test_018_runs_where_the_usual_key_name_is_a_key_to_another_table(empty_database_url: str, column: str) -> None:
    # Given saved_cards' column also constrained to another table under the name 018 would give its own key (a
    # saved_cards made before 003, referring to auth.users, say)
    conn = _migrated_production(empty_database_url)
    conn.run(f"""
        CREATE TABLE public.accounts (id uuid PRIMARY KEY);
        ALTER TABLE public.saved_cards DROP CONSTRAINT saved_cards_{column}_fkey;
        ALTER TABLE public.saved_cards ADD CONSTRAINT saved_cards_{column}_fkey
          FOREIGN KEY ({column}) REFERENCES public.accounts(id) NOT VALID;
        DELETE FROM public.schema_migrations WHERE version = '018';
    """)
    # When 018 runs / Then it adds its key under a name of the server's, and leaves the other table's
    db = database(empty_database_url)
    migrate(db)
    db.close()
    keys = conn.run(
        """
        SELECT c.confrelid::regclass::text, c.confdeltype FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.conrelid = 'public.saved_cards'::regclass AND c.contype = 'f' AND a.attname = :col ORDER BY 1""",
        col=column,
    )
    rule = "c" if column == "user_id" else "n"
    parent = "profiles" if column == "user_id" else "payments"
    assert sorted(keys) == sorted([["accounts", "a"], [parent, rule]]), keys
    conn.close()

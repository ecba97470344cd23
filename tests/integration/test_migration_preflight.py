"""Migrations meet the live data as it is: the preflight, and adopting the web app's legacy rows.

The databases are built from fixtures: seed-schema.sql (production today) plus legacy_web_app.sql
(statuses outside today's list, NULLs, one Hyp transaction on several payments, repeated purchase
grants, an updated_at trigger) and legacy_invoices.sql (two invoices for one payment).
"""

from __future__ import annotations

import re
from pathlib import Path

import pg8000.exceptions
import pytest

from ops.migrate import (
    MARKER,
    RULES,
    CheckRule,
    JournalNumberRule,
    LegacyRowsFound,
    MigrationError,
    UniqueRule,
    check,
    discover,
    main,
    migrate,
    review,
    run,
)
from tests.support.pg import connect, database
from tests.support.schema import WEB_APP_TABLES, catalog, load, only, rows

SEED = "seed-schema.sql"
LEGACY = "legacy_web_app.sql"
INVOICES = "legacy_invoices.sql"
SEED_PAYMENT = "bbbbbbbb-0000-4000-8000-000000000001"


def d(n: int) -> str:
    return f"dddddddd-0000-4000-8000-{n:012x}"


def e(n: int) -> str:
    return f"eeeeeeee-0000-4000-8000-{n:012x}"


# Every row 003 refuses in legacy_web_app.sql: (rule, row id, the row kept / the value refused).
STATUS = {d(1): "paid", d(2): "cancelled", d(3): "Completed", d(7): "paid"}
DUPLICATE_PAYMENTS = {d(5): d(4), d(7): d(6), d(8): d(6), d(9): SEED_PAYMENT}
DUPLICATE_GRANTS = {e(2): e(1), e(4): e(3), e(5): e(3)}
EXPECTED = (
    {("payments_status_check", "payments", i) for i in STATUS}
    | {("payments_hypay_transaction_id_key", "payments", i) for i in DUPLICATE_PAYMENTS}
    | {("credit_transactions_one_purchase_per_payment", "credit_transactions", i) for i in DUPLICATE_GRANTS}
)
_STATUS_CHECK = (
    "constraint payments.payments_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'completed'::text,"
    " 'failed'::text, 'expired'::text, 'needs_review'::text])))"
)
CLEAN_SCHEMA = {
    _STATUS_CHECK + " validated=true",
    "index CREATE UNIQUE INDEX payments_hypay_transaction_id_key ON public.payments USING btree"
    " (hypay_transaction_id) WHERE (hypay_transaction_id IS NOT NULL)",
    "index CREATE UNIQUE INDEX credit_transactions_one_purchase_per_payment ON public.credit_transactions"
    " USING btree (payment_id) WHERE ((type = 'purchase'::text) AND (payment_id IS NOT NULL))",
}
ADOPTED_SCHEMA = {
    _STATUS_CHECK + " NOT VALID validated=false",
    "index CREATE UNIQUE INDEX payments_hypay_transaction_id_key ON public.payments USING btree"
    " (hypay_transaction_id) WHERE ((hypay_transaction_id IS NOT NULL) AND (legacy_duplicate_of IS NULL))",
    "index CREATE UNIQUE INDEX credit_transactions_one_purchase_per_payment ON public.credit_transactions"
    " USING btree (payment_id) WHERE ((type = 'purchase'::text) AND (payment_id IS NOT NULL)"
    " AND (legacy_duplicate_of IS NULL))",
}
DUPLICATE_INVOICE = "ffffffff-0000-4000-8000-000000000001"

# The invoice insert with the arbiter as adapters/journal.py names it today, and as it must be named to
# work on a database whose duplicate invoices were adopted (it works on every database after sql/006).
INVOICE_TODAY = (
    "INSERT INTO public.invoices (user_id, payment_id, invoice_number, amount) VALUES (:u::uuid, :p::uuid, 'n', 1)"
    " ON CONFLICT (payment_id) WHERE payment_id IS NOT NULL DO NOTHING"
)
INVOICE_NAMING_THE_MARKER = INVOICE_TODAY.replace(
    "WHERE payment_id IS NOT NULL", f"WHERE payment_id IS NOT NULL AND {MARKER} IS NULL"
)


def found(findings) -> set[tuple[str, str, str]]:  # noqa: ANN001 - list[Finding]
    return {(f.rule.name, f.rule.table, f.row_id) for f in findings}


def personal_data(url: str) -> list[str]:
    """What the report must never show: e-mails, names, and Hyp's transaction ids."""
    conn = connect(url)
    try:
        values = conn.run(
            "SELECT email FROM profiles UNION SELECT full_name FROM profiles"
            " UNION SELECT hypay_transaction_id FROM payments UNION SELECT idempotency_key FROM payments"
        )
    finally:
        conn.close()
    return [v[0] for v in values if v[0]]


@pytest.fixture
def legacy_url(empty_database_url: str) -> str:
    """The production database with the web app's legacy rows."""
    load(empty_database_url, SEED, LEGACY)
    return empty_database_url


def test_preflight_lists_each_refused_row_and_applies_nothing(empty_database_url: str) -> None:
    # Given production with every kind of legacy row
    load(empty_database_url, SEED, LEGACY, INVOICES)
    schema, data = catalog(empty_database_url), rows(empty_database_url)
    db = database(empty_database_url)

    # When the migrations run without an opt-in
    with pytest.raises(LegacyRowsFound) as raised:
        run(db)
    db.close()

    # Then exactly the refused rows are listed, with the rule and the row kept, and nothing else
    findings = raised.value.preflight.findings
    assert found(findings) == EXPECTED | {("invoices_one_per_payment", "invoices", DUPLICATE_INVOICE)}
    details = {f.row_id: f.detail for f in findings if isinstance(f.rule, UniqueRule)}
    assert all(details[i] == f"same hypay_transaction_id as {kept} (kept)" for i, kept in DUPLICATE_PAYMENTS.items())
    assert all(details[i] == f"same payment_id as {kept} (kept)" for i, kept in DUPLICATE_GRANTS.items())
    # And nothing changed: no schema, no row, no record (not even the records table)
    assert catalog(empty_database_url) == schema
    assert rows(empty_database_url) == data
    assert "schema_migrations" not in data


def test_make_migrate_stops_with_the_report_and_exit_status_2(
    legacy_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given production with legacy rows, and `make migrate` pointed at it
    load(legacy_url, INVOICES)
    monkeypatch.setenv("DATABASE_URL", legacy_url)
    monkeypatch.delenv("MIGRATE_ADOPT_LEGACY", raising=False)
    schema, data = catalog(legacy_url), rows(legacy_url)

    # When it runs (and when only the check runs)
    status = main([])
    out = capsys.readouterr().out
    assert main(["--check"]) == 2
    check_out = capsys.readouterr().out

    # Then it exits 2 listing every refused row by id and rule, the choices, and that nothing was applied
    assert status == 2
    for rule, table, row_id in EXPECTED:
        assert re.search(rf"^    {table} {row_id}  ", out, re.M), row_id
        assert rule in out
    assert "MIGRATE_ADOPT_LEGACY=1 make migrate" in out and out.rstrip().endswith("nothing was applied")
    assert check_out.strip() == out.strip().removesuffix("nothing was applied").strip()
    # And no e-mail, name, Hyp transaction id or idempotency key, and no change
    for value in personal_data(legacy_url):
        assert value not in out, "the report shows personal data"
    assert catalog(legacy_url) == schema and rows(legacy_url) == data


def test_adopting_keeps_every_row_as_it_was_and_marks_the_duplicates(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given production with legacy rows (and an updated_at trigger on payments)
    before = rows(legacy_url, ledger=False)
    web_app_columns = {t: set(before[t][0]) for t in WEB_APP_TABLES}

    # When the operator opts in: MIGRATE_ADOPT_LEGACY=1 make migrate
    monkeypatch.setenv("DATABASE_URL", legacy_url)
    monkeypatch.setenv("MIGRATE_ADOPT_LEGACY", "1")
    assert main([]) == 0
    out = capsys.readouterr().out

    # Then every migration is applied and the adopted rows are listed, by id, without personal data
    assert out.rstrip().endswith("applied: " + ", ".join(m.name for m in discover()))
    assert f"adopted {len(EXPECTED)} existing rows" in out
    assert all(row_id in out for _, _, row_id in EXPECTED)
    assert not [v for v in personal_data(legacy_url) if v in out]
    # And every original row is still there, every original column unchanged (updated_at too) ...
    after = rows(legacy_url, ledger=False)
    assert only(web_app_columns, after) == only(web_app_columns, before)
    # ... the only mark is legacy_duplicate_of, on exactly the later duplicates, naming the row kept
    conn = connect(legacy_url)
    try:
        marked = {
            r[0]: r[1]
            for t in ("payments", "credit_transactions", "invoices")
            for r in conn.run(f"SELECT id::text, {MARKER}::text FROM {t} WHERE {MARKER} IS NOT NULL")
        }
        assert marked == DUPLICATE_PAYMENTS | DUPLICATE_GRANTS
        # ... and the legacy statuses are kept, the check NOT VALID; the trigger is back as it was
        assert dict(
            conn.run("SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE 'payments_%_check'")
        ) == {
            "payments_status_check": False,
            "payments_currency_check": True,
        }
        assert conn.run("SELECT tgenabled FROM pg_trigger WHERE tgname = 'payments_touch_updated_at'") == [["O"]]
    finally:
        conn.close()

    # And the schema is the clean one but for the NOT VALID check and the indexes leaving marked rows out
    adopted, clean = set(catalog(legacy_url)), set(catalog(database_url))
    assert adopted - clean == ADOPTED_SCHEMA | {"trigger payments.payments_touch_updated_at O"}
    assert clean - adopted == CLEAN_SCHEMA

    # And running again is a no-op; so is every file run again by hand, as psql would
    db = database(legacy_url)
    assert migrate(db) == []
    conn = connect(legacy_url)
    for migration in discover():
        conn.run(migration.sql)
    conn.close()
    assert migrate(db) == [] and rows(legacy_url, ledger=False) == after
    # And the adopted rows stay listed for review
    assert found(review(db)) == EXPECTED
    assert check(db).pending == []
    db.close()


def test_constraints_hold_for_new_rows_after_adoption(legacy_url: str) -> None:
    # Given production with legacy rows, adopted
    db = database(legacy_url)
    assert found(run(db, adopt_legacy=True).adopted) == EXPECTED
    db.close()
    conn = connect(legacy_url)
    user = "33333333-3333-4333-8333-333333333333"
    grant = "INSERT INTO credit_transactions (user_id, amount, type, payment_id) VALUES ('{u}', 1, 'purchase', '{p}')"
    refused = [
        # a status outside the list, new ...
        f"INSERT INTO payments (user_id, amount, status) VALUES ('{user}', 1, 'paid')",
        # ... or kept on a legacy row that changes (a changed row must have a listed status)
        f"UPDATE payments SET updated_at = now() WHERE id = '{d(1)}'",
        # a Hyp transaction already held by a kept row, a legacy-status row, or the seed's payment
        f"INSERT INTO payments (user_id, amount, hypay_transaction_id) VALUES ('{user}', 1, '11000002')",
        f"INSERT INTO payments (user_id, amount, hypay_transaction_id) VALUES ('{user}', 1, '11000001')",
        f"INSERT INTO payments (user_id, amount, hypay_transaction_id) VALUES ('{user}', 1, '12788261')",
        # another purchase grant for a payment that has one (kept), however many it had
        grant.format(u=user, p=d(4)),
        grant.format(u=user, p=d(6)),
    ]
    try:
        for statement in refused:
            with pytest.raises(pg8000.exceptions.DatabaseError) as raised:
                conn.run(statement)
            assert raised.value.args[0]["C"] in ("23505", "23514"), statement
        # Then the legacy rows move forward only into today's statuses
        conn.run(f"UPDATE payments SET status = 'completed' WHERE id = '{d(1)}'")
        # And new rows are accepted as on any database
        conn.run(
            f"INSERT INTO payments (user_id, amount, status, hypay_transaction_id) VALUES ('{user}', 1, 'pending', '9')"
        )
        conn.run(grant.format(u=user, p=d(2)))
    finally:
        conn.close()


def test_duplicate_invoices_are_adopted_only_when_the_backend_arbiter_names_the_marker(empty_database_url: str) -> None:
    # Given production with two invoices for one payment
    load(empty_database_url, SEED, INVOICES)
    schema, data = catalog(empty_database_url), rows(empty_database_url)
    db = database(empty_database_url)

    # When adopted while the backend's invoice insert names only `payment_id IS NOT NULL` (its arbiter
    # would no longer be inferable from the index that leaves the duplicate out)
    with pytest.raises(MigrationError, match="ON CONFLICT") as raised:
        run(db, adopt_legacy=True, backend_statements=[INVOICE_TODAY])
    # Then nothing was applied
    assert "nothing was applied" in str(raised.value)
    assert catalog(empty_database_url) == schema and rows(empty_database_url) == data

    # When the backend's insert names the marker
    outcome = run(db, adopt_legacy=True, backend_statements=[INVOICE_NAMING_THE_MARKER])
    db.close()
    # Then the later invoice is marked, kept, and the one-invoice rule holds for everything else
    assert found(outcome.adopted) == {("invoices_one_per_payment", "invoices", DUPLICATE_INVOICE)}
    conn = connect(empty_database_url)
    try:
        assert conn.run(f"SELECT count(*) FROM invoices WHERE payment_id = '{SEED_PAYMENT}'") == [[2]]
        user = "11111111-1111-4111-8111-111111111111"
        insert = INVOICE_NAMING_THE_MARKER.replace(":u::uuid", f"'{user}'").replace(":p::uuid", f"'{SEED_PAYMENT}'")
        conn.run(insert)  # DO NOTHING: the payment has its (kept) invoice
        assert conn.run(f"SELECT count(*) FROM invoices WHERE payment_id = '{SEED_PAYMENT}'") == [[2]]
        with pytest.raises(pg8000.exceptions.DatabaseError):
            conn.run(f"INSERT INTO invoices (user_id, payment_id, amount) VALUES ('{user}', '{SEED_PAYMENT}', 1)")
    finally:
        conn.close()


def test_invoice_arbiter_naming_the_marker_works_on_a_clean_database(database_url: str) -> None:
    # Given a database with nothing adopted (sql/006 added the marker anyway)
    conn = connect(database_url)
    try:
        # When the insert naming the marker runs / Then its arbiter is the clean index
        conn.run(f"EXPLAIN {INVOICE_NAMING_THE_MARKER.replace(':u::uuid', 'NULL').replace(':p::uuid', 'NULL')}")
    finally:
        conn.close()


def test_clean_production_database_passes_the_preflight(empty_database_url: str) -> None:
    # Given production as the seed has it: NULLs, no legacy row
    load(empty_database_url, SEED)
    db = database(empty_database_url)
    # When checked / Then everything is pending and nothing refused; the opt-in changes nothing there
    preflight = check(db)
    assert [m.name for m in preflight.pending] == [m.name for m in discover()] and preflight.findings == []
    assert run(db, adopt_legacy=True).adopted == []
    assert review(db) == []
    db.close()


def _normal(sql: str) -> str:
    return " ".join(sql.split())


def test_every_rule_is_its_migrations_own() -> None:
    # Given each rule's definition / Then its migration creates exactly that (so adopting changes nothing else)
    files = {m.version: _normal(m.sql) for m in discover()}
    for rule in RULES:
        if isinstance(rule, CheckRule):
            assert f"ADD CONSTRAINT {rule.constraint} CHECK ({rule.condition})" in files[rule.version], rule.name
        elif isinstance(rule, JournalNumberRule):
            index = f"CREATE UNIQUE INDEX IF NOT EXISTS {rule.index} ON public.{rule.table} ((ltrim(hypay_id, '0')));"
            assert index in files[rule.version], rule.name
        else:
            index = f"CREATE UNIQUE INDEX IF NOT EXISTS {rule.index} ON public.{rule.table} ({rule.key})"
            assert f"{index} WHERE {rule.where};" in files[rule.version], rule.name


def test_every_constraint_a_migration_puts_on_existing_rows_has_a_rule(empty_database_url: str) -> None:
    # Given production's constraints and unique indexes
    load(empty_database_url, SEED)
    query = (
        "SELECT conname FROM pg_constraint WHERE conrelid = ANY (:t::regclass[]) AND contype IN ('c', 'u', 'x')"
        " UNION SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = ANY (:t::regclass[]) AND indisunique"
    )
    tables = "{" + ",".join(f"public.{t}" for t in WEB_APP_TABLES) + "}"
    conn = connect(empty_database_url)
    before = {r[0] for r in conn.run(query, t=tables)}
    # When migrated
    db = database(empty_database_url)
    migrate(db)
    db.close()
    added = {r[0] for r in conn.run(query, t=tables)} - before
    conn.close()
    # Then each one added to the web app's tables has a preflight rule, but the currency check (on the
    # column 003 adds, with a default: no existing row can break it); the journal's (our own table since 004, which
    # a backend before 014 filled) has one too
    web_app_rules = {rule.name for rule in RULES if rule.table in WEB_APP_TABLES}
    assert added == web_app_rules | {"payments_currency_check"}


def test_migration_error_on_a_changed_recorded_file_comes_before_any_check(legacy_url: str, tmp_path: Path) -> None:
    # Given a database whose 001 was recorded, then edited
    for migration in discover()[:1]:
        (tmp_path / migration.name).write_text(migration.sql, encoding="utf-8")
    db = database(legacy_url)
    migrate(db, tmp_path)
    first = discover()[0]
    (tmp_path / first.name).write_text(first.sql + "\n-- edited\n", encoding="utf-8")
    # When checked / Then the edit is the error, nothing else
    with pytest.raises(MigrationError, match="changed after it was applied"):
        check(db, tmp_path)
    db.close()

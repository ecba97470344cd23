"""payments_backend (sql/005): the functions' least-privilege role, and what Supabase's browser roles may see.

The flows run through the functions with DATABASE_URL naming a LOGIN member of the role (`backend_env`);
the tests arrange and check as the tables' owner (`Env.url`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pg8000.exceptions
import pg8000.native
import pytest

from ops.hypay_simulator import APPROVING_CARD, DECLINING_CARD
from ops.lambda_context import LocalLambdaContext
from ops.migrate import discover, migrate
from ops.seed import DEMO_USER_ID
from ops.template import load, load_handler
from tests.integration.test_hypay_callback import browser, notify
from tests.support.api import invoke, reset_function_state
from tests.support.payments import CALLBACK, CREATE, CVV, PRO, STARTER, SUCCESS_PAGE, Env, post
from tests.support.pg import Server, connect, database, with_user

ROLE = "payments_backend"
SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed-schema.sql"
ADMIN_TOKEN = "test-admin-token-0123456789"
CLEANUP = "CleanupFunction"
DEBUG = "DebugFunction"
INSUFFICIENT_PRIVILEGE = "42501"

# Exactly what the backend's SQL needs (adapters/*.py, idempotency/persistence.py); nothing else anywhere.
EXPECTED_TABLE_GRANTS = {
    "idempotency_keys": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "payments": {"SELECT", "INSERT", "UPDATE"},
    "credit_packs": {"SELECT"},
    "credit_transactions": {"SELECT", "INSERT"},
    "invoices": {"SELECT", "INSERT"},  # ON CONFLICT reads the arbiter index's columns and predicate
    "saved_cards": {"SELECT", "INSERT", "UPDATE"},
    "rate_limits": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "hypay_transactions": {"SELECT", "INSERT", "UPDATE"},
    "hypay_unverified_callbacks": {"SELECT", "INSERT", "UPDATE"},
    "refunds": {"SELECT", "INSERT", "UPDATE"},
    "admin_audit_log": {"SELECT", "INSERT"},  # append-only: never UPDATE or DELETE
}
EXPECTED_COLUMN_GRANTS = {
    ("profiles", "SELECT"): {"id", "email", "full_name", "credits"},
    ("profiles", "UPDATE"): {"credits", "updated_at"},
}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")
# The tables the backend added (003, 004, and the runner's ledger): for the backend only.
BACKEND_ONLY_TABLES = (
    "saved_cards",
    "rate_limits",
    "hypay_transactions",
    "hypay_unverified_callbacks",
    "schema_migrations",
    "refunds",
    "admin_audit_log",
)
SUPABASE_ROLES = ("anon", "authenticated", "service_role")
BROWSER_ROLES = ("anon", "authenticated")


def denied(conn: pg8000.native.Connection, sql: str) -> bool:
    """True when the statement is refused for want of a privilege (42501); the connection stays usable."""
    try:
        conn.run(sql)
    except pg8000.exceptions.DatabaseError as exc:
        return exc.args[0].get("C") == INSUFFICIENT_PRIVILEGE
    return False


# -- the role itself ------------------------------------------------------------------------------


def test_role_is_no_superuser_owns_nothing_and_has_exactly_the_expected_grants(
    database_url: str, backend_login: str
) -> None:
    conn = connect(database_url)
    try:
        # Given a migrated database / Then the role is a plain NOLOGIN group role, a member of nothing
        [attributes] = conn.run(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin"
            " FROM pg_roles WHERE rolname = :r",
            r=ROLE,
        )
        assert attributes == [False] * 6
        assert conn.run("SELECT count(*) FROM pg_auth_members WHERE member = :r::regrole", r=ROLE) == [[0]]
        # And the login the functions use is a member of it only, and no more than it
        assert conn.run(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls FROM pg_roles"
            " WHERE rolname = :r",
            r=backend_login,
        ) == [[False]]
        assert conn.run(
            "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = :r::regrole", r=backend_login
        ) == [[ROLE]]
        # And it owns nothing in the database (tables, schemas, functions, types ...)
        assert conn.run(
            "SELECT count(*) FROM pg_shdepend WHERE refobjid = :r::regrole AND deptype = 'o'"
            " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            r=ROLE,
        ) == [[0]]
        assert conn.run("SELECT count(*) FROM pg_class WHERE relowner = :r::regrole", r=ROLE) == [[0]]

        # And its explicit grants are exactly the expected ones, on tables and on columns
        tables = conn.run(
            "SELECT c.relname, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = :r::regrole",
            r=ROLE,
        )
        granted: dict[str, set[str]] = {}
        for table, privilege in tables:
            granted.setdefault(table, set()).add(privilege)
        assert granted == EXPECTED_TABLE_GRANTS
        columns = conn.run(
            "SELECT c.relname, t.attname, a.privilege_type FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid,"
            " aclexplode(t.attacl) a WHERE a.grantee = :r::regrole",
            r=ROLE,
        )
        by_column: dict[tuple[str, str], set[str]] = {}
        for table, column, privilege in columns:
            by_column.setdefault((table, privilege), set()).add(column)
        assert by_column == EXPECTED_COLUMN_GRANTS
        assert conn.run(
            "SELECT n.nspname, a.privilege_type FROM pg_namespace n, aclexplode(n.nspacl) a"
            " WHERE a.grantee = :r::regrole",
            r=ROLE,
        ) == [["public", "USAGE"]]

        # And what it may effectively do (its grants plus PUBLIC's) on every relation is that, no more
        relations = conn.run(
            "SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
            " AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
        )
        assert {name for name, _ in relations} >= set(EXPECTED_TABLE_GRANTS) | {"profiles", "videos"}
        for relation, kind in relations:
            if kind == "S":
                assert conn.run(
                    "SELECT has_sequence_privilege(:r, :s, 'USAGE,SELECT,UPDATE')", r=ROLE, s=f"public.{relation}"
                ) == [[False]], relation
                continue
            effective = {
                p
                for p in TABLE_PRIVILEGES
                if conn.run("SELECT has_table_privilege(:r, :t, :p)", r=ROLE, t=f"public.{relation}", p=p)[0][0]
            }
            assert effective == EXPECTED_TABLE_GRANTS.get(relation, set()), relation
            for column, privilege in conn.run(
                "SELECT attname, p FROM pg_attribute, unnest(CAST(:privs AS text[])) p"
                " WHERE attrelid = :t::regclass AND attnum > 0 AND NOT attisdropped"
                "   AND has_column_privilege(:r, attrelid, attnum, p)",
                r=ROLE,
                t=f"public.{relation}",
                privs=list(COLUMN_PRIVILEGES),
            ):
                allowed = privilege in EXPECTED_TABLE_GRANTS.get(relation, set()) or column in (
                    EXPECTED_COLUMN_GRANTS.get((relation, privilege), set())
                )
                assert allowed, (relation, column, privilege)
        # And it may create nothing in the schema
        assert conn.run("SELECT has_schema_privilege(:r, 'public', 'CREATE')", r=ROLE) == [[False]]
    finally:
        conn.close()


def test_every_table_the_role_may_touch_shows_it_every_row(database_url: str) -> None:
    # Given a migrated database / Then each table the role has a privilege on has its policy, so row
    # level security (on for the backend's tables, perhaps one day on the web app's) never hides rows from it
    conn = connect(database_url)
    try:
        policies = conn.run(
            "SELECT tablename, cmd, roles::text[], qual, with_check FROM pg_policies WHERE :r = ANY(roles)", r=ROLE
        )
        # the audit log: insert and read only (append-only), every other table: all rows
        audit = sorted(p[1:] for p in policies if p[0] == "admin_audit_log")
        assert audit == [["INSERT", [ROLE], None, "true"], ["SELECT", [ROLE], "true", None]], audit
        others = [p for p in policies if p[0] != "admin_audit_log"]
        expected = [t for t in EXPECTED_TABLE_GRANTS if t != "admin_audit_log"]
        assert sorted(p[0] for p in others) == sorted([*expected, "profiles"])
        assert all(p[1:] == ["ALL", [ROLE], "true", "true"] for p in others), others
        rls = {r[0] for r in conn.run("SELECT relname FROM pg_class WHERE relrowsecurity")}
        assert rls == set(BACKEND_ONLY_TABLES)
    finally:
        conn.close()


def test_the_login_is_refused_what_the_backend_does_not_do(backend_env: Env, backend_login: str) -> None:
    # Given the functions' login on a seeded database
    conn = connect(with_user(backend_env.url, backend_login))
    try:
        # Then what the backend does works, on the RLS tables too (once refused on rate_limits) ...
        assert conn.run(
            "INSERT INTO rate_limits (bucket, window_start, count) VALUES ('probe', now(), 1) RETURNING count"
        ) == [[1]]
        assert conn.run("SELECT count(*) FROM rate_limits") == [[1]]
        assert conn.run("SELECT id::text, credits FROM profiles WHERE id = :u::uuid", u=DEMO_USER_ID) == [
            [DEMO_USER_ID, 0]
        ]
        # ... and nothing else: other tables, other columns, deleting history, changing the schema
        for statement in (
            "SELECT * FROM videos",
            "SELECT * FROM transcripts",
            "SELECT * FROM schema_migrations",
            "SELECT * FROM profiles",
            f"UPDATE profiles SET email = 'x@example.com' WHERE id = '{DEMO_USER_ID}'",
            "INSERT INTO profiles (id) VALUES (gen_random_uuid())",
            "DELETE FROM payments",
            "DELETE FROM hypay_transactions",
            "DELETE FROM credit_transactions",
            "UPDATE invoices SET amount = 0",
            "UPDATE credit_packs SET price = 0",
            "TRUNCATE rate_limits",
            "CREATE TABLE public.intruder (id int)",
            "ALTER TABLE payments DISABLE ROW LEVEL SECURITY",
            "DROP POLICY payments_backend_all_rows ON saved_cards",
        ):
            assert denied(conn, statement), statement
    finally:
        conn.close()


# -- the flows, as the role -------------------------------------------------------------------------


def functions_logged_in_as(env: Env) -> set[str]:
    """Who the functions' open connections are logged in as (they stay open between invocations)."""
    database_name = urlsplit(env.url).path.lstrip("/")
    return {
        r[0]
        for r in env.rows(
            "SELECT usename FROM pg_stat_activity WHERE datname = :d AND application_name = 'payments'",
            d=database_name,
        )
    }


def reconfigure(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    from payments.adapters import hypay
    from payments.settings import api_settings, callback_settings

    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for cached in (api_settings, callback_settings, hypay.hypay_settings):
        cached.cache_clear()
    for function in (CREATE, CALLBACK):
        reset_function_state(function)


def test_pay_save_the_card_and_charge_it_as_the_role(
    backend_env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = backend_env
    reconfigure(monkeypatch, HYPAY_SEND_INVOICE="true")
    before = env.credits()

    # When a payment is created (rate limit, idempotency record, pack, profile, payment) and read back
    created = post({"credit_pack_id": STARTER, "save_card": True}, key="role-1")
    assert created.status == 201, created.body
    pid = created.json["payment_id"]
    assert post({"credit_pack_id": STARTER, "save_card": True}, key="role-1").json == created.json
    assert invoke(CREATE, "GET", f"/payments/{pid}", user=DEMO_USER_ID).json["status"] == "pending"

    # And it is paid on Hyp's page, the browser comes back, then Hyp's notification
    transaction = env.sim.pay(created.json["payment_url"], APPROVING_CARD, cvv="125")
    returned = browser(transaction.redirect_query)
    assert returned.status == 302 and returned.headers["location"].startswith(SUCCESS_PAGE), returned.body
    assert notify(transaction.redirect_query).status == 200

    # Then completed once: credits, purchase row, invoice, journal, saved card
    assert env.status(pid) == "completed" and env.credits() == before + 100
    assert env.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=pid) == [[1]]
    assert env.rows("SELECT count(*) FROM invoices WHERE payment_id = :p::uuid", p=pid) == [[1]]
    assert env.rows("SELECT decision, verified FROM hypay_transactions") == [["granted", True]]
    assert env.rows("SELECT last4 FROM saved_cards WHERE user_id = :u::uuid", u=DEMO_USER_ID) == [
        [transaction.card_last4]
    ]

    # When the saved card is charged (the charge attempt mark, Hyp's soft, settling), and replayed
    charged = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="role-2")
    assert charged.status == 201 and charged.json["status"] == "completed", charged.body
    assert post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="role-2").json == charged.json
    # Then 500 more credits, charged once
    assert env.credits() == before + 600 and env.sim.calls.count("soft") == 1

    # When a card is declined / Then the payment fails, nothing granted
    declined = post({"credit_pack_id": STARTER}, key="role-3").json
    failed = env.sim.pay(declined["payment_url"], DECLINING_CARD, cvv="123")
    assert browser(failed.redirect_query).status == 302
    assert env.status(declined["payment_id"]) == "failed" and env.credits() == before + 600

    # And all of it ran on connections logged in as the role's member, not as the owner
    assert functions_logged_in_as(env) == {backend_login}


def test_unverifiable_callback_is_kept_then_settled_as_the_role(
    backend_env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = backend_env
    reconfigure(monkeypatch, HYPAY_VERIFY_MODE="verify")
    before = env.credits()
    payment = post({"credit_pack_id": STARTER}, key="role-4").json
    transaction = env.sim.pay(payment["payment_url"], APPROVING_CARD, cvv="125")

    # When Hyp refuses our VERIFY once / Then "not yet", the callback kept as received
    env.sim.faults.add("VERIFY", "ccode", ccode=901)
    assert notify(transaction.redirect_query).status == 503
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks") == [[1]]
    assert env.rows("SELECT decision FROM hypay_transactions") == [["unverified"]]

    # When it comes again / Then it is settled and granted once
    assert notify(transaction.redirect_query).status == 200
    assert env.credits() == before + 100
    assert env.rows("SELECT decision, verified FROM hypay_transactions") == [["granted", True]]
    assert functions_logged_in_as(env) == {backend_login}


@pytest.fixture
def backend_admin(backend_env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("ADMIN_API_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("STAGE", "dev")
    monkeypatch.setenv("CLEANUP_WEB_APP_RETENTION_SECONDS", "86400")  # the role purges the web app's rows too
    for name in (CLEANUP, DEBUG):
        reset_function_state(name)
    yield backend_env
    for name in (CLEANUP, DEBUG):
        reset_function_state(name)


def test_cleanup_schedule_admin_and_debug_endpoints_as_the_role(backend_admin: Env, backend_login: str) -> None:
    env = backend_admin
    # Given one of each thing the cleanup handles, a callback on record that could not be verified
    now = int(time.time())
    env.rows(f"""
        INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash)
          VALUES ('fn#old', 'completed', 1, 'h');
        INSERT INTO idempotency_keys (key, status, created_at, updated_at)
          VALUES ('web-old-done', 'completed', now() - interval '3 days', now() - interval '3 days');
        INSERT INTO payments (id, user_id, amount, status, created_at, review_reason, charge_attempt_id) VALUES
          ('cccccccc-0000-4000-8000-000000000001', '{DEMO_USER_ID}', 10, 'pending', now() - interval '3 hours',
           NULL, NULL),
          ('cccccccc-0000-4000-8000-000000000002', '{DEMO_USER_ID}', 10, 'pending', now() - interval '3 hours',
           NULL, gen_random_uuid()),
          ('cccccccc-0000-4000-8000-000000000003', '{DEMO_USER_ID}', 10, 'pending', now() - interval '3 hours',
           NULL, NULL);
        INSERT INTO hypay_unverified_callbacks (raw_sha256, hypay_id, payment_id, source, raw_callback)
          VALUES (repeat('a', 64), '777', 'cccccccc-0000-4000-8000-000000000003', 'notify', 'Id=777');
        INSERT INTO hypay_transactions (hypay_id, payment_id, order_ref, ccode, amount, currency, source, verified,
                                        decision)
          VALUES ('777', 'cccccccc-0000-4000-8000-000000000003', 'cccccccc-0000-4000-8000-000000000003', 0, 10,
                  'ILS', 'notify', false, 'unverified');
        INSERT INTO rate_limits (bucket, window_start, count) VALUES ('old', now() - interval '2 days', 3);
        INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash)
          VALUES ('fn#old-2', 'completed', {now - 60}, 'h');
    """)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    # When the admin endpoint runs the cleanup / Then every step did its work
    report = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=auth)
    assert report.status == 200, report.body
    assert report.json == {
        "purged_idempotency_records": 2,
        "purged_web_app_records": 1,
        "expired_payments": 1,
        "payments_flagged_for_review": 1,
        "refunds_outcome_unknown": 0,
        "purged_rate_limit_windows": 1,
        "complete": True,
        "counts_exact": True,
    }
    assert env.status("cccccccc-0000-4000-8000-000000000003") == "pending"  # a callback is on record

    # When the hourly schedule runs it / Then it works (nothing left to do)
    event = json.loads((Path(__file__).resolve().parents[2] / "events" / "cleanup_schedule.json").read_text())
    scheduled = load_handler(load().functions[CLEANUP])(event, LocalLambdaContext(function_name=CLEANUP))
    assert scheduled["complete"] is True and scheduled["purged_idempotency_records"] == 0

    # When the debug endpoint exercises the real store / Then every scenario is ok
    for kind in ("basic", "duplicate", "cleanup"):
        answer = invoke(DEBUG, "GET", f"/debug/test-idempotency?type={kind}", headers=auth)
        assert answer.status == 200 and answer.json["ok"] is True, answer.body
    assert functions_logged_in_as(env) == {backend_login}


# -- Supabase's browser roles -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def supabase_roles(pg_server: Server) -> Iterator[tuple[str, ...]]:
    """Supabase's API roles, on a server that lacks them (created NOLOGIN; dropped again if we created them)."""
    admin = connect(pg_server.url)
    created = []
    for role in SUPABASE_ROLES:
        if not admin.run("SELECT 1 FROM pg_roles WHERE rolname = :r", r=role):
            admin.run(f"CREATE ROLE {role} NOLOGIN")
            created.append(role)
    yield SUPABASE_ROLES
    for role in created:
        admin.run(f"DROP ROLE IF EXISTS {role}")
    admin.close()


@pytest.fixture
def supabase_production(empty_database_url: str, supabase_roles: tuple[str, ...]) -> Iterator[str]:
    """The production database as on Supabase: its API roles granted everything in public, by default
    privileges too (what Supabase sets up), then every migration applied, then rows in every new table."""
    conn = connect(empty_database_url)
    conn.run("GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role")
    conn.run("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role")
    conn.run(SEED.read_text(encoding="utf-8"))
    db = database(empty_database_url)
    assert migrate(db) == [m.name for m in discover()]
    db.close()
    conn.run("""
        INSERT INTO saved_cards (user_id, token, expiry_month, expiry_year, last4)
          VALUES ('11111111-1111-4111-8111-111111111111', '9999999999999999', 12, 2030, '1234');
        INSERT INTO rate_limits (bucket, window_start, count) VALUES ('u', now(), 1);
        INSERT INTO hypay_transactions (hypay_id, source, verified, decision) VALUES ('1', 'notify', true, 'granted');
        INSERT INTO hypay_unverified_callbacks (raw_sha256, hypay_id, source, raw_callback)
          VALUES (repeat('b', 64), '2', 'notify', 'Id=2');
        INSERT INTO payments (id, user_id, amount, status)
          SELECT '22222222-2222-4222-8222-222222222222', id, 10, 'completed' FROM profiles LIMIT 1;
        INSERT INTO refunds (payment_id, original_hypay_id, method, amount, currency, status, reason,
                             idempotency_key, admin)
          VALUES ('22222222-2222-4222-8222-222222222222', '1', 'refund', 10, 'ILS', 'succeeded', 'r', 'k', 'a');
        INSERT INTO admin_audit_log (admin, action) VALUES ('a', 'cleanup');
    """)
    conn.close()
    yield empty_database_url  # dropped with its default privileges before the session drops the roles


@pytest.mark.parametrize("role", BROWSER_ROLES)
def test_browser_roles_can_read_none_of_the_backends_tables(supabase_production: str, role: str) -> None:
    conn = connect(supabase_production)
    try:
        # Given Supabase's default grants to anon and authenticated on every new table in public
        # When the browser role asks for anything in the backend's tables / Then permission denied
        conn.run(f"SET ROLE {role}")
        for table in BACKEND_ONLY_TABLES:
            for statement in (
                f"SELECT count(*) FROM {table}",
                f"INSERT INTO {table} DEFAULT VALUES",
                f"DELETE FROM {table}",
                f"TRUNCATE {table}",
            ):
                assert denied(conn, statement), (role, statement)
        conn.run("RESET ROLE")
        for table in BACKEND_ONLY_TABLES:
            assert conn.run(
                "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = :r AND table_name = :t",
                r=role,
                t=table,
            ) == [[0]], table
        # And the web app's own tables keep the grants it gave them (the migrations add only)
        assert conn.run("SELECT has_table_privilege(:r, 'public.profiles', 'SELECT')", r=role) == [[True]]

        # And were a grant ever given back by mistake, row level security still shows them no row
        conn.run("BEGIN")
        for table in BACKEND_ONLY_TABLES:
            conn.run(f"GRANT SELECT ON {table} TO {role}")
        conn.run(f"SET LOCAL ROLE {role}")
        for table in BACKEND_ONLY_TABLES:
            assert conn.run(f"SELECT count(*) FROM {table}") == [[0]], table
        conn.run("ROLLBACK")
        # (while the owner sees the rows)
        assert all(conn.run(f"SELECT count(*) > 0 FROM {t}") == [[True]] for t in BACKEND_ONLY_TABLES)
    finally:
        conn.close()


def test_files_run_by_hand_before_the_runner_leave_the_ledger_closed_too(
    empty_database_url: str, supabase_roles: tuple[str, ...]
) -> None:
    # Given a Supabase-like database where every file was run by hand (psql, the SQL editor): no ledger yet
    conn = connect(empty_database_url)
    try:
        conn.run("GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role")
        conn.run("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role")
        for migration in discover():
            conn.run(migration.sql)
        assert conn.run("SELECT to_regclass('public.schema_migrations')") == [[None]]
        # When the runner runs later (it creates its ledger, then applies and records every file again)
        db = database(empty_database_url)
        assert migrate(db) == [m.name for m in discover()]
        db.close()
        # Then the browser roles have nothing on its ledger either, and it has row level security on
        assert conn.run(
            "SELECT count(*) FROM information_schema.role_table_grants"
            " WHERE grantee IN ('anon', 'authenticated') AND table_name = 'schema_migrations'"
        ) == [[0]]
        assert conn.run("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.schema_migrations'::regclass") == [
            [True]
        ]
    finally:
        conn.close()


def test_migration_is_a_no_op_when_run_again_by_hand(supabase_production: str) -> None:
    # Given a migrated Supabase-like database
    conn = connect(supabase_production)
    try:
        acl = "SELECT relname, relacl::text FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
        policies = "SELECT tablename, policyname, roles::text FROM pg_policies ORDER BY 1, 2"
        before = (conn.run(acl), conn.run(policies))
        # When sql/005 runs again as psql would / Then grants and policies are exactly as they were
        conn.run(next(m.sql for m in discover() if m.version == "005"))
        assert (conn.run(acl), conn.run(policies)) == before
    finally:
        conn.close()


def test_a_role_with_more_than_least_privilege_is_refused(database_url: str) -> None:
    # Given payments_backend was given BYPASSRLS by hand (roles are per server: restored below)
    conn = connect(database_url)
    sql = next(m.sql for m in discover() if m.version == "005")
    try:
        conn.run(f"ALTER ROLE {ROLE} BYPASSRLS")
        # When 005 runs / Then it refuses, saying why
        with pytest.raises(pg8000.exceptions.DatabaseError, match="not least privilege"):
            conn.run(sql)
    finally:
        conn.run(f"ALTER ROLE {ROLE} NOBYPASSRLS")
        conn.close()

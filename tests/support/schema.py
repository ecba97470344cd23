"""What a database looks like, to compare before and after a migration run: its schema and its rows."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.pg import connect

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# The web app's tables (tests/fixtures/seed-schema.sql).
WEB_APP_TABLES = ("profiles", "credit_packs", "payments", "credit_transactions", "invoices", "idempotency_keys")

# Everything in the public schema a migration can change, by definition (no oids): tables and columns,
# constraints (and whether validated), indexes, triggers (and whether enabled), row level security,
# policies, privileges and comments.
_CATALOG = """
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable
       || ' default=' || coalesce(column_default, '')
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || '.' || conname || ' ' || pg_get_constraintdef(oid)
       || ' validated=' || convalidated
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'trigger ' || tgrelid::regclass || '.' || tgname || ' ' || tgenabled::text
  FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text NOT LIKE 'pg_%'
UNION ALL
SELECT 'relation ' || relname || ' ' || relkind::text || ' rls=' || relrowsecurity
       || ' acl=' || coalesce(relacl::text, '') || ' comment=' || coalesce(obj_description(oid, 'pg_class'), '')
  FROM pg_class WHERE relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'column comment ' || c.relname || '.' || a.attname || ' ' || d.description
  FROM pg_description d JOIN pg_class c ON c.oid = d.objoid JOIN pg_attribute a ON a.attrelid = c.oid
                        AND a.attnum = d.objsubid
 WHERE c.relnamespace = 'public'::regnamespace AND d.objsubid > 0
UNION ALL
SELECT 'policy ' || tablename || '.' || policyname || ' ' || array_to_string(roles, ',') FROM pg_policies
 WHERE schemaname = 'public'
"""


def load(url: str, *fixtures: str) -> None:
    """Run fixture files (tests/fixtures/NAME), each in one go, as psql would."""
    conn = connect(url)
    try:
        for name in fixtures:
            conn.run((FIXTURES / name).read_text(encoding="utf-8"))
    finally:
        conn.close()


def catalog(url: str) -> list[str]:
    """The schema, as sorted definitions."""
    conn = connect(url)
    try:
        return sorted(row[0] for row in conn.run(_CATALOG))
    finally:
        conn.close()


def rows(url: str, tables: tuple[str, ...] = WEB_APP_TABLES, *, ledger: bool = True) -> dict[str, list[dict]]:
    """Every row of `tables` (and of schema_migrations, when it exists), as JSON objects, sorted by id."""
    conn = connect(url)
    try:
        names = list(tables)
        if ledger and conn.run("SELECT to_regclass('public.schema_migrations') IS NOT NULL")[0][0]:
            names.append("schema_migrations")
        return {
            table: sorted(
                (row[0] for row in conn.run(f"SELECT to_jsonb(t) FROM public.{table} t")),
                key=lambda r: json.dumps(r, sort_keys=True),
            )
            for table in names
        }
    finally:
        conn.close()


def only(columns: dict[str, set[str]], snapshot: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """`snapshot` cut down to the given columns of each table (e.g. the ones the web app created)."""
    return {
        table: sorted(
            ({k: v for k, v in row.items() if k in columns[table]} for row in table_rows),
            key=lambda r: json.dumps(r, sort_keys=True),
        )
        for table, table_rows in snapshot.items()
        if table in columns
    }

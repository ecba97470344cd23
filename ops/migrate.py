"""Apply the numbered plain-SQL migrations in sql/ that a database has not had yet.

Each file runs in its own transaction under an advisory lock (so two runners never interleave)
and is recorded in `schema_migrations` with its checksum; a recorded file that has since changed
is refused rather than silently skipped. `python -m ops.migrate` uses DATABASE_URL, else the
`make run` database.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from payments.adapters.db import Database, bind
from payments.settings import DatabaseSettings

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_ID = 7_304_202_611  # arbitrary, constant: the migration runner's advisory lock

_LEDGER = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
  version     text PRIMARY KEY,
  name        text NOT NULL,
  checksum    text NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now()
)"""


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The migrations in `sql_dir`, in order. Stray files are an error, not a surprise later."""
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_description.sql")
        found.append(Migration(match.group(1), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


def migrate(db: Database, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply what is pending; return the names applied (empty when up to date)."""
    applied = []
    db.run(_LEDGER)
    for migration in discover(sql_dir):
        with db.transaction() as tx:
            tx.run(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
            rows = tx.run(bind("SELECT checksum FROM public.schema_migrations WHERE version = :v", v=migration.version))
            if rows:
                if rows[0][0] != migration.checksum:
                    raise MigrationError(f"{migration.name} changed after it was applied; add a new migration instead")
                continue
            tx.run(migration.sql)
            tx.run(
                bind(
                    "INSERT INTO public.schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
                    v=migration.version,
                    n=migration.name,
                    c=migration.checksum,
                )
            )
            applied.append(migration.name)
    return applied


def main() -> int:
    from ops.embedded import database_url

    with database_url() as url:
        db = Database.from_settings(DatabaseSettings(DATABASE_URL=url))
        try:
            applied = migrate(db)
        finally:
            db.close()
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

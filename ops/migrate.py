"""Apply the numbered plain-SQL migrations in sql/ that a database has not had yet.

A live database holds what the web app wrote over the years, not what the constraints of a pending
migration expect. So before anything changes, a preflight runs the read-only checks of the pending
migrations (`RULES`) and lists every existing row one of them would refuse (table, id, rule; never
personal data). Such rows stop the run with that report (`LegacyRowsFound`, exit status 2) unless the
operator opts in to adopting them (`--adopt-legacy`, or `MIGRATE_ADOPT_LEGACY=1 make migrate`), which
takes every row forward without deleting or rewriting it: a CHECK is added `NOT VALID` (existing rows
keep their values, every new or changed row must satisfy it), and a duplicate is marked with
`legacy_duplicate_of` (the id of the row kept, the earliest) and left out of the unique index.

All pending migrations, the adoption and the records in `schema_migrations` run in ONE transaction
under an advisory lock (PostgreSQL's DDL is transactional; CREATE INDEX CONCURRENTLY cannot be used
in a migration file for that reason): a failure anywhere leaves the schema and the records exactly as
they were. After an adoption, the backend's statements must still plan against the adopted schema (an
`ON CONFLICT ... WHERE` arbiter must still find its index) before it commits. A recorded file that has
since changed is refused rather than silently skipped.

On a live database the web app keeps running: its requests read and write the tables a migration alters, and
an `ALTER TABLE` waits for every transaction using the table, while every request that comes after it waits
for the `ALTER TABLE`. So the run takes every lock it needs on existing tables first, together (`_take_locks`: it
never holds one table while waiting for another, and gives way before the server's deadlock check could abort a
request of the web app), for at most `--lock-timeout` seconds (default 5), after which the whole run is rolled back
(nothing applied, the web app's requests go on) and tried again, a few times, with growing pauses. A run that still
cannot get its locks ends with a message naming the cause (a long transaction, often one left idle: see
docs/deploy.md). Each statement may run as long as it needs (`--query-timeout`, default 600 s, is only the
client's guard against a dead connection): an index built over a large table takes its time.

`python -m ops.migrate [--check] [--adopt-legacy] [--lock-timeout S] [--attempts N] [--query-timeout S]` uses
DATABASE_URL, else the `make run` database.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from payments.adapters.db import Database, QueryError, Transaction, bind, parse_database_url
from payments.errors import ConfigurationError, DatabaseUnavailable
from payments.settings import DatabaseSettings

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_ID = 7_304_202_611  # arbitrary, constant: the migration runner's advisory lock
ADOPT_ENV = "MIGRATE_ADOPT_LEGACY"
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out
# What gives way like a busy table: a lock not granted in time, a deadlock or a conflict the server broke on our side.
GIVES_WAY = (LOCK_NOT_AVAILABLE, "40P01", "40001")
INSUFFICIENT_PRIVILEGE = "42501"
LOCK_TIMEOUT_SECONDS = 5.0
ATTEMPTS = 5
QUERY_TIMEOUT_SECONDS = 600.0
EXIT_LEGACY_ROWS = 2

_LEDGER = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
  version     text PRIMARY KEY,
  name        text NOT NULL,
  checksum    text NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now()
)"""

# The marker of an adopted duplicate (sql/006 adds it everywhere; adoption adds it earlier when needed).
MARKER = "legacy_duplicate_of"


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


# -- the rules pending migrations impose on existing rows ---------------------------------------------


@dataclass(frozen=True)
class CheckRule:
    """A CHECK constraint a migration adds to a table the web app already has rows in.

    `condition` is the migration's own, word for word (a test holds them together). Adopted: the
    constraint is added NOT VALID before the migration, whose IF NOT EXISTS guard then skips it.
    """

    version: str
    table: str
    constraint: str
    condition: str
    column: str  # whose value the report shows (a status: no personal data)
    text: str

    @property
    def name(self) -> str:
        return self.constraint

    def pending_sql(self) -> str:
        return bind(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = :c AND conrelid = :t::regclass)",
            c=self.constraint,
            t=f"public.{self.table}",
        )

    def offending_sql(self) -> str:
        """(id, the refused value) of every row the constraint refuses; NULL passes a CHECK, as here."""
        return (
            f"SELECT id::text, left({self.column}, 40) FROM public.{self.table}"
            f" WHERE NOT ({self.condition}) ORDER BY created_at, id"
        )

    def review(self, tx: Transaction) -> list[Finding]:
        """Adopted earlier (it exists NOT VALID): the rows that still break it."""
        adopted = bind(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = :c AND conrelid = :t::regclass"
            " AND NOT convalidated)",
            c=self.constraint,
            t=f"public.{self.table}",
        )
        if not tx.run(adopted)[0][0]:
            return []
        return [Finding(self, row_id, self.detail(value)) for row_id, value in tx.run(self.offending_sql())]

    def detail(self, value: str) -> str:
        return f"{self.column} {value!r}"

    def adopt(self, tx: Transaction) -> None:
        tx.run(f"ALTER TABLE public.{self.table} ADD CONSTRAINT {self.constraint} CHECK ({self.condition}) NOT VALID")

    def how_adopted(self) -> str:
        return (
            f"{self.constraint} is added NOT VALID: these rows keep their {self.column}; every new or changed row "
            f"must satisfy it (VALIDATE CONSTRAINT once none is left)"
        )


@dataclass(frozen=True)
class UniqueRule:
    """A unique index a migration creates over rows the web app already has.

    `key` and `where` are the migration's own (a test holds them together). Of each set of duplicates
    the earliest row (created_at, then id) is kept in the index; adopted, every later one is marked
    `legacy_duplicate_of = <the kept row's id>` and left out of it.
    """

    version: str
    table: str
    index: str
    key: str
    where: str
    text: str

    @property
    def name(self) -> str:
        return self.index

    def pending_sql(self) -> str:
        return bind("SELECT to_regclass(:i) IS NULL", i=f"public.{self.index}")

    def offending_sql(self) -> str:
        """(id, the kept row's id) of every row after the first of its key."""
        return (
            f"SELECT id::text, kept::text FROM ("
            f"SELECT id, created_at, first_value(id) OVER (PARTITION BY {self.key} ORDER BY created_at, id) AS kept"
            f" FROM public.{self.table} WHERE {self.where}) ranked WHERE id <> kept ORDER BY created_at, id"
        )

    def review(self, tx: Transaction) -> list[Finding]:
        """Adopted earlier: the rows marked as duplicates."""
        if not _has_column(tx, self.table, MARKER):
            return []
        marked = (
            f"SELECT id::text, {MARKER}::text FROM public.{self.table}"
            f" WHERE {MARKER} IS NOT NULL ORDER BY created_at, id"
        )
        return [Finding(self, row_id, self.detail(kept)) for row_id, kept in tx.run(marked)]

    def detail(self, kept: str) -> str:
        return f"same {self.key} as {kept} (kept)"

    def adopt(self, tx: Transaction) -> None:
        tx.run(f"ALTER TABLE public.{self.table} ADD COLUMN IF NOT EXISTS {MARKER} uuid")
        with _user_triggers_suspended(tx, self.table):  # e.g. an updated_at trigger must not restamp history
            tx.run(
                f"UPDATE public.{self.table} t SET {MARKER} = o.kept::uuid"
                f" FROM ({self.offending_sql()}) o(id, kept) WHERE t.id = o.id::uuid"
            )
        tx.run(
            f"CREATE UNIQUE INDEX {self.index} ON public.{self.table} ({self.key})"
            f" WHERE {self.where} AND {MARKER} IS NULL"
        )

    def how_adopted(self) -> str:
        return f"each row gets {MARKER} = the kept row's id and is left out of {self.index}; review them"


@dataclass(frozen=True)
class JournalNumberRule(UniqueRule):
    """sql/014's unique index on the journal's transaction numbers (`ltrim(hypay_id, '0')`), over rows the backend
    may already hold: one Hyp transaction journaled twice, its Id written with and without leading zeros (Hyp's
    callbacks were journaled as sent). Of each number the earliest row (first_seen, then hypay_id) is kept in the index;
    adopted, the later ones are left out of it (its predicate names them) and stay as they are for a human to settle
    (docs/operations.md, CallbackNotSettled step 3)."""

    version: str = "014"
    table: str = "hypay_transactions"
    index: str = "hypay_transactions_number_key"
    key: str = "(ltrim(hypay_id, '0'))"
    where: str = "true"
    text: str = "one journal row per Hyp transaction number, however its Id is written"

    def offending_sql(self) -> str:
        """(hypay_id, the kept row's hypay_id) of every row after the first of its number."""
        return (
            "SELECT hypay_id, kept FROM (SELECT hypay_id, first_seen, first_value(hypay_id) OVER"
            " (PARTITION BY ltrim(hypay_id, '0') ORDER BY first_seen, hypay_id) AS kept"
            " FROM public.hypay_transactions) ranked WHERE hypay_id <> kept ORDER BY first_seen, hypay_id"
        )

    def review(self, tx: Transaction) -> list[Finding]:
        """Adopted earlier (the index leaves rows out): the rows sharing a number with a kept one."""
        partial = bind(
            "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'public' AND indexname = :i"
            " AND indexdef LIKE '% WHERE %')",
            i=self.index,
        )
        if not tx.run(partial)[0][0]:
            return []
        return [Finding(self, row_id, self.detail(kept)) for row_id, kept in tx.run(self.offending_sql())]

    def detail(self, kept: str) -> str:
        return f"the same Hyp transaction number as {kept} (kept)"

    def adopt(self, tx: Transaction) -> None:
        later = [row_id for row_id, _ in tx.run(self.offending_sql())]
        left_out = ", ".join(bind(":h", h=hypay_id) for hypay_id in later)
        where = f"hypay_id NOT IN ({left_out})"
        tx.run(f"CREATE UNIQUE INDEX {self.index} ON public.{self.table} ({self.key}) WHERE {where}")

    def how_adopted(self) -> str:
        return f"the later rows of each number are left out of {self.index} as they are; settle them by hand"


Rule = CheckRule | UniqueRule

_STATUSES = "'pending', 'completed', 'failed', 'expired', 'needs_review'"
RULES: tuple[Rule, ...] = (
    CheckRule(
        "003",
        "payments",
        "payments_status_check",
        f"status IN ({_STATUSES})",
        "status",
        "status is one of " + _STATUSES.replace("'", ""),
    ),
    UniqueRule(
        "003",
        "payments",
        "payments_hypay_transaction_id_key",
        "hypay_transaction_id",
        "hypay_transaction_id IS NOT NULL",
        "one Hyp transaction pays for one payment",
    ),
    UniqueRule(
        "003",
        "credit_transactions",
        "credit_transactions_one_purchase_per_payment",
        "payment_id",
        "type = 'purchase' AND payment_id IS NOT NULL",
        "one purchase grant per payment",
    ),
    UniqueRule(
        "003",
        "invoices",
        "invoices_one_per_payment",
        "payment_id",
        "payment_id IS NOT NULL",
        "one invoice per payment",
    ),
    JournalNumberRule(),
)
# Nothing else in sql/ can refuse an existing row: 003's currency check is on a column it adds with a
# default, and the rest are new tables, new nullable columns and non-unique indexes (014's is unique: its rule).


@dataclass(frozen=True)
class Finding:
    """One existing row a rule refuses. Ids and the rule only: never personal data."""

    rule: Rule
    row_id: str
    detail: str


@dataclass(frozen=True)
class Preflight:
    pending: list[Migration]
    findings: list[Finding]

    def report(self) -> str:
        """The offending rows, by migration and rule, and the choices."""
        lines = ["pending: " + ", ".join(m.name for m in self.pending)]
        if not self.findings:
            return lines[0] + " (no existing row refused)"
        for migration in self.pending:
            own = [f for f in self.findings if f.rule.version == migration.version]
            if not own:
                continue
            lines.append(f"{migration.name} cannot accept {len(own)} existing rows:")
            for rule in dict.fromkeys(f.rule for f in own):
                lines.append(f"  {rule.name}: {rule.text}")
                lines += [f"    {f.rule.table} {f.row_id}  {f.detail}" for f in own if f.rule is rule]
        lines.append("choices:")
        lines.append("  - correct or remove these rows yourself, then run again; or")
        lines.append(
            f"  - adopt them, keeping every row as it is: {ADOPT_ENV}=1 make migrate"
            " (python -m ops.migrate --adopt-legacy):"
        )
        for rule in dict.fromkeys(f.rule for f in self.findings):
            lines.append(f"      {rule.name}: {rule.how_adopted()}")
        return "\n".join(lines)


class LegacyRowsFound(MigrationError):
    """Pending migrations would refuse existing rows; nothing was applied."""

    def __init__(self, preflight: Preflight) -> None:
        super().__init__(f"{len(preflight.findings)} existing rows break a pending migration; nothing was applied")
        self.preflight = preflight


@dataclass(frozen=True)
class Outcome:
    applied: list[str]
    adopted: list[Finding] = field(default_factory=list)


# -- the run --------------------------------------------------------------------------------------------


def check(db: Database, sql_dir: Path = SQL_DIR) -> Preflight:
    """The preflight alone: what is pending and which existing rows it would refuse. Changes nothing."""
    with db.transaction(read_committed=True) as tx:
        tx.run("SET TRANSACTION READ ONLY")
        return _preflight(tx, discover(sql_dir))


def review(db: Database) -> list[Finding]:
    """Rows adopted earlier and still to be reviewed: marked duplicates, rows breaking a NOT VALID check."""
    found: list[Finding] = []
    with db.transaction(read_committed=True) as tx:
        tx.run("SET TRANSACTION READ ONLY")
        for rule in RULES:
            if _exists(tx, rule.table):
                found += rule.review(tx)
    return found


def run(
    db: Database,
    sql_dir: Path = SQL_DIR,
    *,
    adopt_legacy: bool = False,
    backend_statements: Sequence[str] | None = None,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
    attempts: int = ATTEMPTS,
    say: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Preflight, then every pending migration in one transaction; see the module's docstring.

    Raises LegacyRowsFound (nothing applied) when existing rows break a pending migration and
    `adopt_legacy` is off, MigrationError (nothing applied) when anything fails, or when a table stayed busy
    through `attempts` runs (each lock waited for at most `lock_timeout_seconds`; `say` hears of each retry).
    `backend_statements`: what must still plan after an adoption (default: the Hyp journal's statements).
    """
    migrations = discover(sql_dir)
    for attempt in range(1, attempts + 1):
        try:
            with db.transaction(read_committed=True) as tx:
                return _run(tx, migrations, adopt_legacy, backend_statements, lock_timeout_seconds)
        except (QueryError, MigrationError) as exc:
            cause = exc if isinstance(exc, QueryError) else exc.__cause__
            busy = isinstance(cause, QueryError) and cause.sqlstate in GIVES_WAY
            if busy and attempt < attempts:
                pause = min(2.0**attempt, 30.0)
                if say is not None:
                    say(
                        f"a table is in use by another transaction (waited {lock_timeout_seconds:g} s for its lock);"
                        f" nothing applied; trying again in {pause:g} s ({attempt + 1} of {attempts})"
                    )
                sleep(pause)
                continue
            if busy:
                raise MigrationError(
                    f"a table stayed in use by other transactions through {attempts} attempts (each lock waited"
                    f" for at most {lock_timeout_seconds:g} s); nothing was applied, the schema is as it was. Look"
                    " for long or idle-in-transaction sessions (pg_stat_activity), or run in a quieter moment"
                ) from exc
            if isinstance(exc, MigrationError):
                raise
            # the lock, the preflight's reads, the commit: rolled back all the same
            raise MigrationError(
                f"{exc} (SQLSTATE {exc.sqlstate}); nothing was applied, the schema is as it was"
            ) from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def _run(
    tx: Transaction,
    migrations: list[Migration],
    adopt_legacy: bool,
    backend_statements: Sequence[str] | None,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
) -> Outcome:
    """The run inside its one transaction: lock, preflight, adoption if asked, every pending file, records."""
    # Another runner: waited for, however long (the transaction's own lock timeout, Database.transaction's, lifted).
    tx.run("SET LOCAL lock_timeout = 0")
    tx.run(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
    # From here every lock on a table waits at most this long: the web app's requests queue behind a waiting
    # ALTER TABLE, so the run gives way (rolled back, tried again) rather than hold them up.
    # 0: no limit, as in PostgreSQL (the run then waits for its locks however long, the web app behind it).
    wait_ms = 0 if lock_timeout_seconds <= 0 else max(1, round(lock_timeout_seconds * 1000))
    tx.run(f"SET LOCAL lock_timeout = '{wait_ms}ms'")
    tx.run(_LEDGER)
    preflight = _preflight(tx, migrations)
    if not preflight.pending:
        return Outcome([])
    if preflight.findings and not adopt_legacy:
        raise LegacyRowsFound(preflight)
    # Every lock the run will take on a table that exists, taken now, together (see `_take_locks`). An adoption's
    # tables too: writers wait from here to the commit, so the rows adopted are the rows checked.
    needed = locks_needed([m.sql for m in preflight.pending], _tables(tx))
    for table in dict.fromkeys(f.rule.table for f in preflight.findings):
        needed[table] = "ACCESS EXCLUSIVE"
    _take_locks(tx, needed, lock_timeout_seconds, wait_ms)
    if preflight.findings:
        preflight = _preflight(tx, migrations)
    applied = []
    for migration in preflight.pending:
        step = migration.name
        try:
            for rule in _adoption_order(f.rule for f in preflight.findings if f.rule.version == migration.version):
                step = f"adopting {rule.name} before {migration.name}"
                rule.adopt(tx)
            step = migration.name
            tx.run(migration.sql)
            tx.run(
                bind(
                    "INSERT INTO public.schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
                    v=migration.version,
                    n=migration.name,
                    c=migration.checksum,
                )
            )
        except QueryError as exc:
            raise MigrationError(
                f"{step} failed: {exc} (SQLSTATE {exc.sqlstate}); nothing was applied, the schema is as it was"
            ) from exc
        applied.append(migration.name)
    if preflight.findings or backend_statements is not None:  # only adoption departs from the tested schema
        _probe(tx, _journal_statements() if backend_statements is None else backend_statements)
    return Outcome(applied, preflight.findings)


# PostgreSQL's table lock modes, weakest first, each with the modes it conflicts with (the manual's "Conflicting Lock
# Modes" table).
LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
CONFLICTS = {
    "ACCESS SHARE": frozenset(LOCK_MODES[7:]),
    "ROW SHARE": frozenset(LOCK_MODES[6:]),
    "ROW EXCLUSIVE": frozenset(LOCK_MODES[4:]),
    "SHARE UPDATE EXCLUSIVE": frozenset(LOCK_MODES[3:]),
    "SHARE": frozenset({"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", *LOCK_MODES[5:]}),
    "SHARE ROW EXCLUSIVE": frozenset(LOCK_MODES[2:]),
    "EXCLUSIVE": frozenset(LOCK_MODES[1:]),
    "ACCESS EXCLUSIVE": frozenset(LOCK_MODES),
}


def covers(held: str, wanted: str) -> bool:
    """Whether holding `held` lets this transaction take `wanted` on the same table without waiting: every mode that
    conflicts with `wanted` conflicts with `held`, so no other transaction can hold one."""
    return CONFLICTS[wanted] <= CONFLICTS[held]


# A table (or index) as a file may write it: `payments`, `public.payments`, `"public"."payments"`, `public . payments`.
_NAME = r'(?:"?public"?\s*\.\s*)?"?([a-z_][a-z0-9_]*)"?'
_IF_EXISTS = r"(?:IF\s+EXISTS\s+)?"
# What a statement of a migration file locks, by the table it names (PostgreSQL's manual, "Table-Level Locks"): ALTER
# TABLE, TRUNCATE, DROP TRIGGER, CREATE / ALTER / DROP POLICY, and DROP / ALTER INDEX (on the index's table) take
# ACCESS EXCLUSIVE; CREATE TRIGGER and a foreign key's REFERENCES SHARE ROW EXCLUSIVE; CREATE INDEX (not CONCURRENTLY)
# SHARE; COMMENT ON TABLE / COLUMN SHARE UPDATE EXCLUSIVE; INSERT / UPDATE / DELETE / MERGE ROW EXCLUSIVE. A word these
# patterns catch that is not a table (`UPDATE ON` in a trigger's events) names nothing that exists, and is left out.
# tests/integration/test_migration_locks.py checks every file against the locks it really takes.
_TAKES = tuple(
    (re.compile(pattern, re.I), mode)
    for pattern, mode in (
        (r"\bALTER\s+TABLE\s+" + _IF_EXISTS + r"(?:ONLY\s+)?" + _NAME, "ACCESS EXCLUSIVE"),
        (r"\bTRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?" + _NAME, "ACCESS EXCLUSIVE"),
        (r"\bDROP\s+TRIGGER\s+" + _IF_EXISTS + r"\w+\s+ON\s+" + _NAME, "ACCESS EXCLUSIVE"),
        (r"\b(?:CREATE|ALTER|DROP)\s+POLICY\s+" + _IF_EXISTS + r'"?\w+"?\s+ON\s+' + _NAME, "ACCESS EXCLUSIVE"),
        (r"\b(?:DROP|ALTER)\s+INDEX\s+(?:CONCURRENTLY\s+)?" + _IF_EXISTS + _NAME, "ACCESS EXCLUSIVE"),
        (
            r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+\w+\s[^;]*?\bON\s+" + _NAME,
            "SHARE ROW EXCLUSIVE",
        ),
        (r"\bREFERENCES\s+" + _NAME, "SHARE ROW EXCLUSIVE"),
        (r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s[^;]*?\bON\s+(?:ONLY\s+)?" + _NAME, "SHARE"),
        (r"\bCOMMENT\s+ON\s+(?:TABLE|COLUMN)\s+" + _NAME, "SHARE UPDATE EXCLUSIVE"),
        (r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO)\s+(?:ONLY\s+)?" + _NAME, "ROW EXCLUSIVE"),
    )
)
_COMMENT = re.compile(r"--[^\n]*")
# A statement built at run time (`EXECUTE format('CREATE POLICY ... ON public.%I', t)` over a list of names) is not in
# the text: in a file that has one, every existing table named as a string (`'payments'`) is taken ACCESS EXCLUSIVE.
_DYNAMIC = re.compile(r"\bEXECUTE\b", re.I)
_NAMED = re.compile(r"'([a-z_][a-z0-9_]*)'")


def locks_needed(sqls: Iterable[str], existing: Mapping[str, str]) -> dict[str, str]:
    """The weakest mode per existing table that covers every lock the statements of `sqls` take on it. `existing`:
    each table's name and each index's, to the table it is (or is on): see `_tables`."""
    wanted: dict[str, set[str]] = {}
    for sql in sqls:
        text = _COMMENT.sub(" ", sql)
        takes = [*_TAKES, (_NAMED, "ACCESS EXCLUSIVE")] if _DYNAMIC.search(text) else _TAKES
        for pattern, mode in takes:
            for match in pattern.finditer(text):
                table = existing.get(match.group(1).lower())
                if table is not None:
                    wanted.setdefault(table, set()).add(mode)
    return {
        table: next(held for held in LOCK_MODES if all(covers(held, m) for m in modes))
        for table, modes in sorted(wanted.items())
    }


def _tables(tx: Transaction) -> dict[str, str]:
    """The tables of the schema by name, and their indexes' names, each to the table it is on."""
    return dict(tx.run(
        "SELECT c.relname, c.relname FROM pg_class c"
        " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
        " UNION ALL SELECT i.relname, t.relname FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
        " WHERE t.relnamespace = 'public'::regnamespace AND t.relkind IN ('r', 'p')"
    ))  # fmt: skip


def _take_locks(tx: Transaction, needed: dict[str, str], lock_timeout_seconds: float, wait_ms: int) -> None:
    """Every lock the run needs on a table that exists, before any file runs, so that the run never holds one table
    while waiting for another: the web app's transactions use several of them (a request that wrote
    credit_transactions, then reads payments), and each such wait could close a cycle with one of them.

    PostgreSQL breaks a cycle by aborting whichever waiter checks first: a waiter checks once, `deadlock_timeout`
    (1 s by default) after it began waiting. Every round of these locks waits at most half that in all, and a request
    can wait for a lock of the run only after the round took it: the round gives way (its locks released, to a
    savepoint) before the request checks, so the web app's request is never the one aborted. Rounds go on until
    `lock_timeout_seconds` have passed (0: no limit), then the run gives way as for any lock not granted."""
    if not needed:
        return
    [[deadlock_seconds]] = tx.run("SELECT extract(epoch FROM current_setting('deadlock_timeout')::interval)::float8")
    round_ms = max(1, int(float(deadlock_seconds) * 500))
    # One statement per table: lock_timeout bounds each table's wait, not a statement's, and the round's time left is
    # set again before each.
    statements = {table: f"LOCK TABLE public.{_identifier(table)} IN {mode} MODE" for table, mode in needed.items()}
    until = time.monotonic() + lock_timeout_seconds if lock_timeout_seconds > 0 else None
    tx.run("SAVEPOINT migrate_locks")  # each round that gives way rolls back to it (the savepoint stays for the next)
    while True:
        began = time.monotonic()
        locking = ""
        try:
            for locking, statement in statements.items():  # noqa: B007 - the table the except names
                left = round_ms - int((time.monotonic() - began) * 1000)
                tx.run(f"SET LOCAL lock_timeout = '{max(1, left)}ms'")
                tx.run(statement)
        except QueryError as exc:
            if exc.sqlstate not in (*GIVES_WAY, INSUFFICIENT_PRIVILEGE):
                raise
            tx.run("ROLLBACK TO SAVEPOINT migrate_locks")  # the round's locks released: the requests behind go on
            if exc.sqlstate == INSUFFICIENT_PRIVILEGE:
                # LOCK TABLE asks more than a file may need (a foreign key to a table the role may only REFERENCE):
                # that table is left to the file's own statement, as before this step.
                del statements[locking]
            elif until is not None and time.monotonic() >= until:
                raise
            continue
        tx.run("RELEASE SAVEPOINT migrate_locks")
        tx.run(f"SET LOCAL lock_timeout = '{wait_ms}ms'")
        return


def migrate(db: Database, sql_dir: Path = SQL_DIR, *, adopt_legacy: bool = False) -> list[str]:
    """Apply what is pending; return the names applied (empty when up to date). See `run`."""
    return run(db, sql_dir, adopt_legacy=adopt_legacy).applied


def _adoption_order(rules: Iterable[Rule]) -> list[Rule]:
    """Each rule once; duplicates marked (an UPDATE) before any NOT VALID check, which refuses a changed row."""
    return sorted(dict.fromkeys(rules), key=lambda rule: isinstance(rule, CheckRule))


def _preflight(tx: Transaction, migrations: list[Migration]) -> Preflight:
    recorded: dict[str, str] = {}
    if _exists(tx, "schema_migrations"):
        recorded = {v: c for v, c in tx.run("SELECT version, checksum FROM public.schema_migrations")}
    for migration in migrations:
        if migration.version in recorded and recorded[migration.version] != migration.checksum:
            raise MigrationError(f"{migration.name} changed after it was applied; add a new migration instead")
    pending = [m for m in migrations if m.version not in recorded]
    versions = {m.version for m in pending}
    findings = []
    for rule in RULES:
        if rule.version in versions and _exists(tx, rule.table) and tx.run(rule.pending_sql())[0][0]:
            findings += [Finding(rule, row_id, rule.detail(value)) for row_id, value in tx.run(rule.offending_sql())]
    return Preflight(pending, findings)


def _exists(tx: Transaction, table: str) -> bool:
    return bool(tx.run(bind("SELECT to_regclass(:t) IS NOT NULL", t=f"public.{table}"))[0][0])


def _has_column(tx: Transaction, table: str, column: str) -> bool:
    return bool(
        tx.run(
            bind(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = :t::regclass AND attname = :c"
                " AND NOT attisdropped)",
                t=f"public.{table}",
                c=column,
            )
        )[0][0]
    )


_ENABLE = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}


@contextmanager
def _user_triggers_suspended(tx: Transaction, table: str) -> Iterator[None]:
    """The table's own (non-internal) triggers off for a marker update, then back exactly as they were.

    On an error they are not touched again: the transaction rolls back, and the triggers' state with it.
    """
    triggers = tx.run(
        bind(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = :t::regclass"
            " AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname",
            t=f"public.{table}",
        )
    )
    for name, _ in triggers:
        tx.run(f"ALTER TABLE public.{table} DISABLE TRIGGER {_identifier(name)}")
    yield
    for name, state in triggers:
        tx.run(f"ALTER TABLE public.{table} {_ENABLE[state]} {_identifier(name)}")


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def _journal_statements() -> list[str]:
    """The backend's statements whose ON CONFLICT arbiters depend on the unique indexes adoption changes."""
    from payments.adapters import journal

    return list(journal._STATEMENTS.values())


def _probe(tx: Transaction, statements: Sequence[str]) -> None:
    """Each statement must still plan (EXPLAIN, never executed): e.g. an ON CONFLICT arbiter must be inferable."""
    for statement in statements:
        sql = bind(statement, **{name: None for name in _PLACEHOLDER.findall(statement)})
        try:
            tx.run("EXPLAIN " + sql)
        except QueryError as exc:
            raise MigrationError(
                f"the backend's statements would fail on the migrated schema: {exc}; nothing was applied. "
                f"After adopting duplicates, an ON CONFLICT must name the marker, e.g. "
                f"ON CONFLICT (payment_id) WHERE payment_id IS NOT NULL AND {MARKER} IS NULL"
            ) from exc


# -- the command ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    from ops.embedded import LOCAL_DATA, database_url

    parser = argparse.ArgumentParser(prog="python -m ops.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="the preflight only: list what is pending and refused")
    parser.add_argument(
        "--adopt-legacy",
        action="store_true",
        default=os.environ.get(ADOPT_ENV, "") not in ("", "0"),
        help=f"take refused rows forward (NOT VALID checks, marked duplicates); also {ADOPT_ENV}=1",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=LOCK_TIMEOUT_SECONDS,
        help=f"seconds a table lock may wait before the run gives way and retries (default {LOCK_TIMEOUT_SECONDS:g};"
        " 0: no limit)",
    )
    parser.add_argument(
        "--attempts", type=int, default=ATTEMPTS, help=f"runs tried while tables are busy (default {ATTEMPTS})"
    )
    parser.add_argument(
        "--query-timeout",
        type=float,
        default=QUERY_TIMEOUT_SECONDS,
        help=f"seconds the client waits for one statement (default {QUERY_TIMEOUT_SECONDS:g}: index builds take time)",
    )
    args = parser.parse_args(argv)
    local = not os.environ.get("DATABASE_URL")
    with database_url(Path(os.environ.get("LOCAL_DATA_DIR") or LOCAL_DATA)) as url:
        try:
            db = Database.from_settings(DatabaseSettings(DATABASE_URL=url, DB_QUERY_TIMEOUT=args.query_timeout))
        except ConfigurationError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        # Which database, first (never its password): a DATABASE_URL not exported, or misspelt, falls back to the
        # local `make run` database, and "up to date" must not pass for production's.
        print(f"database: {_target(url, local)}", file=sys.stderr)
        try:
            if args.check:
                return _print_check(db)
            outcome = run(
                db,
                adopt_legacy=args.adopt_legacy,
                lock_timeout_seconds=args.lock_timeout,
                attempts=max(1, args.attempts),
                say=lambda line: print(line, file=sys.stderr),
            )
        except LegacyRowsFound as exc:
            print(exc.preflight.report())
            print("nothing was applied")
            return EXIT_LEGACY_ROWS
        except MigrationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (DatabaseUnavailable, ConfigurationError) as exc:
            print(f"error: {exc.message}; nothing was applied, the schema is as it was", file=sys.stderr)
            return 1
        finally:
            db.close()
    if outcome.adopted:
        print(f"adopted {len(outcome.adopted)} existing rows (kept as they are; to review):")
        print(_list(outcome.adopted))
    print("applied: " + ", ".join(outcome.applied) if outcome.applied else "database is up to date")
    return 0


def _target(url: str, local: bool) -> str:
    """The database `url` names, as host (or socket folder), port and name; the local one said to be so. A URL whose
    password holds `/`, `?` or `#` unencoded is not read as its writer meant (its `@` then falls outside the user
    part, and the password's pieces into the host, port or name): not printed."""
    parts = urlsplit(url)
    if "@" in parts.path + parts.query + parts.fragment:
        return "(not printed: an '@' outside the URL's user part; percent-encode the password)"
    params = parse_database_url(url)
    # A Unix socket's path already ends in its port (`.s.PGSQL.5432`)
    where = (
        f"{params.unix_sock}/{params.database}"
        if params.unix_sock
        else f"{params.host}:{params.port}/{params.database}"
    )
    return f"{where} (DATABASE_URL is not set: the local make run database)" if local else where


def _print_check(db: Database) -> int:
    try:
        preflight = check(db)
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    adopted = review(db)
    if adopted:
        print(f"adopted earlier, to review ({len(adopted)} rows):")
        print(_list(adopted))
    if not preflight.pending:
        print("database is up to date")
        return 0
    print(preflight.report())
    return EXIT_LEGACY_ROWS if preflight.findings else 0


def _list(findings: list[Finding]) -> str:
    return "\n".join(f"  {f.rule.name}  {f.rule.table} {f.row_id}  {f.detail}" for f in findings)


if __name__ == "__main__":
    sys.exit(main())

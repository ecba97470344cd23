"""Shared fixtures: a real PostgreSQL server (embedded, or DATABASE_URL), throwaway databases."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ops.embedded import embedded_server
from ops.migrate import migrate
from payments import settings
from payments.adapters import db as db_module
from payments.adapters import hypay
from tests.support.leaks import fail_on_leaks, find_leaks, masked
from tests.support.pg import Server, counting_class, database, with_database

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def private_dir() -> Iterator[Path]:
    """A folder the embedded server's own system user can reach (pytest's tmp folders are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="payments-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    with private_dir() as path:
        yield path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """One server for the session: DATABASE_URL's (external) or a private embedded cluster."""
    external = os.environ.get("DATABASE_URL")
    if external:
        server = Server(external)
        yield server
        server.close()
        return
    with private_dir() as parent, embedded_server(parent / "data", keep=False) as url:
        server = Server(url)
        yield server
        server.close()


@pytest.fixture(scope="session")
def migrated_template(pg_server: Server) -> Iterator[str]:
    """A database with every migration applied, to copy per test (CREATE DATABASE ... TEMPLATE)."""
    name = pg_server.create()
    db = database(with_database(pg_server.url, name))
    migrate(db)
    db.close()
    yield name
    pg_server.drop(name)


@pytest.fixture
def empty_database_url(pg_server: Server) -> Iterator[str]:
    name = pg_server.create()
    yield with_database(pg_server.url, name)
    pg_server.drop(name)


@pytest.fixture
def database_url(pg_server: Server, migrated_template: str) -> Iterator[str]:
    """A fresh, fully migrated database of this test's own."""
    name = pg_server.create(template=migrated_template)
    yield with_database(pg_server.url, name)
    pg_server.drop(name)


@pytest.fixture
def counting():
    """A connection class that counts its round trips (class attribute `round_trips`)."""
    return counting_class()


@pytest.fixture
def db(database_url: str, counting) -> Iterator[db_module.Database]:
    database_ = database(database_url, counting)
    yield database_
    database_.close()


# A record's clock, process and thread ids and line number: numbers that could equal a short secret
# (the tests' CVV is four digits) by chance, and never carry one.
_RECORD_BOOKKEEPING = frozenset({"created", "msecs", "relativeCreated", "process", "thread", "lineno"})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failure's report (its traceback, an assertion's operands, the captured output and logs pytest prints with it)
    never repeats a secret or card number the failure was about: masked (`leaks.masked`)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    report.sections = [(title, masked(content)) for title, content in report.sections]
    if report.failed and report.longrepr is not None:
        report.longrepr = masked(str(report.longrepr))


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Runs every flow of the suite with logs captured at DEBUG, then searches them."""
    caplog.set_level(logging.DEBUG)
    yield
    for phase in ("setup", "call"):
        for record in caplog.get_records(phase):
            text = (
                record.getMessage()
                + " "
                + json.dumps(
                    {k: v for k, v in record.__dict__.items() if k not in _RECORD_BOOKKEEPING},
                    default=str,
                )
            )
            leaked = find_leaks(text)
            fail_on_leaks(leaked, f"a log record ({record.name})")


@pytest.fixture(autouse=True)
def _no_metrics_from_another_test() -> None:
    """Metrics added outside a function's handler (a test calling a service directly) wait in Powertools' shared
    metric set until some handler flushes them: cleared before each test, so none is counted in another's. (The
    module is not imported here: importing it would fix the metrics namespace before a test's environment.)"""
    observability = sys.modules.get("payments.observability")
    if observability is not None:
        observability.metrics.clear_metrics()


@pytest.fixture(autouse=True)
def _no_cached_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test builds its own default database from its own environment."""
    _reset_caches()
    yield
    _reset_caches()


def _reset_caches() -> None:
    db_module.reset_default_database()
    for cached in (
        settings.database_settings,
        settings.idempotency_settings,
        settings.api_settings,
        settings.callback_settings,
        settings.cleanup_settings,
        hypay.hypay_settings,
    ):
        cached.cache_clear()

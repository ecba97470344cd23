"""A cleanup asked over HTTP answers before API Gateway gives up (30 s after the request arrived, its 503), however
slow the database: an outside review found a run whose statements each took 9 s (under the 10 s query timeout)
answering after 36 s: the last batch started in time, but the review-queue figure and the audit row after it had the
whole query timeout each. The figure is now the hourly run's alone, and a statement sent near API Gateway's end is
sent with limits that fit before it (the invocation's end narrowed to API Gateway's)."""

from __future__ import annotations

import re
import time
import types
from typing import Any

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.template import load, load_module
from payments import deadline
from payments.adapters.db import Database, QueryError
from tests.integration.test_cleanup import ADMIN_TOKEN, CLEANUP
from tests.integration.test_cleanup import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_hypay_callback import buy
from tests.support.api import invoke
from tests.support.payments import Env

_STATEMENT_TIMEOUT = re.compile(r"SET LOCAL statement_timeout = (\d+)")
_SETTINGS = re.compile(r"SET LOCAL \w+ = [^;]+;?\s*")


@pytest.mark.parametrize(
    ("seconds", "stale", "cold_start"),
    [(9.0, False, 0.0), (11.0, False, 0.0), (9.0, True, 3.9), (11.0, True, 0.0)],
    ids=["9 s", "11 s", "9 s, a payment to expire, a cold start", "11 s, a payment to expire"],
)
def test_every_statement_slow_the_answer_still_comes_before_api_gateway_gives_up(
    admin: Env, monkeypatch: pytest.MonkeyPatch, seconds: float, stale: bool, cold_start: float
) -> None:
    """A payment to expire: that step's batch is two statements (its rows locked, then expired), and an outside review
    of the first form found one started just in time answering after 31 s (each statement in a transaction took the
    limits set at its BEGIN, and the run kept back one statement's time for the batch). Each of the two may take half a
    statement's time now, and near the end each takes the limits the time then left allows."""
    if stale:
        buy(admin)
        admin.rows("UPDATE payments SET created_at = now() - interval '3 hours'")
    # Given a database where every statement takes `seconds` (a clock the function and its deadline both read,
    # moved by each statement; one sent with a shorter statement_timeout is cancelled by it, as the server would)
    offset = [0.0]
    real_time, real_monotonic = time.time, time.monotonic
    module = load_module(load().functions[CLEANUP])
    monkeypatch.setattr(module, "time", types.SimpleNamespace(time=lambda: real_time() + offset[0]))
    monkeypatch.setattr(deadline, "time", types.SimpleNamespace(monotonic=lambda: real_monotonic() + offset[0]))
    real_execute = Database._execute
    sent: list[tuple[float, str]] = []
    in_transaction: list[float | None] = []  # inside a transaction: its statement_timeout (SET LOCAL lasts to its end)

    def slow(self: Database, conn: Any, sql: str, params: Any = None) -> Any:
        text = sql.lstrip()
        if text.startswith(("COMMIT", "ROLLBACK")):
            in_transaction.clear()
            return real_execute(self, conn, sql, params)
        limits = _STATEMENT_TIMEOUT.findall(sql)
        limit = int(limits[-1]) / 1000 if limits else None
        if text.startswith("BEGIN"):
            in_transaction[:] = [limit]
            return real_execute(self, conn, sql, params)
        if in_transaction and limit is not None:
            in_transaction[0] = limit
        statement = _SETTINGS.sub("", text).strip()
        if not statement:  # settings alone: no time
            return real_execute(self, conn, sql, params)
        sent.append((offset[0], statement))
        cut = limit if limit is not None else (in_transaction[0] if in_transaction else None)
        if cut is not None and cut < seconds:
            offset[0] += cut
            raise QueryError("canceling statement due to statement timeout", "57014")
        offset[0] += seconds
        return real_execute(self, conn, sql, params)

    monkeypatch.setattr(Database, "_execute", slow)
    monkeypatch.setattr(LocalLambdaContext, "get_remaining_time_in_millis", lambda self: 110_000)  # Lambda: 2 min

    # When the cleanup is asked for over HTTP (the request arrived `cold_start` seconds before the function runs)
    arrived = real_time()
    offset[0] = cold_start
    answer = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    answered_after = real_time() + offset[0] - arrived

    # Then the answer comes within API Gateway's 30 s: "not complete" (200, the rest is the next run's) when the audit
    # row fits, else "not yet" (503); and no statement started after API Gateway's end
    assert answered_after < 30, (answered_after, [(round(at, 1), sql[:60]) for at, sql in sent])
    assert answer.status in (200, 503), answer.body
    if answer.status == 200:
        assert answer.json["complete"] is False, answer.json
    assert all(at < 29 for at, _ in sent), [(round(at, 1), sql[:60]) for at, sql in sent]

"""What the cleanup reports must count what it did, or say its counts are lower bounds (an outside review):
- a flag statement that committed and whose answer was lost (the connection broke) was sent again, found nothing left
  to flag and counted 0 with counts_exact: the charge sent to review never raised its alarm (the next run finds it
  flagged already). The step's recount, after a statement sent again, counts it;
  A first form of that recount failing lost the batch's count, and it counted payments the cleanup never flagged;
- a paced purge cancelled midway (57014: pg_cancel_backend, an operator or a watchdog) lost the count of the batches it
  had committed, and the report said its counts were exact."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pg8000.native
import pytest
from pg8000.exceptions import InterfaceError

from ops.lambda_context import LocalLambdaContext
from ops.template import load, load_handler
from payments.adapters.db import Database, QueryError
from payments.services.cleanup import CleanupPolicy, CleanupReport, run_cleanup
from tests.integration.test_cleanup import CLEANUP, add_expired, expired_left, slow_deletes
from tests.integration.test_cleanup import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_cleanup import production as production  # noqa: F401 - the fixture
from tests.integration.test_cleanup_failed_midway import stale_charge
from tests.integration.test_hypay_callback import metric_totals
from tests.support.faults import answer_lost
from tests.support.payments import Env
from tests.support.pg import connect

STALE = "cccccccc-0000-4000-8000-0000000000ab"
FLAGGED = "cccccccc-0000-4000-8000-000000000003"  # pending 5 h, review_reason set: the flag step sends it to review


def _is_flag(sql: str) -> bool:
    return "SET status = 'needs_review'" in sql and "outcome never stored" in sql


def _is_recount(sql: str) -> bool:
    return "SELECT count(*) FROM public.payments" in sql and "status = 'needs_review'" in sql and "UPDATE" not in sql


def _faults(monkeypatch: pytest.MonkeyPatch, *, flag_unsent: int, recount_broken: int) -> list[str]:
    """The first `flag_unsent` flag statements break before reaching the server (a stale connection); the first
    `recount_broken` recounts break likewise."""
    real_run = pg8000.native.Connection.run
    seen: list[str] = []

    def run(conn: pg8000.native.Connection, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        if _is_flag(sql) and seen.count("flag") < flag_unsent:
            seen.append("flag")
            raise InterfaceError("network error")
        if _is_recount(sql) and seen.count("recount") < recount_broken:
            seen.append("recount")
            raise InterfaceError("network error")
        return real_run(conn, sql, stream=stream, types=types, **params)

    monkeypatch.setattr(pg8000.native.Connection, "run", run)
    return seen


EVENT = json.loads((Path(__file__).resolve().parents[2] / "events" / "cleanup_schedule.json").read_text())


def test_a_charge_flagged_whose_answer_was_lost_is_still_counted_for_its_alarm(
    admin: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a saved-card charge attempted 3 h ago whose outcome was never stored
    stale_charge(admin, STALE, "dddddddd-0000-4000-8000-0000000000ab")
    # And the hourly run's flag statement commits, then its answer is lost (the connection breaks: a NAT, a failover)
    capsys.readouterr()
    flag = lambda sql: "SET status = 'needs_review'" in sql and "charge attempted" in sql  # noqa: E731
    with answer_lost(admin.url, monkeypatch, flag) as fired:
        out = load_handler(load().functions[CLEANUP])(EVENT, LocalLambdaContext(function_name=CLEANUP))
    assert fired
    # Then the charge went to review (by the first sending) ...
    assert admin.rows("SELECT status FROM payments WHERE id = :p::uuid", p=STALE) == [["needs_review"]]
    # ... and the metric its alarm (Cleanup_payments_flagged_for_review >= 1) reads counts it; the run says a
    # statement was sent twice
    flagged = metric_totals(capsys.readouterr().out).get("Cleanup_payments_flagged_for_review")
    assert (flagged, out["counts_exact"]) == (1, False), out


def test_a_purge_cancelled_midway_is_counted_or_said_inexact(production: tuple[str, Database]) -> None:
    url, db = production
    before = add_expired(db, 20)
    slow_deletes(db, 0.02)
    cleaner = Database(db._params)
    admin = connect(url)

    def cancel() -> None:
        time.sleep(0.25)
        admin.run(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'DO $paced$%' AND pid <> pg_backend_pid()"
        )

    canceller = threading.Thread(target=cancel)
    canceller.start()
    report = CleanupReport()
    try:
        with pytest.raises(QueryError):
            run_cleanup(cleaner, policy=CleanupPolicy(batch_size=1, duty_cycle_percent=100), report=report)
    finally:
        canceller.join()
        admin.close()
        cleaner.close()
    purged = before - expired_left(db)
    assert purged > 0  # the cancelled statement's batches committed
    # The report the function logs ("cleanup failed midway") and counts as metrics: it must either count them, or say
    # its counts are lower bounds (counts_exact: False), as it does when a sending broke or conflicted midway
    assert 0 < report.purged_idempotency_records <= purged and report.counts_exact is False, (purged, report)


def test_a_recount_that_fails_loses_the_batch_the_resend_committed(
    production: tuple[str, Database],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, db = production
    # The flag statement's first sending never reaches the server (stale connection); the resend flags the charge and
    # answers 1; the recount that follows breaks twice (the failover that broke the first connection goes on)
    seen = _faults(monkeypatch, flag_unsent=1, recount_broken=2)
    report = CleanupReport()
    run_cleanup(db, report=report)  # the recount's failure is not the run's: the batch's own count stands
    monkeypatch.undo()
    assert seen == ["flag", "recount", "recount"]
    assert db.run(f"SELECT status FROM payments WHERE id = '{FLAGGED}'") == [["needs_review"]]
    # The report the function logs ("cleanup failed midway") and turns into the alarm's metric: the charge the resend
    # sent to review must be counted, or the counts said to be lower bounds. (Before the recount, run_step returned 1.)
    assert (report.payments_flagged_for_review, report.counts_exact) == (1, False), report


def test_a_resend_on_a_stale_connection_counts_a_payment_the_cleanup_never_flagged(
    production: tuple[str, Database],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, db = production
    # Nothing for the cleanup to flag this run ...
    db.run(f"UPDATE payments SET status = 'failed' WHERE id = '{FLAGGED}'")
    # ... but a callback has just sent a payment to review (an amount mismatch: Action.REVIEW sets review_reason)
    db.run(
        "INSERT INTO payments (id, user_id, amount, status, review_reason, updated_at) VALUES"
        " ('cccccccc-0000-4000-8000-0000000000f1', '22222222-2222-4222-8222-222222222222', 10, 'needs_review',"
        " 'amount mismatch: Hyp transaction 123 paid 1.00, expected 10.00 (payment was pending)', now())"
    )
    # The hourly run's first statement (the flag step) meets a connection that died while idle: sent again
    seen = _faults(monkeypatch, flag_unsent=1, recount_broken=0)
    report = run_cleanup(db)
    monkeypatch.undo()
    assert seen == ["flag"]
    # The cleanup sent no charge to review; the alarm metric (Cleanup_payments_flagged_for_review >= 1, "a saved-card
    # charge whose outcome was never stored") must not fire for a callback's amount mismatch
    assert report.payments_flagged_for_review == 0, report

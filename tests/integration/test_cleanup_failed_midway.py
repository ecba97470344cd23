"""A cleanup run that fails after it sent a charge to review (its purge lost the database, after the steps that change
payments committed) still counts what it committed: the alarm of a saved-card charge never settled reads that count,
and the next run does not flag the payment again (an outside review: the failed run wrote no metric at all, the next
one wrote 0, and the alarm never fired for that charge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.seed import DEMO_USER_ID
from ops.template import load, load_handler
from payments.errors import DatabaseUnavailable
from payments.services import cleanup as cleanup_service
from tests.integration.test_cleanup import ADMIN_TOKEN, CLEANUP
from tests.integration.test_cleanup import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_hypay_callback import metric_totals
from tests.support.api import invoke
from tests.support.payments import Env

STALE = "cccccccc-0000-4000-8000-0000000000aa"
EVENT = json.loads((Path(__file__).resolve().parents[2] / "events" / "cleanup_schedule.json").read_text())


def stale_charge(env: Env, payment_id: str, attempt: str) -> None:
    """A saved-card charge attempted 3 h ago (`attempt`, its attempt's id) whose outcome was never stored."""
    env.rows(
        "INSERT INTO payments (id, user_id, amount, status, created_at, charge_attempt_id, charge_attempted_at)"
        " VALUES (:p::uuid, :u::uuid, 10, 'pending', now() - interval '3 hours', :a::uuid, now() - interval '3 hours')",
        p=payment_id,
        u=DEMO_USER_ID,
        a=attempt,
    )


def test_a_charge_sent_to_review_is_counted_when_a_later_step_fails(
    admin: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a saved-card charge attempted 3 h ago whose outcome was never stored, and an expired record to purge
    stale_charge(admin, STALE, "dddddddd-0000-4000-8000-0000000000aa")
    admin.rows("INSERT INTO idempotency_keys (key, status, expiry_timestamp) VALUES ('fn#old', 'completed', 1)")

    # When the hourly run's purge (after the steps that change payments) loses the database
    def purge_fails(*args: object, **kwargs: object) -> object:
        raise DatabaseUnavailable("database connection lost")

    monkeypatch.setattr(cleanup_service, "run_paced", purge_fails)
    capsys.readouterr()
    with pytest.raises(DatabaseUnavailable):  # the run failed: Lambda's error, the cleanup's own alarm
        load_handler(load().functions[CLEANUP])(EVENT, LocalLambdaContext(function_name=CLEANUP))
    # Then the charge went to review, and the metric its alarm reads counts it
    assert admin.rows("SELECT status FROM payments WHERE id = :p::uuid", p=STALE) == [["needs_review"]]
    assert metric_totals(capsys.readouterr().out).get("Cleanup_payments_flagged_for_review") == 1
    # And the next run, which succeeds, counts it no second time
    monkeypatch.undo()
    load_handler(load().functions[CLEANUP])(EVENT, LocalLambdaContext(function_name=CLEANUP))
    assert metric_totals(capsys.readouterr().out).get("Cleanup_payments_flagged_for_review") == 0


def test_a_run_asked_over_http_that_fails_midway_is_in_the_audit_trail_with_what_it_did(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every admin action appends an audit row; a run asked over HTTP that sent a charge to review and then lost the
    database answered 503 with none (an outside review): the payment changed at an admin's request without a trace."""
    stale_charge(admin, STALE, "dddddddd-0000-4000-8000-0000000000ab")

    def purge_fails(*args: object, **kwargs: object) -> object:
        raise DatabaseUnavailable("database connection lost")

    monkeypatch.setattr(cleanup_service, "run_paced", purge_fails)
    answer = invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    # Then "not yet" (503: the run is not complete), the charge in review, and the audit row says both
    assert answer.status == 503, answer.body
    assert admin.rows("SELECT status FROM payments WHERE id = :p::uuid", p=STALE) == [["needs_review"]]
    [[after]] = admin.rows("SELECT after_state FROM admin_audit_log WHERE action = 'cleanup'")
    assert after["payments_flagged_for_review"] == 1 and after["complete"] is False, after
    assert after["error"] == "database_unavailable", after

"""The cleanup never expires a payment whose callback is being kept as not verified yet (our configuration broken,
Hyp unreachable): an outside review found the keep (journal row and text, one transaction) not locking the payment,
and the cleanup's expire statement checking "no kept callback" on a snapshot older than the keep's commit: a payment
Hyp charged was expired while its callback was kept. The keep now locks the payment first, and the expire step locks
its batch before it checks, in a statement of its own."""

from __future__ import annotations

from typing import Any

import pytest

from payments.adapters.cleanup_store import _UNVERIFIED_CALLBACK, Step
from payments.adapters.journal import Journal
from payments.services import cleanup as cleanup_service
from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.support.api import reset_function_state
from tests.support.payments import CALLBACK, Env
from tests.support.pg import database


def _paid_late_while_hyp_cannot_be_asked(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Any]:
    """A payment past the cleanup's age, paid on Hyp's page; our Hyp credentials broken: its callback is kept."""
    payment = buy(env)
    transaction = pay(env, payment)
    env.rows("UPDATE payments SET created_at = now() - interval '3 hours'")
    monkeypatch.delenv("HYPAY_PASSP")
    from payments.adapters import hypay

    hypay.hypay_settings.cache_clear()
    reset_function_state(CALLBACK)
    return payment, transaction


def test_the_cleanup_running_while_a_callback_is_kept_leaves_its_payment_pending(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment, transaction = _paid_late_while_hyp_cannot_be_asked(env, monkeypatch)
    real = Journal.record_unverified
    ran: list[Any] = []

    def keep_while_the_cleanup_runs(self: Journal, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)  # written, not committed yet
        other = database(env.url)
        try:  # the hourly run, on its own connection, right then
            ran.append(run_cleanup(other, policy=CleanupPolicy()))
        finally:
            other.close()

    monkeypatch.setattr(Journal, "record_unverified", keep_while_the_cleanup_runs)
    assert notify(transaction.redirect_query).status == 503
    assert ran and ran[0].expired_payments == 0, ran
    assert env.rows("SELECT decision, verified FROM hypay_transactions") == [["unverified", False]]
    assert env.status(payment["payment_id"]) == "pending"


def test_the_expire_step_checks_for_a_kept_callback_again_once_its_batch_is_locked(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep that committed after the expire step's first statement began but before it locked the payment: that
    statement's snapshot does not show it (played here by a first statement that does not look), the second does."""
    payment, transaction = _paid_late_while_hyp_cannot_be_asked(env, monkeypatch)
    assert notify(transaction.redirect_query).status == 503  # kept
    real_steps = cleanup_service.cleanup_steps

    def blind_first_statement(table: str) -> list[Step]:
        steps = real_steps(table)
        for i, step in enumerate(steps):
            if step.field == "expired_payments":
                assert step.lock is not None
                blind = step.lock.replace(f"AND NOT {_UNVERIFIED_CALLBACK}", "")
                assert blind != step.lock
                steps[i] = Step(step.field, step.sql, step.durable, step.recount, blind)
        return steps

    monkeypatch.setattr(cleanup_service, "cleanup_steps", blind_first_statement)
    db = database(env.url)
    try:
        report = run_cleanup(db, policy=CleanupPolicy())
    finally:
        db.close()
    assert report.expired_payments == 0, report
    assert env.status(payment["payment_id"]) == "pending"

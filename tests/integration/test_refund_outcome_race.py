"""An operator's finding never lands while the refund is asking Hyp. The outcome route's "may still be asking Hyp"
guard used the row's created_at, but a released row (Hyp never asked: 503, retry with the same key) taken up again by
its retry kept its old created_at: a not_refunded landed during the retry's call, Hyp refunded, the row said refused
(amount free, no credits taken, Hyp's refund not journaled) and the caller was told Hyp refused. It is timed from
when the attempt started (updated_at)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest

from payments.adapters.refunds_store import RefundsStore
from payments.errors import RequestInProgress
from payments.services.refund_outcome import RefundOutcome
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import use_mode
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env
from tests.support.pg import database


@pytest.mark.usefixtures("admin")
def test_not_refunded_is_refused_while_a_retaken_attempt_is_asking_hyp(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mode(monkeypatch, "hmac")
    monkeypatch.setenv("HYPAY_TIMEOUT", "8")  # as deployed-ish: Hyp may take seconds to answer
    from payments.settings import hypay_settings
    from tests.support.api import reset_function_state

    hypay_settings.cache_clear()
    reset_function_state("AdminFunction")
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    credits = env.credits()
    [[txn]] = env.rows("SELECT hypay_transaction_id FROM payments WHERE id = :p::uuid", p=pid)
    key = str(uuid.uuid4())
    # Ten minutes ago the refund with this key was released: Hyp never asked (503 "not yet", retry with the key)
    [[rid]] = env.rows(
        "INSERT INTO refunds (payment_id, original_hypay_id, method, amount, currency, status, message, reason,"
        " idempotency_key, admin, created_at, updated_at) VALUES (:p::uuid, :t, 'refund', 20.00, 'ILS', 'refused',"
        " 'not sent: Hypay not asked: credentials unavailable', 'partial', :k, 'alice', now() - interval '10 min',"
        " now() - interval '10 min') RETURNING id::text",
        p=pid,
        t=txn,
        k=f"refund:{pid}:{key}",
    )
    # Now the operator retries with the same key; Hyp takes 2 s to answer
    env.sim.faults.add("zikoyAPI", "latency", seconds=2.0)
    answers = []
    worker = threading.Thread(
        target=lambda: answers.append(refund(pid, {"amount": "20.00", "reason": "partial"}, key=key))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while "zikoyAPI" not in env.sim.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "zikoyAPI" in env.sim.calls
    # While Hyp is being asked, another operator (the queue's advice) settles it as not refunded
    outcome = RefundOutcome(RefundsStore(database(env.url)))
    try:
        settled = outcome(
            refund_id=uuid.UUID(rid),
            outcome="not_refunded",
            hypay_refund_id=None,
            reason="Hyp portal: nothing yet",
            admin="bob",
            idempotency_key=str(uuid.uuid4()),
        )
        said = (settled.status, settled.body["status"])
    except RequestInProgress:
        said = ("409", "in progress")
    worker.join(30)
    [answer] = answers
    [[status, hyp_refund_id]] = env.rows("SELECT status, hypay_refund_id FROM refunds WHERE id = :r::uuid", r=rid)
    assert len(env.sim.reversals) == 1, (said, status, answer.status, answer.body, env.sim.calls)
    # Hyp's answer must win: the refund is stored as succeeded, with its credits taken back
    assert (said, status, answer.status) == (("409", "in progress"), "succeeded", 201), (
        said,
        status,
        hyp_refund_id,
        answer.status,
        answer.body,
        credits - env.credits(),
    )


class _Ahead(dt.datetime):
    """This process's clock ten minutes ahead of the database's (a Lambda's clock is not the database's)."""

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _Ahead:  # type: ignore[override]
        return super().now(tz) + dt.timedelta(minutes=10)


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("found", ["refunded", "not_refunded"])
def test_a_finding_waits_for_hyp_whatever_the_functions_clock_says(
    env: Env, monkeypatch: pytest.MonkeyPatch, found: str
) -> None:
    """Whether an attempt may still be asking Hyp is timed on the database's clock, which wrote the row: a function
    whose clock runs ahead took a finding for one older than the window and stored it while Hyp was refunding (an
    outside review: Hyp's own refund transaction then had no row, the refund answered with the operator's Id)."""
    use_mode(monkeypatch, "hmac")
    monkeypatch.setenv("HYPAY_TIMEOUT", "8")
    from payments.settings import hypay_settings
    from tests.support.api import reset_function_state

    hypay_settings.cache_clear()
    reset_function_state("AdminFunction")
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    env.sim.faults.add("zikoyAPI", "latency", seconds=2.0)  # Hyp takes 2 s to answer the refund
    answers = []
    worker = threading.Thread(
        target=lambda: answers.append(refund(pid, {"amount": "20.00", "reason": "partial"}, key=str(uuid.uuid4())))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while "zikoyAPI" not in env.sim.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "zikoyAPI" in env.sim.calls
    [[rid]] = env.rows("SELECT id::text FROM refunds WHERE payment_id = :p::uuid", p=pid)
    # While Hyp is asked, an operator's finding, on a function whose clock runs ten minutes ahead
    monkeypatch.setattr(dt, "datetime", _Ahead)
    try:
        RefundOutcome(RefundsStore(database(env.url)))(
            refund_id=uuid.UUID(rid),
            outcome=found,  # type: ignore[arg-type]
            hypay_refund_id="99999999" if found == "refunded" else None,
            reason="Hyp portal: what it shows",
            admin="bob",
            idempotency_key=str(uuid.uuid4()),
        )
        said = "stored"
    except RequestInProgress:
        said = "in progress"
    monkeypatch.undo()
    worker.join(30)
    [answer] = answers
    [hyp_refund] = env.sim.reversals
    # Hyp's answer wins: the finding waited, the refund holds Hyp's own transaction, journaled
    assert said == "in progress"
    assert (answer.status, answer.json["hypay_refund_id"]) == (201, hyp_refund.id), answer.body
    assert env.rows("SELECT status, hypay_refund_id FROM refunds WHERE id = :r::uuid", r=rid) == [
        ["succeeded", hyp_refund.id]
    ]
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id = :h", h=hyp_refund.id) == [[1]]

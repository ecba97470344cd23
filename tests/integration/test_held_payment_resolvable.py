"""A genuine payment held because a refund of the same payment has no Id of its own yet must stay completable.

Settling holds an approved transaction of no more than such a refund for a human (it may be that refund's own
transaction). On a failed payment the hold used to leave the payment failed: a redelivery changed nothing, and the
operator's resolve refused a failed payment, so a customer who paid the exact price again could never get the
credits. A closed payment with a transaction held for review can now be completed with it."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_refund_reported_as_charge import paid_under_review_then_failed
from tests.integration.test_refunds import Admin
from tests.integration.test_refunds import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import ALICE, _reset, resolve
from tests.support.payments import Env


def test_a_failed_payment_whose_transaction_was_held_can_be_completed_with_it(
    env: Env,
    admin: Admin,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = env.credits()
    # Given a payment under review, then paid 49.90 on its page (T1, "paid while under review"), which the operator
    # fails and refunds; Hyp's answer to that refund is lost (its outcome unknown, being confirmed)
    payment, pid, t1 = paid_under_review_then_failed(env, monkeypatch)
    env.sim.faults.add("zikoyAPI", "lost")
    refund = admin.refund(pid, "r-1", hypay_id=t1.id, reason="failed payment: money back")
    assert refund.status == 202 and refund.body["status"] == "unknown", refund.body
    # When the customer pays the payment's page again: T2, 49.90, the exact price
    t2 = pay(env, payment)
    assert notify(t2.redirect_query).status == 200
    # Then T2 is held for a human, saying why; the payment stays failed, without credits
    [[decision, detail]] = env.rows("SELECT decision, detail FROM hypay_transactions WHERE hypay_id = :i", i=t2.id)
    assert decision == "review" and "no Id of its own yet" in detail, detail
    assert env.status(pid) == "failed"
    assert env.credits() == before
    # And the operator, having found T2 a payment and not the refund, completes the payment with it: the credits
    completed = resolve(pid, {"action": "complete", "reason": "T2 is a real payment", "hypay_id": t2.id}, key="c-1")
    assert completed.status == 200, completed.body
    assert env.credits() == before + 100


def test_a_completed_payment_stays_completed_while_a_transaction_of_it_is_held(
    env: Env,
    admin: Admin,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_mode(monkeypatch, "hmac")
    # Given a completed payment, refunded in part, Hyp's answer to that refund lost
    payment = buy(env)
    pid = payment["payment_id"]
    t1 = pay(env, payment)
    assert notify(t1.redirect_query).status == 200
    credits = env.credits()
    env.sim.faults.add("zikoyAPI", "lost")
    assert admin.refund(pid, "r-1", hypay_id=t1.id, amount="49.90", reason="money back").status == 202
    # When Hyp reports an approved transaction for the payment's Order, of no more than that refund
    t2 = pay(env, payment)
    assert notify(t2.redirect_query).status == 200
    # Then it is held for review and the payment stays completed, its credits as they were
    assert env.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :i", i=t2.id) == [["review"]]
    assert env.status(pid) == "completed" and env.credits() == credits


def test_a_payment_an_operator_failed_after_a_late_mismatch_stays_failed(
    env: Env,
    admin: Admin,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the hold above reopens a closed payment: a late payment of the wrong amount sent the payment to review
    itself, and an operator's `fail` after it is final."""
    monkeypatch.setenv("ADMIN_API_TOKEN", json.dumps({"tokens": {"alice": ALICE}}))
    _reset()
    use_mode(monkeypatch, "hmac")
    before = env.credits()
    # Given an expired payment that Hyp then reports paid 1.00 instead of 49.90 (to review, previous status expired)
    pid = buy(env, key="late-mismatch")["payment_id"]
    env.rows("UPDATE payments SET status = 'expired' WHERE id = :p::uuid", p=pid)
    claim = [(k, "55500077" if k == "Id" else v) for k, v in unpaid_claim(pid, amount="1.00")]
    assert notify(forge(claim)).status == 200
    assert env.status(pid) == "needs_review"
    # And an operator who fails it on purpose (the 1.00 is to be refunded, no credits)
    assert resolve(pid, {"action": "fail", "reason": "wrong amount: refund it"}, key="f-1").status == 200
    # When someone completes it afterwards
    again = resolve(pid, {"action": "complete", "reason": "changed my mind"}, key="f-2")
    # Then 409, as for any failed payment, and no credits
    assert again.status == 409 and "is failed" in again.json["detail"], again.body
    assert env.credits() == before

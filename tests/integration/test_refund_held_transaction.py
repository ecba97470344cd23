"""What an operator meets around a transaction held because a refund of its payment had no Id of its own yet (its
answer lost), and around a payment no transaction paid (found by an outside review of the operator's side):

- the refund API refused nothing there: asked to refund the held transaction, it asked Hyp to reverse what may be the
  refund's own transaction (undoing the customer's refund); it now refuses while that refund is unconfirmed, and for
  good once the transaction is known to be a refund's own;
- once the refund is confirmed (docs/operations.md, RefundOutcomeUnknown), the held transaction stayed in the review
  queue for good: a refund's own transaction leaves it;
- a refund without `hypay_id` of a payment in review (Hyp charged another amount) answered "never paid through Hyp":
  it refunds the one transaction held for it (several: 409 naming them)."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_refund_outcome import settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.support.payments import Env


def _queue_of(payment_id: str) -> list[str]:
    return sorted(i["id"] for i in every_item() if (i.get("payment") or {}).get("id") == payment_id)


def _refund_reported_before_its_answer(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A completed payment (49.90) refunded 20.00 (zikoyAPI), Hyp's answer lost, and the refund's own transaction R
    reported for the payment's Order by a verified notify: held for review. (payment id, R)"""
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    env.sim.faults.add("zikoyAPI", "lost")
    answer = refund(pid, {"amount": "20.00", "reason": "partial"}, key=str(uuid.uuid4()))
    assert answer.status == 202 and answer.json["status"] == "unknown", answer.json
    [reversal] = env.sim.reversals
    claim = [(k, reversal.id if k == "Id" else v) for k, v in unpaid_claim(pid, amount="20.00")]
    assert notify(forge(claim)).status == 200
    [[decision]] = env.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :h", h=reversal.id)
    assert decision == "review"
    return pid, reversal.id


@pytest.mark.usefixtures("admin")
def test_a_transaction_held_as_a_possible_refund_is_not_sent_to_hyp_to_be_refunded(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, held = _refund_reported_before_its_answer(env, monkeypatch)
    [item] = [i for i in every_item() if i["id"] == f"j:{held}"]
    assert item["next_step"].startswith("compare with Hyp's refunds"), item  # not "read the detail"
    asked = env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans")
    # When an operator refunds it while the refund's outcome is unconfirmed
    answer = refund(pid, {"hypay_id": held, "reason": "in the queue"}, key=str(uuid.uuid4()))
    # Then 409 saying to settle that refund first; Hyp is not asked
    assert answer.status == 409 and "settle that refund first" in answer.json["detail"], answer.json
    assert env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans") == asked
    # When the operator settles the refund as Hyp's refunds show (R is its transaction)
    [[refund_id]] = env.rows("SELECT id::text FROM refunds WHERE payment_id = :p::uuid", p=pid)
    settled = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": held, "reason": "Hyp: refund R"})
    assert settled.status == 200, settled.json
    # Then R leaves the review queue, and a refund of it is refused for good: money that went back
    assert f"j:{held}" not in _queue_of(pid)
    again = refund(pid, {"hypay_id": held, "reason": "in the queue"}, key=str(uuid.uuid4()))
    assert again.status == 409 and "own: money that went back" in again.json["detail"], again.json
    assert env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans") == asked


@pytest.mark.usefixtures("admin")
def test_a_refund_without_hypay_id_of_a_payment_in_review_refunds_the_transaction_held_for_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a payment Hyp charged 1.00 for instead of 49.90: in review, no transaction completed it
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key="mismatch")
    pid = payment["payment_id"]
    real = pay(env, payment)
    claim = [(k, real.id if k == "Id" else v) for k, v in unpaid_claim(pid, amount="1.00")]
    assert notify(forge(claim)).status == 200
    assert env.status(pid) == "needs_review"
    # When the operator refunds it without naming the transaction (docs: the payment's transaction)
    answer = refund(pid, {"reason": "mismatch: money back"}, key=str(uuid.uuid4()))
    # Then the one transaction held for it is refunded (it was "never paid through Hyp")
    assert answer.status == 201, answer.json
    assert answer.json["hypay_transaction_id"] == real.id and answer.json["credits_taken"] == 0, answer.json


@pytest.mark.usefixtures("admin")
def test_the_queue_says_refund_for_a_transaction_of_a_payment_an_operator_failed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a payment Hyp charged 1.00 for instead of 49.90, which an operator failed (no credits)
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key="failed-mismatch")
    pid = payment["payment_id"]
    claim = [(k, "55500099" if k == "Id" else v) for k, v in unpaid_claim(pid, amount="1.00")]
    assert notify(forge(claim)).status == 200
    assert resolve(pid, {"action": "fail", "reason": "refund the 1.00"}, key="f-1").status == 200
    # Then its transaction's next step is the refund (resolving it again is a 409), not "resolve complete / fail"
    [item] = [i for i in every_item() if i["id"] == "j:55500099"]
    assert item["next_step"].startswith("refund this transaction (the payment is failed"), item

"""Money Hyp took for a saved-card charge whose answer gave the amount unreadably can be refunded: the operator names
the amount (as Hyp's transactions show it), Hyp caps it. The journal keeps the amount unknown, so the refund API used
to refuse it ("not an approved payment") while the review queue asked for it."""

from __future__ import annotations

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_money_edges import _answers_rewritten, _field
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.support.payments import CVV, PRO, Env, post


@pytest.mark.parametrize("action", ["complete", "fail"])
def test_a_charge_whose_amount_hyp_gave_unreadably_is_refunded_for_the_amount_named(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    env = admin
    # Given a saved-card charge Hyp approved with an answer whose Amount we could not read
    charged = _answers_rewritten(env, monkeypatch, _field("Amount", "199%2C00"))
    payment = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="odd").json["payment_id"]
    # And an operator resolved it (completed it after looking at Hyp, or failed it: "refund the money")
    assert resolve(payment, {"action": action, "reason": "Hyp shows the charge"}, key="r-1").status == 200
    credits = env.credits()
    hypay_id = charged[0]
    # When the refund names no amount, it is refused saying what is missing, and Hyp is not asked
    unnamed = refund(payment, {"hypay_id": hypay_id, "reason": "customer asked"}, "refund-0")
    assert unnamed.status == 422 and "name the amount" in unnamed.json["detail"], unnamed.body
    assert env.sim.calls.count("zikoyAPI") == 0
    # When it names the amount Hyp's transactions show, Hyp refunds it
    [[price]] = env.rows("SELECT amount::text FROM payments WHERE id = :p::uuid", p=payment)
    answer = refund(
        payment, {"hypay_id": hypay_id, "amount": price, "currency": "ILS", "reason": "customer asked"}, "refund-1"
    )
    assert answer.status == 201, answer.body
    assert env.sim.calls.count("zikoyAPI") == 1 and answer.json["remaining"] is None  # unknown: Hyp caps it
    # And the credits granted for it (completed) go back, measured against the payment's price
    assert env.credits() == (credits - 500 if action == "complete" else credits), answer.body

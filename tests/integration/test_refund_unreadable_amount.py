"""Money Hyp took for a saved-card charge whose answer gave the amount unreadably can be refunded: the operator names
what Hyp's transactions show it paid (`original_amount`), which the journal keeps from then on, and it is refunded as
any transaction (caps, what remains, the review queue, credits). The refund API used to refuse it ("not an approved
payment") while the review queue asked for it."""

from __future__ import annotations

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_money_edges import _answers_rewritten, _field
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.support.payments import CVV, PRO, Env, post


def _charged_unreadably(env: Env, monkeypatch: pytest.MonkeyPatch, action: str) -> tuple[str, str]:
    """A saved-card charge Hyp approved (199.00) with an answer whose Amount we could not read, resolved by an
    operator (completed after looking at Hyp, or failed: "refund the money"): (payment id, Hyp Id)."""
    charged = _answers_rewritten(env, monkeypatch, _field("Amount", "199%2C00"))
    payment = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="odd").json["payment_id"]
    assert resolve(payment, {"action": action, "reason": "Hyp shows the charge"}, key="r-1").status == 200
    return payment, charged[0]


@pytest.mark.parametrize("action", ["complete", "fail"])
def test_a_charge_whose_amount_hyp_gave_unreadably_is_refunded_once_its_amount_is_named(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    env = admin
    payment, hypay_id = _charged_unreadably(env, monkeypatch, action)
    credits = env.credits()
    # When the refund does not say what the transaction paid, it is refused saying so, and Hyp is not asked
    unnamed = refund(payment, {"hypay_id": hypay_id, "amount": "199.00", "reason": "customer asked"}, "refund-0")
    assert unnamed.status == 422 and "original_amount" in unnamed.json["detail"], unnamed.body
    assert env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans") == 0
    # When it names what Hyp's transactions show, the whole is refunded, and the journal keeps the amount
    answer = refund(
        payment, {"hypay_id": hypay_id, "original_amount": "199.00", "reason": "customer asked"}, "refund-1"
    )
    assert answer.status == 201, answer.body
    assert answer.json["refunded"] == "199.00" and answer.json["remaining"] == "0.00"
    assert env.rows("SELECT amount::text FROM hypay_transactions WHERE hypay_id = :h", h=hypay_id) == [["199.00"]]
    # And the credits granted for it (completed) go back; none when it was failed
    assert env.credits() == (credits - 500 if action == "complete" else credits), answer.body
    # And it has left the review queue: nothing remains
    assert f"j:{hypay_id}" not in [item["id"] for item in every_item()]


def test_a_partial_refund_of_it_keeps_the_rest_in_the_review_queue_and_caps_what_follows(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = admin
    payment, hypay_id = _charged_unreadably(env, monkeypatch, "fail")
    first = refund(
        payment,
        {"hypay_id": hypay_id, "original_amount": "199.00", "amount": "1.00", "reason": "part"},
        "refund-1",
    )
    assert first.status == 201 and first.json["remaining"] == "198.00", first.body
    assert f"j:{hypay_id}" in [item["id"] for item in every_item()], "the rest left the review queue"
    # A second refund is capped by what remains (no original_amount needed now), and a wrong one is refused
    wrong = refund(payment, {"hypay_id": hypay_id, "original_amount": "99.00", "reason": "x"}, "refund-2")
    assert wrong.status == 422, wrong.body
    too_much = refund(payment, {"hypay_id": hypay_id, "amount": "199.00", "reason": "x"}, "refund-3")
    assert too_much.status == 422 and too_much.json["remaining"] == "198.00", too_much.body
    rest = refund(payment, {"hypay_id": hypay_id, "reason": "the rest"}, "refund-4")
    assert rest.status == 201 and rest.json["remaining"] == "0.00", rest.body
    assert f"j:{hypay_id}" not in [item["id"] for item in every_item()]

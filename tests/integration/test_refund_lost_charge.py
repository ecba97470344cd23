"""A saved-card charge Hyp made whose answer was lost can be refunded without granting its credits first (an outside
review of the operator's side: the refund API refused its Id, "not a transaction of this payment", before and after
failing the payment, so the only way was to complete it, granting the credits, and refund it, racing the customer
spending them; once failed, the money was in no queue at all). The operator names the Id and the amount Hyp's
transactions show for the payment's Order, as for any amount Hyp's answer did not give."""

from __future__ import annotations

import uuid

import pytest

from ops.hypay_simulator import APPROVING_CARD
from ops.seed import DEMO_USER_ID
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_hypay_callback import browser
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.support.payments import CVV, PRO, STARTER, Env, post


def _lost_charge(env: Env, key: str, user: str = DEMO_USER_ID) -> tuple[str, str]:
    """A saved-card charge of the PRO pack (199.00) Hyp made, its answer lost: (payment id, Hyp Id)."""
    env.sim.faults.add("soft", "lost")
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key=key, user=user)
    assert answer.status == 202, answer.body
    pid = answer.json["payment_id"]
    [charge] = [t for t in env.sim.transactions.values() if t.order == pid]
    assert env.status(pid) == "needs_review"
    return pid, charge.id


def _left_in_queue(pid: str, hypay_id: str) -> list[str]:
    return [
        i["id"] for i in every_item() if (i.get("payment") or {}).get("id") == pid or hypay_id in i.get("hypay_ids", [])
    ]


@pytest.mark.parametrize("fail_first", [False, True])
def test_a_lost_saved_card_charge_is_refunded_without_its_credits(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    fail_first: bool,
) -> None:
    env = admin
    pid, hypay_id = _lost_charge(env, key=f"lost-{fail_first}")
    before = env.credits()
    if fail_first:
        assert resolve(pid, {"action": "fail", "reason": "customer wants the money back"}, key="f-1").status == 200
    # Naming only the Id: what did it pay? 422 saying to name it, and Hyp is not asked
    unnamed = refund(pid, {"hypay_id": hypay_id, "reason": "money back"}, key=str(uuid.uuid4()))
    assert unnamed.status == 422 and "original_amount" in unnamed.json["detail"], unnamed.json
    assert env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans") == 0
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id = :h", h=hypay_id) == [[0]]
    # Naming what Hyp's transactions show: refunded (zikoyAPI, which Hyp caps), no credits taken (none were granted)
    answer = refund(
        pid, {"hypay_id": hypay_id, "original_amount": "199.00", "reason": "money back"}, key=str(uuid.uuid4())
    )
    assert answer.status == 201 and answer.json["method"] == "refund", answer.json
    assert answer.json["credits_taken"] == 0 and answer.json["remaining"] == "0.00", answer.json
    assert env.credits() == before
    assert env.sim.refunded.get(hypay_id) == 19900
    # The journal holds it now, refunded in full, named by the operator
    assert env.rows(
        "SELECT decision, source, verified, amount::text, amount_named_by FROM hypay_transactions WHERE hypay_id = :h",
        h=hypay_id,
    ) == [["review", "token_charge", False, "199.00", "alice"]]  # no answer of Hyp says it charged
    # And once the payment is failed (if not yet), nothing of it is left in the review queue
    if not fail_first:
        assert resolve(pid, {"action": "fail", "reason": "refunded"}, key="f-2").status == 200
    assert _left_in_queue(pid, hypay_id) == []


def test_an_id_the_journal_holds_for_another_payment_is_not_taken_for_a_lost_charge(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
) -> None:
    env = admin
    # Given a payment paid on its page, its callback settled (its Id in the journal), and a lost saved-card charge
    paid = post({"credit_pack_id": STARTER}, key="paid-on-the-page").json
    other = env.sim.pay(paid["payment_url"], APPROVING_CARD, cvv="125")
    assert browser(other.redirect_query).status == 302
    assert env.status(paid["payment_id"]) == "completed"
    pid, _ = _lost_charge(env, key="lost-other")
    # When the operator names the other payment's Id for the lost charge's refund: refused, Hyp not asked
    answer = refund(pid, {"hypay_id": other.id, "original_amount": "199.00", "reason": "x"}, key=str(uuid.uuid4()))
    assert answer.status == 409 and "not a transaction of this payment" in answer.json["detail"], answer.json
    assert env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans") == 0

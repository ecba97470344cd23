"""A mistyped Id named for the refund of a lost saved-card charge never stands for money taken. The named Id is
journaled when the refund's attempt is, before Hyp is asked, and stays when Hyp refuses the refund (it knows no such
transaction). It was journaled approved and verified: resolving the payment `complete` then took it for the
transaction that paid and granted the credits. It is journaled not verified now (no answer of Hyp's says it
charged): it completes nothing unless an operator names it again, and the right Id may still be named."""

from __future__ import annotations

import uuid

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_refund_lost_charge import _lost_charge
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.support.payments import Env


def test_a_mistyped_id_hyp_refuses_never_completes_the_payment_and_the_right_one_still_refunds(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
) -> None:
    env = admin
    pid, real = _lost_charge(env, key="lost-typo")
    typo = str(int(real) + 1000)  # an Id Hyp does not know
    before = env.credits()
    answer = refund(pid, {"hypay_id": typo, "original_amount": "199.00", "reason": "money back"}, str(uuid.uuid4()))
    assert answer.status == 502, answer.json  # Hyp refused: nothing moved
    assert env.rows("SELECT verified FROM hypay_transactions WHERE hypay_id = :h", h=typo) == [[False]]
    # Then 'complete' without an Id finds no transaction known to have paid (only an Id the operator names again
    # completes it, as any Id of a lost charge the journal never saw)
    assert resolve(pid, {"action": "complete", "reason": "Hyp shows the charge"}, key="c-1").status == 409
    assert env.rows("SELECT hypay_transaction_id FROM payments WHERE id = :p::uuid", p=pid) == [[None]]
    assert env.credits() == before
    # And the right Id is refunded (a typo whose refund Hyp refused may be corrected)
    right = refund(pid, {"hypay_id": real, "original_amount": "199.00", "reason": "money back"}, str(uuid.uuid4()))
    assert right.status == 201 and right.json["credits_taken"] == 0, right.json
    assert env.credits() == before

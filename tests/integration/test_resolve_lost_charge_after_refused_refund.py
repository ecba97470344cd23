"""A lost saved-card charge whose refund Hyp refused (the operator read a wrong amount: CCode 33) can still be
resolved `complete` with its real Id, as the ChargeOutcomeUnknown runbook says ("if Hyp charged, resolve it complete
with that hypay_id"). The refund's attempt journaled the Id not verified, and resolving refused unverified rows with
advice a saved-card charge can never follow (POST its raw callback)."""

from __future__ import annotations

import uuid

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_refund_lost_charge import _lost_charge
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.support.payments import Env


def test_a_real_lost_charge_whose_refund_hyp_refused_can_still_be_completed(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
) -> None:
    env = admin
    pid, real = _lost_charge(env, key="lost-final24")
    answer = refund(pid, {"hypay_id": real, "original_amount": "999.00", "reason": "money back"}, str(uuid.uuid4()))
    assert answer.status == 502, answer.json  # Hyp refused (more than it took): nothing moved
    # The customer keeps the purchase after all: the operator completes the payment with the charge Hyp shows
    done = resolve(pid, {"action": "complete", "reason": "Hyp shows the charge", "hypay_id": real}, key="c-final24")
    assert done.status == 200, (done.status, done.json)

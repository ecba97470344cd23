"""An operator's finding never names a payment (a second charge of the same Order) as a refund's own transaction: the
first version let any held row of the payment through, which storing the refund then rewrote as the refund's
('refunded'), and the second charge left the review queue for good (the customer's second payment never refunded,
nor refundable). Only a transaction Hyp reported while the refund had no Id (held so, or unverified) can be one."""

from __future__ import annotations

import pytest

from tests.integration.test_callback_attacks import unpaid_claim
from tests.integration.test_hypay_callback import forge, notify
from tests.integration.test_refund_outcome import _lost_refund, settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item
from tests.support.payments import Env


@pytest.mark.usefixtures("admin")
def test_a_second_charge_is_not_taken_as_a_refunds_own(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    pid, refund_id, _ = _lost_refund(env, monkeypatch)  # refund of 20.00, answer lost
    # Hyp charged the payment's Order a second time, 49.90 (more than any refund without an Id: a second charge)
    second = "77700042"
    assert notify(forge([(k, second if k == "Id" else v) for k, v in unpaid_claim(pid)])).status == 200
    assert env.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :h", h=second) == [["review"]]
    assert f"j:{second}" in [i["id"] for i in every_item()]
    # The operator settles the lost refund naming (a copy from the wrong row) the second charge's Id
    answer = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": second, "reason": "Hyp: refunded"})
    queued = [i["id"] for i in every_item()]
    journal = env.rows("SELECT decision, source FROM hypay_transactions WHERE hypay_id = :h", h=second)
    # Expected: refused (409) -- a 49.90 payment can't be a 20.00 refund's transaction -- and the charge still queued
    assert (answer.status, f"j:{second}" in queued) == (409, True), (answer.status, answer.body, journal, queued)

"""An operator's finding (`POST /admin/refunds/{id}/outcome`) names as a refund's own transaction only an Id that can
be one: not another payment's paying transaction, nor an unmatched paid one. Taken, the refunds row would claim it
while the journal kept it as it was, so
- that other payment's money could no longer be refunded ("refund ...'s own: money that went back"), and
- an unmatched paid transaction would silently leave the review queue (a paid transaction lost to the operator)."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import unpaid_claim
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_refund_outcome import _lost_refund, settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item
from tests.support.payments import Env


@pytest.mark.usefixtures("admin")
def test_another_payments_transaction_is_not_taken_as_a_refunds_own(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _, refund_id, _ = _lost_refund(env, monkeypatch)
    other = buy(env, key=str(uuid.uuid4()))
    paid = pay(env, other)
    assert notify(paid.redirect_query).status == 200
    # The operator settles the lost refund naming (a typo, a copy from the wrong row) the other payment's Id
    answer = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": paid.id, "reason": "Hyp: refunded"})
    # Expected: refused (it is a payment of another Order, journaled as granted), nothing changed
    later = refund(other["payment_id"], {"reason": "customer asked"}, key=str(uuid.uuid4()))
    assert (answer.status, later.status) == (409, 201), (answer.status, answer.body, later.status, later.body)


@pytest.mark.usefixtures("admin")
def test_an_unmatched_paid_transaction_stays_in_the_queue(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _, refund_id, _ = _lost_refund(env, monkeypatch)
    stranger = str(uuid.uuid4())
    notify(forge([(k, "77700009" if k == "Id" else v) for k, v in unpaid_claim(stranger)]))  # 404, journaled
    assert "j:77700009" in [i["id"] for i in every_item()]
    answer = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": "77700009", "reason": "Hyp: refunded"})
    queued = [i["id"] for i in every_item()]
    assert (answer.status, "j:77700009" in queued) == (409, True), (answer.status, answer.body, queued)

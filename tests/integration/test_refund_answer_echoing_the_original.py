"""A refund answer whose Id is the refunded transaction's own (an echo of TransId) names no refund: the original's
journal row is never rewritten as the refund's (storing a refund's answer takes over a row Hyp reported first, never
the original's)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("spelling", ["{id}", "0{id}", "00{id}"], ids=["as-sent", "one-zero-more", "two-zeros-more"])
def test_a_refund_answer_naming_the_original_never_turns_the_second_charge_into_a_refund(
    env: Env, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    # Given a payment paid twice: the second charge S waits in the review queue
    payment = buy(env)
    assert notify(pay(env, payment).redirect_query).status == 200
    second = pay(env, payment)
    assert notify(second.redirect_query).status == 200
    # And Hyp's refund answer names TransId as its Id: as sent, or the same number with leading zeros (a spelling
    # Hyp may use, sql/014)
    real = env.sim._zikoy

    def echo(params: dict[str, str]) -> str:
        return re.sub(r"(^|&)Id=[0-9]+", rf"\g<1>Id={spelling.format(id=params['TransId'])}", real(params))

    monkeypatch.setattr(env.sim, "_zikoy", echo)
    # When half of S is refunded
    pid = payment["payment_id"]
    half = refund(pid, {"hypay_id": second.id, "amount": "24.95", "reason": "half"}, str(uuid.uuid4()))
    # Then the answer names no refund of its own: the outcome is confirmed by a human (202), and S's journal row is
    # still S's (approved, in review, its own amount), so the rest can still be refunded
    assert half.status == 202, half.body
    [row] = env.rows("SELECT decision, source, amount::text FROM hypay_transactions WHERE hypay_id = :h", h=second.id)
    assert row == ["review", "notify", "49.90"], row
    [[stored]] = env.rows("SELECT hypay_refund_id FROM refunds WHERE payment_id = :p::uuid", p=pid)
    assert stored is None
    # And when Hyp answers as it should, the rest of S is refunded (never refused as money a refund sent back)
    monkeypatch.setattr(env.sim, "_zikoy", real)
    rest = refund(pid, {"hypay_id": second.id, "reason": "the rest"}, str(uuid.uuid4()))
    assert rest.status == 201, rest.body

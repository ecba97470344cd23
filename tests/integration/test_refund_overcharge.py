"""Refunding what Hyp took above the price keeps the credits the customer paid for (an outside review of the
operator's side: the queue's advice for an overcharge, "complete it, refund the excess", took a third of the credits
of a customer who then had paid exactly the pack's price)."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.support.payments import Env


def overcharged_and_completed(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Hyp (a callback signed with the terminal's KEY) said 74.85 was paid for a 49.90 pack of 100 credits: in review,
    then completed by an operator. (payment id, Hyp Id; the simulator itself took 49.90)"""
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key="over")
    pid = payment["payment_id"]
    real = pay(env, payment)
    claim = [(k, real.id if k == "Id" else v) for k, v in unpaid_claim(pid, amount="74.85")]
    assert notify(forge(claim)).status == 200
    assert env.status(pid) == "needs_review"
    assert resolve(pid, {"action": "complete", "reason": "keep it, refund the excess"}, key="c-1").status == 200
    return pid, real.id


@pytest.mark.usefixtures("admin")
def test_the_excess_of_an_overcharge_goes_back_without_credits_and_the_price_takes_them(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Hyp charged 74.85 for a 49.90 pack of 100 credits (an amount mismatch), which the operator completed
    before = env.credits()
    pid, _ = overcharged_and_completed(env, monkeypatch)
    assert env.credits() == before + 100
    # When the operator refunds the 24.95 too much
    excess = refund(pid, {"amount": "24.95", "reason": "excess"}, key=str(uuid.uuid4()))
    # Then no credits go: 49.90 kept buys the pack's 100
    assert excess.status == 201 and excess.json["credits_taken"] == 0, excess.json
    assert env.credits() == before + 100
    # And refunding half of the price after it takes half of the credits
    half = refund(pid, {"amount": "24.95", "reason": "half"}, key=str(uuid.uuid4()))
    assert half.status == 201 and half.json["credits_taken"] == 50, half.json
    assert half.json["remaining"] == "24.95" and env.credits() == before + 50, half.json

"""A refund of a transaction a delivery contradicted is never CancelTrans: the journal keeps the amount first
decided, and a refund of "the difference" Hyp charged above it (the ContradictingDelivery runbook) equals that amount
when Hyp took twice the price: taken for "the whole transaction", it was sent as CancelTrans the same day, and Hyp
cancelled the WHOLE charge while the refund's row said only the difference went back (an outside review). It is
zikoyAPI now, which refunds the amount asked (Hyp caps it)."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import forge, notify
from tests.integration.test_refunds import Admin, paid
from tests.support.payments import Env


def test_refunding_the_difference_of_a_contradicted_amount_refunds_only_the_difference(
    env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a payment of 49.90 granted on Hyp's answer (journal: 49.90)
    pid, txn = paid(env)
    # And Hyp's own record of the transaction says 99.80 (Hyp charged more), which a verified delivery then says
    env.sim.transactions[txn.id].amount = "99.80"
    use_mode(monkeypatch, "hmac")
    again = forge([(k, txn.id if k == "Id" else v) for k, v in unpaid_claim(pid, amount="99.80")])
    assert notify(again).status == 200
    assert env.rows("SELECT amount::text, contradictions FROM hypay_transactions WHERE hypay_id = :t", t=txn.id) == [
        ["49.90", 1]
    ]
    # When the operator follows the ContradictingDelivery runbook the same day: refund the difference, 49.90
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    with Admin(env, backend_login, later=dt.timedelta(0)) as admin:
        answer = admin.refund(pid, "difference-1", amount="49.90", reason="Hyp charged 99.80 for 49.90")
    assert answer.status == 201, answer.body
    # Then Hyp sent back the difference, 49.90, and the customer keeps the purchase they paid 49.90 for
    assert env.sim.refunded.get(txn.id) == 4990, (
        f"Hyp sent back {env.sim.refunded.get(txn.id)} agorot (cancelled: {txn.id in env.sim.cancelled});"
        f" our refund rows: {env.rows('SELECT method, amount::text, credits_taken FROM refunds')}"
    )

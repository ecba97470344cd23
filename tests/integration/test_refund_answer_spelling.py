"""sql/014's one journal row per transaction number meets a refund's stored answer: Hyp reports the refund's own
transaction through a callback written with a leading zero before the refund's answer (the same number, as Hyp's API
writes it) is stored: the answer is still stored, on the journal's row (an outside review found it refused after Hyp
had refunded)."""

from __future__ import annotations

import uuid

from payments.adapters.hypay import Reversal
from payments.adapters.journal import HypTransaction, Source
from payments.domain.money import Money
from payments.services.settle import settle
from tests.integration.test_refunds import Admin, paid
from tests.integration.test_refunds import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env
from tests.support.pg import database


def test_a_refund_answer_is_stored_when_hyp_reported_its_transaction_with_a_leading_zero(
    env: Env, admin: Admin
) -> None:
    pid, _ = paid(env)
    before = env.credits()
    gateway = admin.service.deps.gateway
    real_refund = gateway.refund
    other = database(env.url)

    def refund_then_hyp_notifies(transaction_id: str, *, amount: Money) -> Reversal:
        reversal = real_refund(transaction_id, amount=amount)
        settle(
            other,
            HypTransaction(
                hypay_id="0" + reversal.transaction_id,  # the same number, as Hyp's callback wrote it
                order_ref=pid,
                payment_id=uuid.UUID(pid),
                ccode=0,
                amount=amount,
                source=Source.NOTIFY,
                verified=True,
            ),
        )
        return reversal

    gateway.refund = refund_then_hyp_notifies
    try:
        answer = admin.refund(pid, "r-1")
    finally:
        gateway.refund = real_refund
        other.close()
    rows = env.rows("SELECT status, hypay_refund_id FROM refunds WHERE payment_id = :p::uuid", p=pid)
    # Hyp refunded (money moved): its answer is stored, the credits taken back once
    assert answer.status == 201, (answer.status, answer.body, rows)
    assert rows[0][0] == "succeeded", rows
    assert env.credits() == before - 100

"""sql/014's one journal row per transaction number meets a refund's stored answer: Hyp reports the refund's own
transaction through a callback written with a leading zero before the refund's answer (the same number, as Hyp's API
writes it) is stored: the answer is still stored, on the journal's row (an outside review found it refused after Hyp
had refunded)."""

from __future__ import annotations

from tests.integration.test_refund_reported_as_charge import _reported_before_stored
from tests.integration.test_refunds import Admin, paid
from tests.integration.test_refunds import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env


def test_a_refund_answer_is_stored_when_hyp_reported_its_transaction_with_a_leading_zero(
    env: Env, admin: Admin
) -> None:
    pid, _ = paid(env)
    before = env.credits()
    # Hyp's callback writes the refund's transaction number with a leading zero
    answer = _reported_before_stored(env, admin, pid, lambda: admin.refund(pid, "r-1"), spelled="0{}")
    rows = env.rows("SELECT status, hypay_refund_id FROM refunds WHERE payment_id = :p::uuid", p=pid)
    # Hyp refunded (money moved): its answer is stored, the credits taken back once
    assert answer.status == 201, (answer.status, answer.body, rows)
    assert rows[0][0] == "succeeded", rows
    assert env.credits() == before - 100

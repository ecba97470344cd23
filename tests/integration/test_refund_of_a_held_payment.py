"""Hyp's answer to the refund of a held transaction (HELD_WHILE_A_REFUND_HAS_NO_ID) that turned out to be a payment
is stored. What may not be refunded is refused when a refund is planned, before Hyp is asked, never after: the first
version refused it again while storing Hyp's answer (the refund being stored counted as a refund without an Id), so
Hyp refunded and the answer could never be stored, not even by an operator's finding (a 500)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import use_mode
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_refund_outcome import settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env


def _paid_twice_around_a_lost_refund(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """A payment paid two days ago, refunded in full (zikoyAPI) with Hyp's answer lost, paid a second time meanwhile
    (held, as a refund has no Id yet), then the lost refund settled by an operator as Hyp's portal shows (its own Id
    the reversal, not the second charge): (payment id, the second charge)."""
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    env.rows("UPDATE hypay_transactions SET first_seen = now() - interval '2 days' RETURNING 1")
    env.rows("UPDATE payments SET completed_at = now() - interval '2 days' RETURNING 1")
    env.sim.faults.add("zikoyAPI", "lost")
    lost = refund(pid, {"reason": "money back"}, key=str(uuid.uuid4()))
    assert lost.status == 202, lost.json
    [reversal] = env.sim.reversals
    second = pay(env, payment)
    assert notify(second.redirect_query).status == 200
    [[detail]] = env.rows("SELECT detail FROM hypay_transactions WHERE hypay_id = :h", h=second.id)
    assert "no Id of its own yet" in detail
    [[refund_id]] = env.rows("SELECT id::text FROM refunds WHERE payment_id = :p::uuid", p=pid)
    ok = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": reversal.id, "reason": "Hyp: refund R"})
    assert ok.status == 200, ok.json
    return pid, second


@pytest.mark.usefixtures("admin")
def test_refunding_a_held_payment_after_the_refund_is_confirmed_stores_hyps_answer(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, second = _paid_twice_around_a_lost_refund(env, monkeypatch)
    # The queue's advice: "a payment -> refund it once that refund is confirmed". Refund 10.00 of the second charge
    answer = refund(pid, {"hypay_id": second.id, "amount": "10.00", "reason": "paid twice"}, key=str(uuid.uuid4()))
    assert len(env.sim.reversals) == 2  # Hyp was asked, and refunded
    rows = env.rows("SELECT status FROM refunds WHERE original_hypay_id = :h", h=second.id)
    # Hyp's success must be stored
    assert (answer.status, rows) == (201, [["succeeded"]]), (answer.status, answer.json, rows)


@pytest.mark.usefixtures("admin")
def test_the_operator_can_settle_that_refund_afterwards(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    pid, second = _paid_twice_around_a_lost_refund(env, monkeypatch)
    refund(pid, {"hypay_id": second.id, "amount": "10.00", "reason": "paid twice"}, key=str(uuid.uuid4()))
    [second_refund] = env.sim.reversals[1:]
    [[rid2]] = env.rows("SELECT id::text FROM refunds WHERE original_hypay_id = :h", h=second.id)
    env.rows("UPDATE refunds SET created_at = now() - interval '10 minutes' WHERE id = :r::uuid RETURNING 1", r=rid2)
    # The runbook's way out: settle it as Hyp's portal shows
    answer = settle(rid2, {"outcome": "refunded", "hypay_refund_id": second_refund.id, "reason": "Hyp: refunded"})
    assert answer.status == 200, (answer.status, answer.body)

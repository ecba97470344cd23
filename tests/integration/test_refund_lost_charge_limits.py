"""Only a saved-card charge whose outcome is unknown has an Id named for its refund, and only one (a typo whose
refund Hyp refused may be corrected). The first version checked only that a charge was attempted, the status
(needs_review/failed) and that the Id was unknown: a charge Hyp declined (its answer received) qualified, as did a
payment whose lost charge was refunded already, so a payment could refund any Hyp Id not journaled yet - here
another payment's page transaction whose callback has not arrived - and journal it as its own."""

from __future__ import annotations

import uuid

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import CVV, PRO, Env, post


def test_a_declined_charge_is_no_lost_charge_to_refund(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
) -> None:
    env = admin
    # The saved_card fixture's first payment: paid on its page at Hyp, its callback not delivered yet
    [other] = [t for t in env.sim.transactions.values() if t.ccode == 0]
    env.sim.faults.add("soft", "ccode", ccode=6)
    declined = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="declined")
    assert declined.status == 402, declined.body
    [[pid]] = env.rows("SELECT id::text FROM payments WHERE idempotency_key LIKE '%declined%'")
    assert env.status(pid) == "failed"
    answer = refund(pid, {"hypay_id": other.id, "original_amount": other.amount, "reason": "x"}, str(uuid.uuid4()))
    assert answer.status == 409, (answer.status, answer.json, env.sim.refunded)


def test_a_lost_charge_names_one_transaction_not_any_number(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
) -> None:
    from tests.integration.test_refund_lost_charge import _lost_charge

    env = admin
    [other] = [t for t in env.sim.transactions.values() if t.ccode == 0]
    pid, real = _lost_charge(env, key="lost-many")
    first = refund(pid, {"hypay_id": real, "original_amount": "199.00", "reason": "x"}, str(uuid.uuid4()))
    assert first.status == 201, first.json
    # Its one charge refunded, the same payment then refunds a second unknown Id (another payment's, here)
    second = refund(pid, {"hypay_id": other.id, "original_amount": other.amount, "reason": "x"}, str(uuid.uuid4()))
    assert second.status == 409, (second.status, second.json, env.sim.refunded)

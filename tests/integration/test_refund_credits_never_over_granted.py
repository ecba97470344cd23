"""Credits taken back never add up to more than were granted. Each refund's share is cumulative over the money
refunded under one basis; an operator-completed overcharge's basis changed (what Hyp took, then the price with the
excess free). A payment whose excess was refunded under the old rule (33 of 100 credits taken) then lost all 100 more
when the rest was refunded under the new one: 133 taken of 100 granted. The sum is now capped at the grant."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_refund_overcharge import overcharged_and_completed
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env


@pytest.mark.usefixtures("admin")
def test_credits_taken_never_exceed_those_granted_across_the_basis_change(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, real_id = overcharged_and_completed(env, monkeypatch)
    # Before the deploy: the excess 24.95 refunded, taking 33 credits (its share of 74.85, the old basis)
    env.rows(
        "INSERT INTO refunds (payment_id, original_hypay_id, method, amount, currency, status, hypay_refund_id, ccode,"
        " credits_taken, reason, idempotency_key, admin) VALUES (:p::uuid, :t, 'refund', 24.95, 'ILS', 'succeeded',"
        " '99900001', 0, 33, 'excess', 'refund:legacy', 'alice') RETURNING 1",
        p=pid,
        t=real_id,
    )
    env.rows(
        "UPDATE profiles SET credits = credits - 33 WHERE id = (SELECT user_id FROM payments WHERE id = :p::uuid)"
        " RETURNING 1",
        p=pid,
    )
    # (the simulator took 49.90 for this forged 74.85 claim: it lets the 49.90 below through)
    # The customer holds other credits too (an earlier pack)
    env.rows(
        "UPDATE profiles SET credits = credits + 500 WHERE id = (SELECT user_id FROM payments WHERE id ="
        " :p::uuid) RETURNING 1",
        p=pid,
    )
    # After it: the rest (49.90) refunded
    rest = refund(pid, {"reason": "all of it back"}, key=str(uuid.uuid4()))
    assert rest.status == 201, rest.json
    [[taken]] = env.rows("SELECT sum(credits_taken) FROM refunds WHERE payment_id = :p::uuid", p=pid)
    assert taken <= 100, (taken, rest.json, env.rows("SELECT amount::text, credits_taken, status FROM refunds"))

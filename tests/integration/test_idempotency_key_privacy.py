"""The client's Idempotency-Key is anything it sends: a card number sent as one (a client's bug, or a test of ours)
must not be kept as sent, in payments.idempotency_key or rate_limits.last_request, nor logged by Powertools' event
handler at DEBUG (the route's arguments). Every test runs with logs captured at DEBUG and searched for card numbers
(tests/conftest.py), which fails this one without the redaction."""

from __future__ import annotations

import pytest

from ops.seed import DEMO_USER_ID
from tests.support.leaks import pg_standing
from tests.support.payments import STARTER, Env, post


@pytest.mark.parametrize("key", ["4580458045804580", "key-4580 4580 4580 4580", "k4580458045804580"])
def test_a_card_number_sent_as_the_key_is_kept_as_a_digest_and_works_as_a_key(env: Env, key: str) -> None:
    # When a payment is made with it, and the same request sent again
    first = post({"credit_pack_id": STARTER}, key=key)
    again = post({"credit_pack_id": STARTER}, key=key)
    # Then it is a key as any other: one payment, the same answer
    assert first.status == 201 and again.status == 201, (first.body, again.body)
    assert again.json["payment_id"] == first.json["payment_id"] and len(env.payments()) == 1
    # And no table keeps the digits as sent
    digits = "4580458045804580" if " " not in key else "4580 4580 4580 4580"
    found = env.rows(
        "SELECT idempotency_key FROM payments WHERE idempotency_key ~ :p"
        " UNION ALL SELECT last_request FROM rate_limits WHERE last_request ~ :p",
        p=pg_standing(digits) if key == digits else digits,
    )
    assert found == [], found
    [[stored]] = env.rows("SELECT idempotency_key FROM payments")
    assert stored.startswith(f"api:{DEMO_USER_ID}:sha256:"), stored


def test_a_key_without_long_digit_runs_is_kept_as_sent(env: Env) -> None:
    # (the keys of payments already made are found as they were)
    assert post({"credit_pack_id": STARTER}, key="0b7c2f1e-5d7a-4c41-9f7e-3a1d2c4b5e6f").status == 201
    assert env.rows("SELECT idempotency_key FROM payments") == [
        [f"api:{DEMO_USER_ID}:0b7c2f1e-5d7a-4c41-9f7e-3a1d2c4b5e6f"]
    ]

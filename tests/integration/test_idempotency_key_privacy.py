"""The client's Idempotency-Key is its opaque value, kept as sent (a payment is found by its key whatever its form,
before and after any deploy). Powertools' event handler logs, at DEBUG, the arguments it calls a route with: the key
and the path parameters as sent. Those lines are redacted. Every test runs with logs captured at DEBUG and searched
for card numbers (tests/conftest.py): without the redaction a card number sent as the key fails this test there."""

from __future__ import annotations

import logging

import pytest

from ops.seed import DEMO_USER_ID
from tests.support.payments import STARTER, Env, post

PAN = "4580458045804580"


@pytest.mark.parametrize("key", [PAN, f"order-{PAN}", "1718000000000"])
def test_a_key_of_any_form_is_a_key_and_no_debug_line_repeats_its_digits(
    env: Env, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # When a payment is made with it, and the same request sent again
    first = post({"credit_pack_id": STARTER}, key=key)
    again = post({"credit_pack_id": STARTER}, key=key)
    # Then it is a key as any other: one payment, the same answer, kept as sent
    assert first.status == 201 and again.status == 201, (first.body, again.body)
    assert again.json["payment_id"] == first.json["payment_id"] and len(env.payments()) == 1
    assert env.rows("SELECT idempotency_key FROM payments") == [[f"api:{DEMO_USER_ID}:{key}"]]
    # And Powertools' DEBUG lines of the route's arguments do not repeat its digits
    lines = [r.getMessage() for r in caplog.records if r.name == "aws_lambda_powertools.event_handler.api_gateway"]
    assert any("Calling API Route Handler" in line for line in lines)
    assert not [line for line in lines if "1718000000000" in line or PAN in line]
    assert logging.getLogger("aws_lambda_powertools.event_handler.api_gateway").filters

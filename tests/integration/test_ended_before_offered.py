"""Answers after a payment ended, or the database refused, that used to leave the client stuck (found by an outside
review injecting the hourly cleanup and permanent database refusals between the steps of every flow):

- a page purchase retried with its key after the cleanup expired its payment before any page was made was answered
  201 with no page to pay on (status expired): now 409, a new key may buy, as for a saved card never charged;
- a statement the database refuses for good (a constraint, a value out of range) was answered 500 with nothing
  logged or counted: now 503 "not yet" with Retry-After, logged and counted as an unhandled error (alarmed)."""

from __future__ import annotations

import pytest

from tests.integration.test_hypay_callback import metric_totals
from tests.integration.test_money_edges import hourly_cleanup_long_after
from tests.support.payments import STARTER, Env, post


def test_a_page_purchase_whose_payment_expired_before_its_page_was_made_is_409_for_its_key(env: Env) -> None:
    # Given a purchase whose page Hyp could not make (answered 503: retry with the same key) ...
    env.sim.faults.add("SIGN", "http500", times=2)  # the first attempt and its one retry
    first = post({"credit_pack_id": STARTER}, key="late-retry")
    assert first.status == 503, first.body
    [[payment_id, url]] = env.rows("SELECT id::text, payment_url FROM payments")
    assert url is None
    # ... whose pending payment the hourly cleanup expired before the retry came
    hourly_cleanup_long_after(env)
    assert env.status(payment_id) == "expired"
    # When the client retries with the same key
    again = post({"credit_pack_id": STARTER}, key="late-retry")
    # Then 409 saying to use a new key (not a 201 without a page), and Hyp was not asked for a page for it
    assert again.status == 409 and "new Idempotency-Key" in again.json["detail"], again.body
    # And a new key buys
    fresh = post({"credit_pack_id": STARTER}, key="new-key")
    assert fresh.status == 201 and fresh.json["payment_url"], fresh.body


def test_a_statement_the_database_refuses_for_good_is_503_not_yet_and_alarmed(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the database refuses every new payment for good (a check no row can pass)
    env.rows("ALTER TABLE payments ADD CONSTRAINT refuse_all CHECK (amount < 0) NOT VALID")
    try:
        answer = post({"credit_pack_id": STARTER}, key="refused")
    finally:
        env.rows("ALTER TABLE payments DROP CONSTRAINT refuse_all")
    # Then "not yet": 503 with Retry-After, counted as an unhandled error (its alarm fires at one)
    assert answer.status == 503 and "retry-after" in answer.headers, answer.body
    assert metric_totals(capsys.readouterr().out).get("UnhandledError") == 1
    # And once the database takes it again, the same key buys
    assert post({"credit_pack_id": STARTER}, key="refused").status == 201

"""A browser redirect answered "another delivery is in progress" is kept: the delivery holding the claim may be one
Lambda ended mid-work (its claim then outlives it, nothing written), and a terminal without notifications never sends
the callback again. Kept, the paid transaction has its journal row, the queue shows it and the cleanup never expires
its payment."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from payments.services.handle_callback import HandleCallback
from tests.integration.test_hypay_callback import browser, buy, location, pay
from tests.support.faults import Killed
from tests.support.payments import PENDING_PAGE, SUCCESS_PAGE, Env


def _killed_mid_work(self: HandleCallback, *args: Any, **kwargs: Any) -> Any:
    raise Killed()  # Lambda's end: no `except Exception` runs, the claim stays in progress


def test_a_redirect_that_met_a_dead_holder_is_kept(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a paid payment whose first redirect's invocation ended mid-work, its claim left in progress
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    transaction = pay(env, payment)
    with monkeypatch.context() as m:
        m.setattr(HandleCallback, "_settle", _killed_mid_work)
        with pytest.raises(Killed):
            browser(transaction.redirect_query)
    assert env.rows("SELECT count(*) FROM idempotency_keys WHERE status = 'pending'") == [[1]]
    assert env.rows("SELECT count(*) FROM hypay_transactions") == [[0]]

    # When the browser's reload meets that claim
    page, query = location(browser(transaction.redirect_query))

    # Then it is told "still confirming", and the callback is kept: the transaction is in the journal (not verified,
    # for the queue), its text with it
    assert (page, query) == (PENDING_PAGE, {"payment_id": [pid]})
    assert env.rows("SELECT hypay_id, payment_id::text, decision, verified FROM hypay_transactions") == [
        [transaction.id, pid, "unverified", False]
    ]
    assert env.rows("SELECT hypay_id, source FROM hypay_unverified_callbacks") == [[transaction.id, "redirect"]]
    assert env.rows("SELECT status FROM payments WHERE id = :p::uuid", p=pid) == [["pending"]]

    # And once the dead claim expires, a delivery settles it as usual: completed, its credits granted once
    env.rows("UPDATE idempotency_keys SET in_progress_expiry_timestamp = 1 WHERE status = 'pending'")
    assert location(browser(transaction.redirect_query))[0] == SUCCESS_PAGE
    assert env.rows("SELECT status FROM payments WHERE id = :p::uuid", p=pid) == [["completed"]]
    assert env.rows("SELECT decision, verified FROM hypay_transactions") == [["granted", True]]
    assert env.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=pid) == [[1]]

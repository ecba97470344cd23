"""A payment the web app completed before this backend journaled anything keeps Hyp's Id as the web app wrote it,
with a leading zero; Hyp then delivers the same transaction without it, and the journal holds Hyp's spelling. One
number, one transaction: its refund (named in either spelling, or not named) asks Hyp about Hyp's spelling and takes
the payment's credits back, and its refunds are counted once whatever the spelling (its close:
test_close_transaction)."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_granted_before_resolved import _web_app_wrote
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env


def _journaled(env: Env, txn: str, decision: str) -> None:
    """The journal's one row of the transaction, as Hyp's delivery spelled it."""
    assert env.rows("SELECT hypay_id, decision FROM hypay_transactions WHERE ltrim(hypay_id, '0') = :t", t=txn) == [
        [txn, decision]
    ]


def _completed_by_the_web_app(env: Env) -> tuple[str, str]:
    page = buy(env, key=str(uuid.uuid4()))
    pid = page["payment_id"]
    paid = pay(env, page)
    env.rows(
        "UPDATE payments SET status = 'completed', hypay_transaction_id = :h, completed_at = now() WHERE id = :p::uuid",
        h="0" + paid.id,
        p=pid,
    )
    _web_app_wrote(env, pid, ("purchase", 100))
    assert notify(paid.redirect_query).status == 200  # Hyp's delivery, the Id without the zero
    _journaled(env, paid.id, "granted")
    return pid, paid.id


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize(
    "named", ["{id}", "0{id}", None], ids=["as-hyp-writes-it", "as-the-payment-holds-it", "unnamed"]
)
def test_a_refund_of_the_paying_transaction_takes_its_credits_back(env: Env, named: str | None) -> None:
    pid, txn = _completed_by_the_web_app(env)
    before = env.credits()
    body = {"reason": "customer asked"} | ({"hypay_id": named.format(id=txn)} if named else {})
    back = refund(pid, body, str(uuid.uuid4()))
    assert back.status == 201, back.body
    assert (back.json["credits_taken"], before - env.credits()) == (100, 100), back.body
    assert back.json["hypay_transaction_id"] == txn


@pytest.mark.usefixtures("admin")
def test_the_paying_transaction_is_refunded_once_whatever_the_spelling(env: Env) -> None:
    pid, txn = _completed_by_the_web_app(env)
    assert refund(pid, {"hypay_id": txn, "reason": "customer asked"}, str(uuid.uuid4())).status == 201
    # Refunded again without naming it (the payment's own spelling): nothing remains, Hyp is not asked
    again = refund(pid, {"reason": "customer asked again"}, str(uuid.uuid4()))
    assert again.status == 422, again.body
    assert len(env.rows("SELECT 1 FROM refunds WHERE payment_id = :p::uuid", p=pid)) == 1

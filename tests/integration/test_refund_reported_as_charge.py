"""A refund's own Hyp transaction reported (as a charge of the payment, through a callback) before the refund's answer
is stored, or after it was lost: never money paid (credits granted, a "second charge" to refund), but a row a human
compares, which the refund's stored answer makes the refund's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from payments.adapters.hypay import Reversal
from payments.adapters.journal import HypTransaction, Source
from payments.domain.money import Money
from payments.services.settle import settle
from tests.integration.test_refunds import Admin, paid
from tests.integration.test_refunds import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env
from tests.support.pg import database


def test_a_refund_reported_before_its_answer_is_stored_is_journaled_as_a_refund_not_a_second_charge(
    env: Env, admin: Admin
) -> None:
    pid, txn = paid(env)
    before = env.credits()
    answer = _reported_before_stored(env, admin, pid, lambda: admin.refund(pid, "r-1"))
    assert answer.status == 201, answer.body
    [[refund_id]] = env.rows("SELECT hypay_refund_id FROM refunds WHERE payment_id = :p::uuid", p=pid)
    # The credits went back once
    assert env.credits() == before - 100
    # And the refund's own transaction is journaled as the refund (not a second charge the queue asks to refund),
    # and the refund API does not take it for money paid
    journaled = env.rows("SELECT decision, source, detail FROM hypay_transactions WHERE hypay_id = :i", i=refund_id)
    again = admin.refund(pid, "r-2", hypay_id=refund_id, reason="second charge in the queue")
    asked = env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans")
    assert journaled[0][:2] == ["refunded", "refund"], (journaled, again.status, again.body, f"Hyp asked {asked}x")
    assert again.status == 409 and asked == 1


def paid_under_review_then_failed(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, str, Any]:
    """A payment under review (Hyp reported 1.00 for it, HMAC-only), then paid 49.90 on its page (T1, "paid while
    under review"), which an operator (alice) failed: (the payment as bought, its id, T1)."""
    import json

    from tests.integration.test_callback_attacks import unpaid_claim, use_mode
    from tests.integration.test_hypay_callback import buy, forge, notify, pay
    from tests.integration.test_review import ALICE, _reset, resolve

    monkeypatch.setenv("ADMIN_API_TOKEN", json.dumps({"tokens": {"alice": ALICE}}))
    _reset()
    use_mode(monkeypatch, "hmac")
    payment = buy(env)
    pid = payment["payment_id"]
    assert notify(forge(unpaid_claim(pid, amount="1.00"))).status == 200
    t1 = pay(env, payment)
    assert notify(t1.redirect_query).status == 200
    assert env.status(pid) == "needs_review"
    assert resolve(pid, {"action": "fail", "reason": "customer gave up"}, key="f-1").status == 200
    return payment, pid, t1


def test_refunding_the_money_of_a_failed_payment_never_grants_its_credits(env: Env, admin: Admin, monkeypatch) -> None:
    before = env.credits()
    # Given a payment under review (Hyp reported 1.00 for it), then genuinely paid 49.90 on its page (T1: "paid
    # while under review"), which the operator closes without credits: fail, then refund T1, as the queue says
    _, pid, t1 = paid_under_review_then_failed(env, monkeypatch)
    # When T1 is refunded and Hyp reports the refund's transaction before our answer is stored
    answer = _reported_before_stored(
        env, admin, pid, lambda: admin.refund(pid, "r-1", hypay_id=t1.id, reason="failed payment: money back")
    )
    assert answer.status == 201, answer.body
    # Then the customer has the money back and no credits: not 100 credits "completed late" by the refund itself
    assert (env.status(pid), env.credits() - before) == ("failed", 0), env.rows(
        "SELECT hypay_id, decision, detail FROM hypay_transactions WHERE payment_id = :p::uuid", p=pid
    )


def test_a_refund_whose_answer_was_lost_then_reported_by_hyp_grants_nothing(env: Env, admin: Admin) -> None:
    # No race needed: Hyp refunded, its answer was lost (the refund row is 'unknown', its own Id nowhere), and Hyp's
    # report of that refund transaction (Order = the payment, CCode 0) arrives minutes later through the notify
    pid, txn = paid(env)
    before = env.credits()
    env.sim.faults.add("zikoyAPI", "lost")
    answer = admin.refund(pid, "lost-1")
    assert answer.status == 202 and answer.body["status"] == "unknown", answer.body
    [reversal] = env.sim.reversals
    settled = settle(
        admin.db,
        HypTransaction(
            hypay_id=reversal.id,
            order_ref=pid,
            payment_id=uuid.UUID(pid),
            ccode=0,
            amount=Money.of("49.90"),
            source=Source.NOTIFY,
            verified=True,
        ),
    )
    # Then the refund's transaction is not taken for money paid ("second charge: refund this second transaction"
    # would refund the refund): a human compares it with Hyp's refunds
    assert str(settled.result) != "review" or "second charge" not in (
        env.rows("SELECT detail FROM hypay_transactions WHERE hypay_id = :i", i=reversal.id)[0][0] or ""
    ), env.rows("SELECT decision, detail FROM hypay_transactions WHERE hypay_id = :i", i=reversal.id)
    assert env.credits() == before


def _reported_before_stored(env: Env, admin: Admin, pid: str, refund: Callable[[], Any], *, spelled: str = "{}") -> Any:
    """`refund()`, with Hyp reporting the refund's own transaction (Order = the payment, CCode 0) through a verified
    callback between its answer and our storing it: the callback function's settle, on its own connection. The
    callback's Id is the refund's, written as `spelled` says (`"0{}"`: with a leading zero)."""
    gateway = admin.service.deps.gateway
    real_refund = gateway.refund
    other = database(env.url)

    def refund_then_hyp_notifies(transaction_id: str, *, amount: Money) -> Reversal:
        reversal = real_refund(transaction_id, amount=amount)
        settle(
            other,
            HypTransaction(
                hypay_id=spelled.format(reversal.transaction_id),
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
        return refund()
    finally:
        gateway.refund = real_refund
        other.close()

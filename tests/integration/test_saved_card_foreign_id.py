"""Hyp's own answer to our saved-card charge names an Id the journal holds for another payment."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_money_edges import _answers_rewritten
from tests.support.payments import CVV, PRO, Env, post


def test_a_saved_card_charge_answered_with_another_payments_hyp_id_is_put_in_review(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given payment A, paid on Hyp's page and granted for Hyp transaction T
    first = buy(env, key="page-a")
    t = pay(env, first)
    assert notify(t.redirect_query).status == 200
    before = env.credits()
    # When Hyp approves a saved-card charge for payment B and its answer (over our own TLS call: authentic) names T
    _answers_rewritten(env, monkeypatch, lambda a: re.sub(r"(^|&)Id=[0-9]+", rf"\g<1>Id={t.id}", a))
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="card-b")
    # Then no credits, and the answer says the payment is in review, as it is: naming T (Hyp may have charged B;
    # left pending it was out of the review queue until the cleanup flagged it, without the Id, two hours on)
    assert env.credits() == before
    assert answer.status == 202 and answer.json["status"] == "needs_review", answer.body
    b = answer.json["payment_id"]
    [(status, reason)] = env.rows("SELECT status, review_reason FROM payments WHERE id = :p::uuid", p=b)
    assert (status, t.id in (reason or "")) == ("needs_review", True), (status, reason)


def test_a_declined_saved_card_charge_naming_another_payments_hyp_id_is_put_in_review(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given payment A granted for Hyp transaction T
    first = buy(env, key="page-a2")
    t = pay(env, first)
    assert notify(t.redirect_query).status == 200
    # When Hyp's answer to B's charge is a decline that names T
    _answers_rewritten(
        env,
        monkeypatch,
        lambda a: re.sub(r"(^|&)CCode=[0-9]+", r"\g<1>CCode=4", re.sub(r"(^|&)Id=[0-9]+", rf"\g<1>Id={t.id}", a)),
    )
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="card-b2")
    # Then B is in review naming T (a decline whose Id is another payment's is not B's to decide), never left pending
    assert answer.status == 202 and answer.json["status"] == "needs_review", answer.body
    [(status, reason)] = env.rows(
        "SELECT status, review_reason FROM payments WHERE id = :p::uuid", p=answer.json["payment_id"]
    )
    assert (status, t.id in (reason or "")) == ("needs_review", True), (status, reason)

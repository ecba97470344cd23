"""A payment grants the credits it sold. The web app writes payments without `credits` (a column this backend added):
such a payment sold its pack's credits, read from the catalogue only while the pack still sells at the price the
payment asked. A pack the web app changed since (ten times the credits at a new price, no credits at all) is not what
was paid for: the callback grants nothing and sends it to a human, who cannot complete it until what it sold is
recorded (an outside review: 1000 credits were granted for a 49.90 payment of the 100-credit pack, and a pack set to
0 credits completed a paid payment with none, out of the queue). A catalogue price that is not a number is a pack not
sold (409), not the buyer's bad request."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from payments.services import review as review_module
from payments.services import settle as settle_module
from tests.integration.test_hypay_callback import browser, buy, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.support.payments import STARTER, Env, post
from tests.support.pg import connect


def _written_by_the_web_app(env: Env) -> dict:
    """A pending 49.90 payment of the 100-credit pack, as the web app writes one: no `credits` of its own."""
    payment = buy(env, key=str(uuid.uuid4()))
    env.rows("UPDATE payments SET credits = NULL WHERE id = :p::uuid", p=payment["payment_id"])
    return payment


def test_the_packs_credits_are_granted_while_it_sells_at_the_payments_price(env: Env) -> None:
    payment = _written_by_the_web_app(env)
    before = env.credits()
    assert browser(pay(env, payment).redirect_query).status == 302
    assert (env.status(payment["payment_id"]), env.credits() - before) == ("completed", 100)


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize(
    "change",
    [
        "credits = 1000, price = 499.00",  # a new offer: ten times the credits
        "credits = 0, is_active = false",  # retired, selling nothing
        "price = 59.90",  # the same credits at another price
    ],
    ids=["more-credits-new-price", "no-credits", "new-price"],
)
def test_a_pack_changed_since_grants_nothing_and_goes_to_a_human(env: Env, change: str) -> None:
    payment = _written_by_the_web_app(env)
    pid = payment["payment_id"]
    before = env.credits()
    env.rows(f"UPDATE credit_packs SET {change} WHERE id = :k::uuid", k=STARTER)  # noqa: S608 - the test's own text
    paid = pay(env, payment)  # Hyp charges the payment's 49.90
    assert browser(paid.redirect_query).status == 302
    # Nothing granted, the payment and the transaction held for a human, who sees why
    assert (env.status(pid), env.credits()) == ("needs_review", before)
    assert env.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :h", h=paid.id) == [["review"]]
    [item] = [i for i in every_item() if i["id"] == f"p:{pid}"]
    assert item["reason"] == "credits_not_known", item
    # Completing is refused until what it sold is recorded; then it grants exactly that
    refused = resolve(pid, {"action": "complete", "reason": "Hyp shows it paid"}, key=str(uuid.uuid4()))
    assert refused.status == 409 and "not known" in refused.json["detail"], refused.body
    assert env.credits() == before
    env.rows("UPDATE payments SET credits = 100 WHERE id = :p::uuid", p=pid)  # the web app's record of the sale
    done = resolve(pid, {"action": "complete", "reason": "Hyp shows it paid"}, key=str(uuid.uuid4()))
    assert (done.status, done.json["credits_granted"]) == (200, 100), done.body
    assert env.credits() - before == 100


def test_a_price_that_is_not_a_number_is_a_pack_not_sold(env: Env) -> None:
    env.rows("UPDATE credit_packs SET price = 'NaN' WHERE id = :k::uuid", k=STARTER)
    answer = post({"credit_pack_id": STARTER}, key="nan-price")
    assert answer.status == 409 and "not sold" in answer.json["detail"], answer.body
    assert env.rows("SELECT count(*) FROM payments") == [[0]]


def _web_app_reprices(env: Env) -> None:
    """The web app's new offer, committed on a connection of its own: ten times the credits at ten times the price."""
    web = connect(env.url)
    web.run("UPDATE credit_packs SET credits = 1000, price = 499.00 WHERE id = :k::uuid", k=STARTER)
    web.close()


def test_a_pack_repriced_while_the_callback_decides_grants_what_was_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grant gives the credits read with the decision, under the payment's lock: the catalogue changing in
    between (the decision's read and the grant are two statements) neither completes it with none nor grants 1000 (an
    outside review of the first fix)."""
    payment = _written_by_the_web_app(env)
    before = env.credits()
    decide = settle_module.decide

    def decided_then_repriced(*args: Any) -> Any:
        decision = decide(*args)
        _web_app_reprices(env)
        return decision

    monkeypatch.setattr(settle_module, "decide", decided_then_repriced)
    assert browser(pay(env, payment).redirect_query).status == 302
    assert (env.status(payment["payment_id"]), env.credits() - before) == ("completed", 100)


@pytest.mark.usefixtures("admin")
def test_a_pack_repriced_while_an_operator_completes_grants_what_was_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment = _written_by_the_web_app(env)
    pid = payment["payment_id"]
    env.rows("UPDATE credit_packs SET price = 59.90 WHERE id = :k::uuid", k=STARTER)
    assert browser(pay(env, payment).redirect_query).status == 302
    assert env.status(pid) == "needs_review"  # credits_not_known
    env.rows("UPDATE credit_packs SET price = 49.90 WHERE id = :k::uuid", k=STARTER)  # at the payment's price again
    before = env.credits()
    plan = review_module.plan_resolution

    def planned_then_repriced(*args: Any, **kwargs: Any) -> Any:
        planned = plan(*args, **kwargs)
        _web_app_reprices(env)
        return planned

    monkeypatch.setattr(review_module, "plan_resolution", planned_then_repriced)
    done = resolve(pid, {"action": "complete", "reason": "Hyp shows it paid"}, key=str(uuid.uuid4()))
    assert (done.status, done.json["credits_granted"]) == (200, 100), done.body
    assert (env.status(pid), env.credits() - before) == ("completed", 100)

"""A payment the web app completed before this backend journaled anything keeps Hyp's Id as the web app wrote it,
with a leading zero; Hyp then delivers the same transaction without it, and the journal holds Hyp's spelling. One
number, one transaction: its refund (named in either spelling, or not named; before Hyp's delivery too) asks Hyp
about Hyp's spelling and takes the payment's credits back, its refunds are counted once whatever the spelling, and it
is never taken for another payment's lost charge or a refund's own transaction (its close: test_close_transaction)."""

from __future__ import annotations

import uuid

import pytest

from ops.hypay_simulator import APPROVING_CARD
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_granted_before_resolved import _web_app_wrote
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_refund_lost_charge import _lost_charge
from tests.integration.test_refund_outcome import _lost_refund, settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env, user_with_the_saved_card


def _journaled(env: Env, txn: str, decision: str) -> None:
    """The journal's one row of the transaction, as Hyp's delivery spelled it."""
    assert env.rows("SELECT hypay_id, decision FROM hypay_transactions WHERE ltrim(hypay_id, '0') = :t", t=txn) == [
        [txn, decision]
    ]


def _completed_by_the_web_app(
    env: Env, *, delivered: bool = True, pad: str = "0", save_card: bool = False
) -> tuple[str, str]:
    """A page payment (49.90, 100 credits) the web app completed, Hyp's Id written with `pad` in front; `delivered`:
    Hyp's callback has arrived since (journaled as Hyp spells it), else nothing is journaled yet; `save_card`: bought
    with "keep my card". (The payment, Hyp's Id as Hyp writes it.)"""
    page = buy(env, key=str(uuid.uuid4()), **({"save_card": True} if save_card else {}))
    pid = page["payment_id"]
    paid = pay(env, page)
    env.rows(
        "UPDATE payments SET status = 'completed', hypay_transaction_id = :h, completed_at = now() WHERE id = :p::uuid",
        h=pad + paid.id,
        p=pid,
    )
    _web_app_wrote(env, pid, ("purchase", 100))
    if delivered:
        assert notify(paid.redirect_query).status == 200  # Hyp's delivery, the Id without the zero
        _journaled(env, paid.id, "granted")
    return pid, paid.id


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("delivered", [True, False], ids=["delivered", "not-delivered-yet"])
@pytest.mark.parametrize(
    "named", ["{id}", "0{id}", None], ids=["as-hyp-writes-it", "as-the-payment-holds-it", "unnamed"]
)
def test_a_refund_of_the_paying_transaction_takes_its_credits_back(
    env: Env, named: str | None, delivered: bool
) -> None:
    pid, txn = _completed_by_the_web_app(env, delivered=delivered)
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


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("pad", ["", "0"], ids=["as-hyp-writes-it", "zero-padded"])
def test_a_paying_transaction_is_not_nameable_as_another_payments_lost_charge(
    env: Env, saved_card: str, pad: str
) -> None:
    # Given payment B the web app completed (Hyp's delivery not arrived yet), and another customer's saved-card charge
    # whose answer was lost
    b, x = _completed_by_the_web_app(env, delivered=False, pad=pad)
    before = env.credits()
    other = user_with_the_saved_card(env.rows, "wa")
    lost, _ = _lost_charge(env, "wa-lost", other)
    # When an operator names X (B's paying transaction: the wrong row of Hyp's portal) for the lost charge's refund
    named = refund(lost, {"hypay_id": x, "original_amount": "49.90", "reason": "money back"}, key=str(uuid.uuid4()))
    # Then it is refused as B's paying transaction, whichever way B holds it; B's own refund takes its credits back
    assert named.status == 409, named.body
    back = refund(b, {"reason": "customer asked"}, key=str(uuid.uuid4()))
    assert back.status == 201 and before - env.credits() == 100, back.body


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("pad", ["", "0"], ids=["as-hyp-writes-it", "zero-padded"])
def test_a_paying_transaction_is_not_taken_as_a_lost_refunds_own(
    env: Env, monkeypatch: pytest.MonkeyPatch, pad: str
) -> None:
    # Given payment A with a refund of 20.00 whose answer was lost, and payment B the web app completed
    _, refund_id, _ = _lost_refund(env, monkeypatch)
    env.rows("UPDATE refunds SET updated_at = now() - interval '1 hour'")
    _, x = _completed_by_the_web_app(env, delivered=False, pad=pad)
    credits = env.credits()
    # When an operator settles A's refund naming X (B's paying transaction: the wrong row of Hyp's portal)
    answer = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": x, "reason": "Hyp portal: refunded 20.00"})
    # Then it is refused: X paid payment B, it is no refund; no credits taken, nothing stored
    assert answer.status == 409, answer.body
    assert env.credits() == credits
    assert env.rows("SELECT count(*) FROM refunds WHERE hypay_refund_id = :x", x=x) == [[0]]


@pytest.mark.parametrize("pad", ["", "0"], ids=["as-hyp-writes-it", "zero-padded"])
def test_hyps_delivery_keeps_the_card_of_a_payment_the_web_app_completed(env: Env, pad: str) -> None:
    """Bought with "keep my card" and completed by the web app before Hyp's delivery: the delivery (Hyp's spelling)
    still owes the buyer the card, whichever way the web app wrote the Id; no credits granted twice."""
    pid, _ = _completed_by_the_web_app(env, pad=pad, save_card=True)
    assert env.rows("SELECT payment_id::text, last4 FROM saved_cards") == [[pid, APPROVING_CARD[-4:]]]
    assert env.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=pid) == [[1]]

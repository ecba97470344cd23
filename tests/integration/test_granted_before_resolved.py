"""A payment whose credits the web app granted while it was pending, then paid through Hyp (paid_under_review, "a
purchase was already granted"): the operator completes it with the transaction that paid, without a second grant,
and a refund of that transaction then takes the credits back. Before, every resolve was refused, the 409 said
"refund the transaction", and that refund gave all the money back while the customer kept the credits, the item left
in the queue for good (an outside review walking the runbooks)."""

from __future__ import annotations

import uuid

import pytest

from ops.seed import DEMO_USER_ID
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import use_mode
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import amount_mismatch, every_item, resolve
from tests.support.payments import Env


def _web_app_wrote(env: Env, pid: str, *entries: tuple[str, int]) -> None:
    for kind, amount in entries:
        env.rows(
            "INSERT INTO credit_transactions (user_id, amount, type, description, payment_id)"
            " VALUES (:u::uuid, :a, :t, 'web app', :p::uuid)",
            u=DEMO_USER_ID,
            a=amount,
            t=kind,
            p=pid,
        )
        env.rows("UPDATE profiles SET credits = credits + :a WHERE id = :u::uuid", a=amount, u=DEMO_USER_ID)


def _granted_then_paid(env: Env) -> tuple[str, str]:
    page = buy(env, key=str(uuid.uuid4()))
    pid = page["payment_id"]
    _web_app_wrote(env, pid, ("purchase", 100))
    paid = pay(env, page)
    assert notify(paid.redirect_query).status == 200
    assert env.status(pid) == "needs_review"
    assert [i["reason"] for i in every_item() if i["id"] == f"p:{pid}"] == ["paid_under_review"]
    return pid, paid.id


def test_completed_without_a_second_grant_then_refundable_with_its_credits(admin: Env) -> None:
    pid, txn = _granted_then_paid(admin)
    credits = admin.credits()
    # Failing would hide the grant: refused, saying what to do
    failed = resolve(pid, {"action": "fail", "reason": "not ours"}, key=str(uuid.uuid4()))
    assert failed.status == 409 and "complete it with the transaction that paid" in failed.json["detail"]
    # Completing binds the credits granted before to the transaction: no second grant
    done = resolve(pid, {"action": "complete", "reason": "Hyp shows it paid"}, key=str(uuid.uuid4()))
    assert (done.status, done.json["credits_granted"]) == (200, 0), done.body
    assert (admin.status(pid), admin.credits()) == ("completed", credits)
    assert admin.rows("SELECT hypay_transaction_id FROM payments WHERE id = :p::uuid", p=pid) == [[txn]]
    assert admin.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :t", t=txn) == [["granted"]]
    assert admin.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=pid) == [[1]]
    assert f"p:{pid}" not in [i["id"] for i in every_item()]
    # And a refund of it takes the credits back with the money
    back = refund(pid, {"reason": "customer asked"}, key=str(uuid.uuid4()))
    assert (back.status, back.json["credits_taken"]) == (201, 100), back.body
    assert admin.credits() == credits - 100


@pytest.mark.parametrize("pad", ["", "0"], ids=["as-hyp-writes-it", "zero-padded"])
def test_a_legacy_item_the_web_app_completed_with_its_transaction_leaves_the_queue(admin: Env, pad: str) -> None:
    """The legacy item's next step is "decide in the web app, then refund or credit by hand": once the web app has
    completed the payment with that very transaction (and credited it), nothing is left to decide. The web app may
    write Hyp's Id with a leading zero: the same number, the same transaction."""
    admin.rows("ALTER TABLE payments DROP CONSTRAINT payments_status_check")
    page = buy(admin, key=str(uuid.uuid4()))
    pid = page["payment_id"]
    admin.rows("UPDATE payments SET status = 'awaiting_bank' WHERE id = :p::uuid", p=pid)
    paid = pay(admin, page)
    assert notify(paid.redirect_query).status == 200
    assert [i["reason"] for i in every_item() if i["id"] == f"j:{paid.id}"] == ["legacy"]
    admin.rows(
        "UPDATE payments SET status = 'completed', hypay_transaction_id = :h, completed_at = now() WHERE id = :p::uuid",
        h=pad + paid.id,
        p=pid,
    )
    # Completed without the credits yet: it still needs a human
    assert f"j:{paid.id}" in [i["id"] for i in every_item()]
    _web_app_wrote(admin, pid, ("purchase", 100))
    assert f"j:{paid.id}" not in [i["id"] for i in every_item()]


@pytest.mark.parametrize(
    "ledger",
    [
        [("purchase", 100), ("refund", -100)],  # granted, then reversed by the web app while pending
        [("purchase", 0)],  # a purchase row of 0 credits
        [("purchase", 40)],  # a purchase row of another amount
    ],
    ids=["granted-then-reversed", "zero-credit-purchase", "partial-purchase"],
)
def test_a_payment_whose_credits_do_not_stand_in_full_is_not_completed(admin: Env, ledger: list) -> None:
    """Completing binds the credits the ledger holds: only when they are the payment's in full (an outside review:
    a bind of a purchase the web app reversed, or wrote for 0 or 40 credits, left the customer paid without them)."""
    page = buy(admin, key=str(uuid.uuid4()))
    pid = page["payment_id"]
    _web_app_wrote(admin, pid, *ledger)
    assert notify(pay(admin, page).redirect_query).status == 200
    assert admin.status(pid) == "needs_review"
    before = admin.credits()
    done = resolve(pid, {"action": "complete", "reason": "Hyp shows it paid"}, key=str(uuid.uuid4()))
    assert done.status == 409 and "in full" in done.json["detail"], done.body
    assert (admin.status(pid), admin.credits()) == ("needs_review", before)
    assert f"p:{pid}" in [i["id"] for i in every_item()]


def test_an_amount_mismatch_the_web_app_marks_completed_stays_in_the_queue(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mode(monkeypatch, "hmac")
    pid = amount_mismatch(admin, key=str(uuid.uuid4()), hypay_id="70000123")  # 1.00 paid for 49.90
    admin.rows(
        "UPDATE payments SET status = 'completed', hypay_transaction_id = '70000123', completed_at = now()"
        " WHERE id = :p::uuid",
        p=pid,
    )
    _web_app_wrote(admin, pid, ("purchase", 100))
    ids = [i["id"] for i in every_item()]
    assert f"p:{pid}" in ids or "j:70000123" in ids, "the amount mismatch left the queue without a human"

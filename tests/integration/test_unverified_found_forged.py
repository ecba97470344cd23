"""A callback kept because it could not be verified, later found forged: an operator can close its payment.

Kept unverified, a callback keeps its payment pending (the cleanup never expires it) and its Hyp Id in the review
queue, so that money Hyp may hold is never lost from view. A forgery that arrived while verification was down held
both forever: resolving refused a pending payment ("the cleanup expires it"), and the cleanup skipped it. Sent again
(Hyp's redelivery, or an operator posting it to /hypay/notify) and found forged, the kept text is marked. One check
of a public text is no proof (a KEY rotated since, say): the mark changes nothing by itself.
It lets an operator who finds no such transaction in Hyp's portal fail the payment; then, and only then, the Id
leaves the queue. Only the text found forged is marked: a forger's copy of a genuine Id marks nothing of the genuine
callback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_callback_attacks import unpaid_claim
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.support.payments import Env
from tests.support.pg import database

WRONG_KEY = "0" * 40  # a forger's guess: the Sign check fails


@pytest.fixture
def verify_down(admin: Env) -> Iterator[Env]:  # noqa: F811 - the fixture above
    """`hang_verify()`: Hyp's VERIFY hangs for the next call and its one retry (a genuine callback is then kept
    unverified, 503); `hang_sign()`: the same for the SIGN that tells a failed Sign from our credentials refused (a
    forged one is then kept)."""

    def hang(action: str) -> None:
        admin.sim.faults.add(action, "hang", times=2, seconds=1.5)

    admin.hang_verify = lambda: hang("VERIFY")  # type: ignore[attr-defined]
    admin.hang_sign = lambda: hang("SIGN")  # type: ignore[attr-defined]
    yield admin


def _expire_stale(env: Env) -> None:
    """The hourly cleanup, hours after the payments were made."""
    env.rows("UPDATE payments SET created_at = now() - interval '3 hours' WHERE status = 'pending'")
    db = database(env.url)
    try:
        run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=60))
    finally:
        db.close()


def _kept_forgery(env: Env, payment_id: str, *, found_forged: bool = True, amount: str = "49.90") -> str:
    """A forged approval for `payment_id` (its Sign wrong) that arrived while Hyp could not be asked whether our
    credentials are the reason (kept, 503), then, with `found_forged`, sent again and found forged (403). Its text."""
    forged = forge(unpaid_claim(payment_id, amount=amount), key=WRONG_KEY)
    env.hang_sign()  # type: ignore[attr-defined]
    assert notify(forged).status == 503
    if found_forged:
        assert notify(forged).status == 403
    return forged


def _kept_genuine(env: Env, key: str) -> tuple[dict, Any]:
    """A payment paid at Hyp whose callback arrived while VERIFY was down (kept, 503): (the payment, Hyp's
    transaction)."""
    page = buy(env, key=key)
    paid = pay(env, page)
    env.hang_verify()  # type: ignore[attr-defined]
    assert notify(paid.redirect_query).status == 503
    return page, paid


def test_a_kept_forgery_found_forged_can_be_failed_by_an_operator_and_then_leaves_the_queue(verify_down: Env) -> None:
    env = verify_down
    # Given a pending payment, and a forged approval for it (its Sign wrong) that arrived while Hyp could not be asked
    # whether our credentials are the reason: kept
    page = buy(env, key="forged-kept")
    pid = page["payment_id"]
    forged = _kept_forgery(env, pid, found_forged=False)
    assert [i["reason"] for i in every_item()] == ["unverified"]
    # And resolving it complete is refused, saying what to do
    refused = resolve(pid, {"action": "complete", "reason": "?", "hypay_id": "77700001"}, key="r-0")
    assert refused.status == 409 and "not verified yet" in refused.json["detail"], refused.body
    # When the kept text is sent again with Hyp answering: found forged (403), and marked
    assert notify(forged).status == 403
    assert env.rows("SELECT found_forged_at IS NOT NULL FROM hypay_unverified_callbacks") == [[True]]
    # Then the mark alone changes nothing: still in the queue, saying what to do, and the payment still held pending
    [item] = every_item()
    assert item["unverified_callbacks"]["found_forged"] == 1 and "Hyp's portal" in item["next_step"], item
    _expire_stale(env)
    assert env.status(pid) == "pending"
    # And an operator can fail it (not complete it), audited; then the Id leaves the queue, nothing granted
    complete = resolve(pid, {"action": "complete", "reason": "?", "hypay_id": "77700001"}, key="r-1")
    assert complete.status == 409 and "found forged" in complete.json["detail"], complete.body
    failed = resolve(pid, {"action": "fail", "reason": "no such transaction in Hyp's portal"}, key="r-2")
    assert failed.status == 200, failed.body
    assert env.status(pid) == "failed" and every_item() == []
    assert env.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=pid) == [[0]]
    assert env.rows("SELECT count(*) FROM admin_audit_log WHERE payment_id = :p::uuid", p=pid) == [[1]]


def test_a_genuine_callback_a_check_found_forged_stays_held_and_completes_later(verify_down: Env) -> None:
    env = verify_down
    # Given a genuine paid callback kept while VERIFY was down, which a later check found forged by mistake (a KEY
    # rotated since makes its Sign fail)
    page, paid = _kept_genuine(env, "genuine-marked")
    env.rows("UPDATE hypay_unverified_callbacks SET found_forged_at = now()")
    # Then it stays in the queue and its payment pending, whatever the cleanup does
    assert [i["hypay_ids"] for i in every_item()] == [[paid.id]]
    _expire_stale(env)
    assert env.status(page["payment_id"]) == "pending"
    # And its next delivery, verified, completes the payment once and leaves the queue
    assert notify(paid.redirect_query).status == 200
    assert env.status(page["payment_id"]) == "completed" and every_item() == []


def test_a_forgers_copy_of_a_genuine_id_marks_nothing_of_the_genuine_callback(verify_down: Env) -> None:
    env = verify_down
    # Given a genuine payment whose callback was kept unverified (VERIFY down)
    page, paid = _kept_genuine(env, "genuine-kept")
    # When a forgery naming the same Hyp Id (another amount) arrives and is found forged: first kept, then sent again
    fields = [(k, v) for k, v in unpaid_claim(page["payment_id"], amount="1.00") if k != "Id"]
    forged = forge([("Id", paid.id), *fields], key=WRONG_KEY)
    env.hang_sign()  # type: ignore[attr-defined]
    assert notify(forged).status == 503
    assert notify(forged).status == 403
    # Then only the forger's text is marked: the genuine one still holds the Id in the queue and the payment pending
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE found_forged_at IS NULL") == [[1]]
    assert [(i["reason"], i["hypay_ids"]) for i in every_item()] == [("unverified", [paid.id])]
    _expire_stale(env)
    assert env.status(page["payment_id"]) == "pending"
    refused = resolve(page["payment_id"], {"action": "complete", "reason": "?", "hypay_id": paid.id}, key="r-3")
    assert refused.status == 409, refused.body
    # And its next delivery completes the payment, once
    assert notify(paid.redirect_query).status == 200
    assert env.status(page["payment_id"]) == "completed" and every_item() == []


def test_a_forgery_never_kept_writes_nothing(verify_down: Env) -> None:
    env = verify_down
    page = buy(env, key="forged-fresh")
    assert notify(forge(unpaid_claim(page["payment_id"]), key=WRONG_KEY)).status == 403
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks") == [[0]]
    assert env.rows("SELECT count(*) FROM hypay_transactions") == [[0]]


def test_a_forgery_kept_for_a_payment_closed_otherwise_leaves_the_queue_only_on_an_operators_word(
    verify_down: Env,
) -> None:
    from ops.hypay_simulator import DECLINING_CARD

    env = verify_down
    # Given a forgery kept for a payment and found forged later, and the payment then closed by Hyp's own decline
    page = buy(env, key="forged-then-declined")
    pid = page["payment_id"]
    _kept_forgery(env, pid)
    declined = pay(env, page, card=DECLINING_CARD)
    assert notify(declined.redirect_query).status == 200 and env.status(pid) == "failed"
    # Then the forged Id stays in the queue: nobody confirmed there is no such transaction
    assert [i["hypay_ids"] for i in every_item()] == [["77700001"]]
    # And an operator who finds none in Hyp's portal confirms it (resolve fail on the failed payment, audited)
    assert resolve(pid, {"action": "complete", "reason": "?"}, key="c-1").status in (400, 409)
    confirmed = resolve(pid, {"action": "fail", "reason": "no such transaction in Hyp's portal"}, key="c-2")
    assert confirmed.status == 200, confirmed.body
    assert every_item() == [] and env.status(pid) == "failed"


def test_a_payment_held_by_a_kept_callback_nobody_can_verify_can_be_failed_and_its_id_stays_in_the_queue(
    verify_down: Env,
) -> None:
    env = verify_down
    # Given a pending payment held by a callback kept while VERIFY was down (Hyp may never send it again)
    page, paid = _kept_genuine(env, "held-genuine")
    # When an operator fails it (audited): the cleanup would never expire it
    failed = resolve(page["payment_id"], {"action": "fail", "reason": "not in Hyp's portal"}, key="h-1")
    assert failed.status == 200, failed.body
    # Then its Id stays in the queue (nothing found it forged), and the genuine callback still completes the payment
    assert [i["hypay_ids"] for i in every_item()] == [[paid.id]]
    assert notify(paid.redirect_query).status == 200
    assert env.status(page["payment_id"]) == "completed" and every_item() == []


def test_a_kept_forgery_for_an_expired_payment_can_be_confirmed_and_leaves_the_queue(verify_down: Env) -> None:
    env = verify_down
    # Given a payment the cleanup expired, and a forged approval for it kept, then found forged when sent again
    page = buy(env, key="expired-then-forged")
    pid = page["payment_id"]
    _expire_stale(env)
    assert env.status(pid) == "expired"
    _kept_forgery(env, pid)
    [item] = every_item()
    assert "resolve its payment fail" in item["next_step"], item
    # When the operator does what the queue says, it works, and the Id leaves the queue
    answer = resolve(pid, {"action": "fail", "reason": "no such transaction in Hyp's portal"}, key="x-1")
    assert answer.status == 200, answer.body
    assert every_item() == [] and env.status(pid) == "failed"


def test_a_kept_callback_whose_id_the_journal_gives_another_payment_does_not_pin_its_own(verify_down: Env) -> None:
    env = verify_down
    # Given two pending payments, and two forged approvals with one Hyp Id, one naming each, kept (the journal's row
    # for the Id names the first: an unverified claim overwrites nothing)
    first = buy(env, key="pin-1")["payment_id"]
    second = buy(env, key="pin-2")["payment_id"]
    for order in (first, second):
        env.hang_sign()  # type: ignore[attr-defined]
        assert notify(forge(unpaid_claim(order), key=WRONG_KEY)).status == 503
    # Then the cleanup expires the second as any payment Hyp never paid (nothing in the queue names it), and the
    # first stays held, its Id in the queue
    _expire_stale(env)
    assert (env.status(first), env.status(second)) == ("pending", "expired")
    assert [i["payment"]["id"] for i in every_item()] == [first]


def test_a_lost_saved_card_charge_failed_by_mistake_completes_despite_a_kept_page_callback(
    verify_down: Env, saved_card: str
) -> None:
    from tests.support.payments import CVV, PRO, post

    env = verify_down
    # Given a saved-card charge Hyp made whose answer was lost, failed by an operator by mistake, and a forged page
    # callback for the same payment kept and found forged
    env.sim.faults.add("soft", "lost")
    pid = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="lost-kept").json["payment_id"]
    [charge] = [t for t in env.sim.transactions.values() if t.order == pid]
    assert resolve(pid, {"action": "fail", "reason": "not seen in Hyp"}, key="l-1").status == 200
    _kept_forgery(env, pid)
    # When the operator finds the charge after all: naming it completes the payment, once
    before = env.credits()
    done = resolve(pid, {"action": "complete", "reason": "found in Hyp", "hypay_id": charge.id}, key="l-2")
    assert done.status == 200 and done.json["credits_granted"] == 500, done.body
    assert env.credits() == before + 500 and env.status(pid) == "completed"


def test_a_forgery_found_forged_never_makes_a_declined_saved_card_charge_completable(
    verify_down: Env, saved_card: str
) -> None:
    from tests.support.payments import CVV, PRO, post

    env = verify_down
    # Given a saved-card charge Hyp declined (no Id), and a forged approval naming it kept, then found forged
    env.sim.faults.add("soft", "ccode", ccode=4)
    pid = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="declined-x").json["payment_id"]
    before = env.credits()
    _kept_forgery(env, pid, amount="149.90")
    # When an operator completes it naming an Id: refused (Hyp's answer was a decline), nothing granted
    done = resolve(pid, {"action": "complete", "reason": "ticket 7", "hypay_id": "55555555"}, key="dx-1")
    assert (done.status, env.credits(), env.status(pid)) == (409, before, "failed"), done.body
    # And the forged Id can be confirmed (resolve fail, once) and leaves the queue
    assert resolve(pid, {"action": "fail", "reason": "no such transaction"}, key="dx-2").status == 200
    assert every_item() == []
    again = resolve(pid, {"action": "fail", "reason": "again"}, key="dx-3")
    assert again.status == 409, again.body
    assert env.rows("SELECT count(*) FROM admin_audit_log WHERE payment_id = :p::uuid", p=pid) == [[1]]


def test_a_genuine_kept_callback_whose_id_a_forger_planted_first_is_named_in_the_queue(verify_down: Env) -> None:
    from tests.support.payments import PRO, post

    env = verify_down
    # Given the victim's payment A paid at Hyp as X, and a forger's payment B; during an outage, first the forger's
    # claim of Id X naming B, then Hyp's genuine callback for A: both kept, the journal's row for X naming B
    a = buy(env, key="victim")
    b = post({"credit_pack_id": PRO}, key="forger").json["payment_id"]
    paid = pay(env, a)
    forged = forge([(k, paid.id if k == "Id" else v) for k, v in unpaid_claim(b, amount="149.90")], key=WRONG_KEY)
    env.hang_sign()  # type: ignore[attr-defined]
    assert notify(forged).status == 503
    env.hang_verify()  # type: ignore[attr-defined]
    assert notify(paid.redirect_query).status == 503
    # Then the queue's item for X names both payments its kept callbacks name (A expires: nothing holds it)
    _expire_stale(env)
    [item] = every_item()
    assert item["hypay_ids"] == [paid.id]
    assert sorted(item["unverified_callbacks"]["payment_ids"]) == sorted([a["payment_id"], b])
    # And Hyp's verified redelivery still completes A
    assert notify(paid.redirect_query).status == 200
    assert env.status(a["payment_id"]) == "completed"


def test_a_forgery_found_forged_for_a_completed_payment_says_it_cannot_be_dismissed_yet(verify_down: Env) -> None:
    env = verify_down
    # Given a completed payment, and a forged approval for it kept, then found forged
    page = buy(env, key="completed-then-forged")
    assert notify(pay(env, page).redirect_query).status == 200
    _kept_forgery(env, page["payment_id"])
    # Then its queue item does not ask for a resolve the API refuses
    [item] = every_item()
    assert "no action dismisses an Id" in item["next_step"], item
    refused = resolve(page["payment_id"], {"action": "fail", "reason": "forged"}, key="cf-1")
    assert refused.status == 409 and env.status(page["payment_id"]) == "completed"

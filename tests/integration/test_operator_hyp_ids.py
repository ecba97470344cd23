"""The operator's actions that name a Hyp Id: taken as the journal holds that number, or as Hyp writes it (a leading
zero must never name no transaction the journal holds and slip past "already paid another payment"), and two resolves
racing for one Id (409, not a 5xx)."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_refund_lost_charge import _lost_charge
from tests.integration.test_refund_outcome import _lost_refund, settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.support.payments import Env, user_with_the_saved_card
from tests.support.pg import connect


def test_a_lost_charge_is_not_completed_with_another_payments_hyp_id_written_with_a_leading_zero(
    admin: Env, saved_card: str
) -> None:
    env = admin
    # Given payment P completed by Hyp transaction X (100 credits), and a saved-card charge A whose answer was lost
    page = buy(env, key=str(uuid.uuid4()))
    x = pay(env, page)
    assert notify(x.redirect_query).status == 200 and env.status(page["payment_id"]) == "completed"
    a, _ = _lost_charge(env, "lost-a")
    before = env.credits()
    # When an operator completes A naming X with a leading zero
    done = resolve(a, {"action": "complete", "reason": "charged in Hyp", "hypay_id": "0" + x.id}, key=str(uuid.uuid4()))
    # Then it is refused as X itself would be (already paid another payment), and nothing is granted: one Hyp
    # transaction is never credited twice ('13579951' for P, '013579951' for A)
    assert (done.status, env.credits() - before) == (409, 0), (done.status, done.body)
    assert "another payment" in done.json["detail"], done.body


@pytest.mark.usefixtures("admin")
def test_another_payments_transaction_with_a_leading_zero_is_not_taken_as_a_refunds_own(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, refund_id, _ = _lost_refund(env, monkeypatch)
    other = buy(env, key=str(uuid.uuid4()))
    paid = pay(env, other)
    assert notify(paid.redirect_query).status == 200
    plain = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": paid.id, "reason": "Hyp: refunded"})
    zero = settle(refund_id, {"outcome": "refunded", "hypay_refund_id": "0" + paid.id, "reason": "Hyp: refunded"})
    assert plain.status == 409  # another payment's transaction (test_refund_outcome_foreign_id)
    # And written with a leading zero: refused as that same transaction (never stored as "Hyp transaction 0<X>")
    assert (zero.status, zero.json["detail"]) == (plain.status, plain.json["detail"]), (zero.status, zero.body)


def test_resolves_of_two_payments_racing_for_one_hyp_id_answer_409_not_503(admin: Env, saved_card: str) -> None:
    """Operator B completes payment B naming Hyp Id X while operator A's resolve of payment A with X commits (A's
    write of X is held open by a transaction of the owner that commits 0.5 s later)."""
    env = admin
    a, x = _lost_charge(env, "lost-a")
    b, _ = _lost_charge(env, "lost-b", user_with_the_saved_card(env.rows, "lost-b"))  # one unsettled charge a user
    before = env.credits()
    blocker = connect(env.url)
    blocker.run("BEGIN")
    blocker.run("UPDATE payments SET hypay_transaction_id = :x WHERE id = :a::uuid", x=x, a=a)
    timer = threading.Timer(0.5, lambda: blocker.run("COMMIT"))
    timer.start()
    answer = resolve(b, {"action": "complete", "reason": "charged in Hyp", "hypay_id": x}, key=str(uuid.uuid4()))
    timer.join()
    blocker.close()
    assert env.credits() == before and env.status(b) == "needs_review"
    # As one after the other: 409 "already paid another payment" (it was a 503 counted as an unhandled error)
    assert answer.status == 409, (answer.status, answer.body)


def test_an_id_the_journal_does_not_hold_is_taken_as_hyp_writes_it(admin: Env, saved_card: str) -> None:
    """A lost charge completed naming its Id with a leading zero is stored as Hyp writes that Id, so Hyp's callback for
    it later finds it, never a second transaction."""
    env = admin
    a, x = _lost_charge(env, "lost-a")
    done = resolve(a, {"action": "complete", "reason": "charged in Hyp", "hypay_id": "00" + x}, key=str(uuid.uuid4()))
    assert (done.status, done.json.get("hypay_id")) == (200, x), (done.status, done.body)
    assert env.rows("SELECT hypay_transaction_id FROM payments WHERE id = :a::uuid", a=a) == [[x]]
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id LIKE '0%'") == [[0]]

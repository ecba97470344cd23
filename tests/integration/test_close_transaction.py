"""`POST /admin/transactions/{hypay_id}/close`: an operator closes a Hyp transaction that no action of ours settles
(charged for an Order that is not ours; a second charge refunded through Hyp's portal), from what Hyp's portal shows.
Before it, the runbook said "refund" for an unmatched transaction and no action could: it stayed in the queue and its
alarm's count for ever."""

from __future__ import annotations

import json
import uuid

import pytest

from ops.seed import DEMO_USER_ID
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_review import ADMIN, ALICE, amount_mismatch, every_item, resolve
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.api import Answer, invoke
from tests.support.payments import Env

REFUNDED = {"outcome": "refunded_in_hyp", "reason": "refunded in Hyp's portal, ticket #42"}


def close(hypay_id: str, body: object = REFUNDED, key: str | None = None, token: str | None = ALICE) -> Answer:
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return invoke(ADMIN, "POST", f"/admin/transactions/{hypay_id}/close", body=body, headers=headers)


def _unmatched(hypay_id: str = "77700009") -> str:
    """A paid transaction for an Order that is not one of our payments (a signed notify: 404, journaled)."""
    notify(forge([(k, hypay_id if k == "Id" else v) for k, v in unpaid_claim(str(uuid.uuid4()))]))
    return hypay_id


@pytest.fixture(autouse=True)
def _hmac(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    use_mode(monkeypatch, "hmac")  # the forged callbacks below are then genuine (signed with our KEY)


def test_an_unmatched_transaction_is_closed_once_audited_and_leaves_the_queue(admin: Env) -> None:
    txn = _unmatched()
    assert f"j:{txn}" in [i["id"] for i in every_item()]
    credits = admin.credits()
    key = str(uuid.uuid4())
    # When an operator closes it as refunded in Hyp's portal
    done = close(txn, key=key)
    # Then it is closed, by the credential's name, with the reason; it leaves the queue; no credits moved
    assert done.status == 200, done.body
    assert (done.json["closed_as"], done.json["closed_by"], done.json["decision"]) == (
        "refunded_in_hyp",
        "alice",
        "unmatched",
    )
    assert f"j:{txn}" not in [i["id"] for i in every_item()] and admin.credits() == credits
    assert admin.rows(
        "SELECT closed_as, closed_by, closed_reason FROM hypay_transactions WHERE hypay_id = :t", t=txn
    ) == [["refunded_in_hyp", "alice", REFUNDED["reason"]]]
    [row] = admin.rows("SELECT admin, action, idempotency_key, request::text FROM admin_audit_log")
    assert row[:3] == ["alice", "close", key] and json.loads(row[3])["hypay_id"] == txn
    # And the same request again (another key, another admin) is the same answer, with no second audit row
    again = close(txn, token="ops-bot-token-0123456789abcdef")
    assert (again.status, again.json) == (200, done.json)
    assert len(admin.rows("SELECT 1 FROM admin_audit_log")) == 1
    # And a later delivery of the same callback changes none of it
    _unmatched(txn)
    assert f"j:{txn}" not in [i["id"] for i in every_item()]


def test_a_second_charge_refunded_in_hyps_portal_is_never_refunded_again_nor_completes_a_payment(
    admin: Env,
) -> None:
    twice = buy(admin, key=str(uuid.uuid4()))
    first, second = pay(admin, twice), pay(admin, twice)
    assert notify(first.redirect_query).status == 200 and notify(second.redirect_query).status == 200
    assert f"j:{second.id}" in [i["id"] for i in every_item()]
    done = close(second.id)
    assert done.status == 200 and done.json["payment_id"] == twice["payment_id"], done.body
    assert f"j:{second.id}" not in [i["id"] for i in every_item()]
    # Then a refund of it through the API is refused before Hyp is asked (it went back through the portal)
    reversals = len(admin.sim.reversals)
    again = refund(twice["payment_id"], {"reason": "paid twice", "hypay_id": second.id}, key=str(uuid.uuid4()))
    assert again.status == 409 and "closed as refunded_in_hyp by alice" in again.json["detail"], again.body
    assert len(admin.sim.reversals) == reversals
    assert admin.rows("SELECT count(*) FROM refunds") == [[0]]


def test_a_closed_transaction_held_for_a_failed_payment_never_completes_it(admin: Env) -> None:
    pid = amount_mismatch(admin, str(uuid.uuid4()), "55500002")
    failed = resolve(pid, {"action": "fail", "reason": "wrong amount"}, key=str(uuid.uuid4()))
    assert failed.status == 200, failed.body
    assert close("55500002").status == 200
    credits = admin.credits()
    done = resolve(pid, {"action": "complete", "reason": "x", "hypay_id": "55500002"}, key=str(uuid.uuid4()))
    assert (done.status, admin.credits() - credits) == (409, 0), done.body


def test_a_transaction_closed_as_refunded_is_never_taken_to_complete_its_payment(admin: Env) -> None:
    """Defence in depth: a close never reaches a payment under review (refused above), but a row closed so (by hand in
    SQL, or before its payment went to review) must not grant credits for money that went back."""
    pid = amount_mismatch(admin, str(uuid.uuid4()), "55500004")
    admin.rows("UPDATE hypay_transactions SET closed_as = 'refunded_in_hyp', closed_by = 'alice', closed_at = now()")
    credits = admin.credits()
    done = resolve(pid, {"action": "complete", "reason": "x", "hypay_id": "55500004"}, key=str(uuid.uuid4()))
    assert (done.status, admin.credits() - credits) == (409, 0), done.body
    assert "closed as refunded in Hyp's portal" in done.json["detail"]


def test_what_may_not_be_closed_is_refused_and_nothing_written(admin: Env) -> None:
    # A transaction whose payment is under review: the payment is resolved first
    amount_mismatch(admin, str(uuid.uuid4()), "55500003")
    # A transaction that granted credits
    page = buy(admin, key=str(uuid.uuid4()))
    paid = pay(admin, page)
    assert notify(paid.redirect_query).status == 200
    for txn, words in (("55500003", "under review"), (paid.id, "needs no human (granted)")):
        answer = close(txn)
        assert answer.status == 409 and words in answer.json["detail"], (txn, answer.status, answer.body)
    assert admin.rows("SELECT count(*) FROM hypay_transactions WHERE closed_at IS NOT NULL") == [[0]]
    assert admin.rows("SELECT count(*) FROM admin_audit_log") == [[0]]
    # Unknown, malformed or all-zero Ids are no transaction (404); a bad body is a 400; no token is a 401
    for txn in ("99999999", "abc", "0", "1" * 21):
        assert close(txn).status == 404, txn
    assert close(_unmatched(), {"outcome": "refunded", "reason": "x"}).status == 400
    assert close(_unmatched(), {"outcome": "refunded_in_hyp"}).status == 400
    assert close(_unmatched(), token=None).status == 401
    assert close(_unmatched(), token="wrong-token-0123456789").status == 401
    assert admin.rows("SELECT count(*) FROM hypay_transactions WHERE closed_at IS NOT NULL") == [[0]]


def test_a_transaction_whose_refund_is_unsettled_is_not_closed(admin: Env) -> None:
    twice = buy(admin, key=str(uuid.uuid4()))
    first, second = pay(admin, twice), pay(admin, twice)
    assert notify(first.redirect_query).status == 200 and notify(second.redirect_query).status == 200
    admin.sim.faults.add("CancelTrans", "lost")
    admin.sim.faults.add("zikoyAPI", "lost")
    lost = refund(twice["payment_id"], {"reason": "paid twice", "hypay_id": second.id}, key=str(uuid.uuid4()))
    assert lost.status == 202, lost.body
    answer = close(second.id)
    assert answer.status == 409 and "settle it first" in answer.json["detail"], answer.body


def test_the_journal_spelling_of_the_number_is_closed(admin: Env) -> None:
    txn = _unmatched("077700042")  # Hyp's callback wrote it with a leading zero: journaled so
    done = close("77700042")
    assert (done.status, done.json.get("hypay_id")) == (200, txn), done.body


@pytest.mark.parametrize("spelled", ["{id}", "0{id}"], ids=["as-hyp-sent-it", "web-app-zero-padded"])
def test_a_transaction_whose_payment_stands_on_it_is_not_closed(admin: Env, spelled: str) -> None:
    """A payment the web app completed before this backend ('paid', its credits granted by the web app) whose Hyp
    transaction the journal holds for review: closing it would leave its credits with the customer for money refunded
    in the portal. It is refused; a refund through the API takes them back (an outside review). Also when the web app
    wrote Hyp's Id with a leading zero the delivery did not have: one number, one transaction."""
    statuses = "('pending', 'completed', 'failed', 'expired', 'needs_review')"
    payment = buy(admin, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    paid = pay(admin, payment)
    admin.rows("ALTER TABLE payments DROP CONSTRAINT payments_status_check")
    admin.rows(
        "UPDATE payments SET status = 'paid', hypay_transaction_id = :t WHERE id = :p::uuid",
        t=spelled.format(id=paid.id),
        p=pid,
    )
    admin.rows(f"ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN {statuses}) NOT VALID")
    admin.rows(
        "INSERT INTO credit_transactions (user_id, amount, type, description, payment_id)"
        " VALUES (:u::uuid, 100, 'purchase', 'Starter', :p::uuid)",
        u=DEMO_USER_ID,
        p=pid,
    )
    assert notify(paid.redirect_query).status == 200
    assert admin.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :t", t=paid.id) == [["review"]]
    answer = close(paid.id)
    assert answer.status == 409 and "refund it through the API" in answer.json["detail"], answer.body
    assert admin.rows("SELECT count(*) FROM hypay_transactions WHERE closed_at IS NOT NULL") == [[0]]

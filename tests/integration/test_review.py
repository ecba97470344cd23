"""The admin function: the review queue, resolving payments by hand, and the audit trail of admin actions.

The functions run as a LOGIN member of `payments_backend` (the `env` fixture); the tests arrange and check as
the tables' owner (`Env.url`).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator

import pg8000.exceptions
import pytest

from ops.seed import DEMO_USER_ID
from payments.adapters import audit
from payments.errors import Conflict
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.support.api import Answer, invoke, reset_function_state
from tests.support.payments import CVV, PRO, Env, post, user_with_the_saved_card
from tests.support.pg import connect, database

ADMIN = "AdminFunction"
CLEANUP = "CleanupFunction"
ALICE = "test-admin-token-0123456789"  # in the leak scanner's list: it must never reach a log line
BOT = "ops-bot-token-0123456789abcdef"
INSUFFICIENT_PRIVILEGE = "42501"


@pytest.fixture
def admin(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """`env` with two named admin credentials (the secret's JSON form, from the environment locally)."""
    monkeypatch.setenv("ADMIN_API_TOKEN", json.dumps({"tokens": {"alice": ALICE, "ops-bot": BOT}}))
    monkeypatch.setenv("ADMIN_CHARGE_SETTLE_SECONDS", "0")
    _reset()
    yield env
    _reset()


def _reset() -> None:
    from payments.settings import admin_settings, cleanup_settings

    admin_settings.cache_clear()
    cleanup_settings.cache_clear()
    for name in (ADMIN, CLEANUP):
        reset_function_state(name)


def queue(query: str = "", token: str | None = ALICE) -> Answer:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return invoke(ADMIN, "GET", f"/admin/review{'?' + query if query else ''}", headers=headers)


def resolve(payment_id: str, body: object, key: str | None = None, token: str | None = ALICE) -> Answer:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if key is not None:
        headers["Idempotency-Key"] = key
    return invoke(ADMIN, "POST", f"/admin/payments/{payment_id}/resolve", body=body, headers=headers)


def every_item(query: str = "") -> list[dict]:
    answer = queue(query)
    assert answer.status == 200, answer.body
    return answer.json["items"]


def amount_mismatch(env: Env, key: str, hypay_id: str) -> str:
    """A payment Hyp (by a forged, HMAC-only callback) says was paid 1.00 instead of 49.90: needs_review."""
    payment = buy(env, key=key)
    claim = [(k, hypay_id if k == "Id" else v) for k, v in unpaid_claim(payment["payment_id"], amount="1.00")]
    assert notify(forge(claim)).status == 200
    assert env.status(payment["payment_id"]) == "needs_review"
    return payment["payment_id"]


def audit_rows(env: Env, payment_id: str | None = None) -> list[list]:
    where = "WHERE payment_id = :p::uuid" if payment_id else ""
    return env.rows(
        f"SELECT admin, action, idempotency_key, request::text, before_state::text, after_state::text"
        f" FROM admin_audit_log {where} ORDER BY at",
        p=payment_id,
    )


# -- the audit trail --------------------------------------------------------------------------------


def test_audit_record_appends_and_the_functions_role_can_never_change_a_row(admin: Env) -> None:
    # Given the functions' own login (a member of payments_backend)
    backend = database(os.environ["DATABASE_URL"])
    payment = buy(admin, key="audited")["payment_id"]
    # When an admin action is recorded through it
    row_id = audit.record(
        backend,
        admin="alice",
        action="refund",
        payment_id=payment,
        idempotency_key="k-1",
        request={"amount": "10.00"},
        before={"status": "completed"},
        after={"status": "completed", "refunded": "10.00"},
    )
    backend.close()
    # Then it is there, as written
    [entry] = audit.entries(database(admin.url), payment_id=payment)
    assert (entry.id, entry.admin, entry.action, entry.idempotency_key) == (row_id, "alice", "refund", "k-1")
    assert entry.before == {"status": "completed"} and entry.after["refunded"] == "10.00"
    # And the functions' role may not change or remove it
    conn = connect(os.environ["DATABASE_URL"])
    for sql in (
        "UPDATE admin_audit_log SET admin = 'mallory'",
        "DELETE FROM admin_audit_log",
        "TRUNCATE admin_audit_log",
    ):
        with pytest.raises(pg8000.exceptions.DatabaseError) as refused:
            conn.run(sql)
        assert refused.value.args[0]["C"] == INSUFFICIENT_PRIVILEGE, sql
    conn.close()
    assert admin.rows("SELECT admin FROM admin_audit_log") == [["alice"]]


# -- the queue ----------------------------------------------------------------------------------------


def test_queue_shows_mismatch_second_charge_and_unmatched_with_what_a_human_needs(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an amount mismatch, a page paid twice, and a charge for an Order that is not ours
    use_mode(monkeypatch, "hmac")
    mismatch = amount_mismatch(admin, "mismatch", "55500002")
    twice = buy(admin, key="twice")
    first, second = pay(admin, twice), pay(admin, twice)
    assert notify(first.redirect_query).status == 200 and notify(second.redirect_query).status == 200
    stranger = str(uuid.uuid4())
    notify(forge([(k, "77700009" if k == "Id" else v) for k, v in unpaid_claim(stranger)]))
    # When an admin reads the queue
    items = every_item()
    # Then each is there once, oldest first, with its reason, money, Hyp Ids and user
    assert [i["reason"] for i in items] == ["amount_mismatch", "second_charge", "unmatched"]
    assert [i["since"] for i in items] == sorted(i["since"] for i in items)
    by_reason = {i["reason"]: i for i in items}
    flagged = by_reason["amount_mismatch"]
    assert flagged["id"] == f"p:{mismatch}" and flagged["kind"] == "payment"
    assert flagged["payment"]["status"] == "needs_review" and flagged["user_id"] == DEMO_USER_ID
    assert (flagged["amount"], flagged["currency"], flagged["payment"]["credits"]) == ("49.90", "ILS", 100)
    assert flagged["hypay_ids"] == ["55500002"]
    assert flagged["hypay_transactions"][0]["amount"] == "1.00" and flagged["age_seconds"] >= 0
    assert any("amount mismatch" in t for t in flagged["tried"])
    double = by_reason["second_charge"]
    assert double["kind"] == "transaction" and double["hypay_ids"] == [second.id]
    assert double["payment"]["status"] == "completed" and double["payment"]["paid_by_hypay_id"] == first.id
    assert admin.status(twice["payment_id"]) == "completed"  # a second charge does not change the payment
    unmatched = by_reason["unmatched"]
    assert unmatched["payment"] is None and unmatched["transaction"]["order_ref"] == stranger
    # And the filter keeps one reason
    assert [i["id"] for i in every_item("reason=second_charge")] == [f"j:{second.id}"]


def test_queue_shows_unknown_charge_outcomes_and_unverified_callbacks(admin: Env, saved_card: str) -> None:
    # Given a saved-card charge Hyp never answered, and a paid page whose callback cannot be verified yet
    admin.sim.faults.add("soft", "hang", seconds=1.5)
    unknown = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-hang")
    assert unknown.status == 202
    page = buy(admin, key="unverified")
    paid = pay(admin, page)
    admin.sim.faults.add("VERIFY", "hang", times=2, seconds=1.5)  # the call and its one retry
    assert notify(paid.redirect_query).status == 503
    # When an admin reads the queue
    items = {i["reason"]: i for i in every_item()}
    # Then the charge is there with when it was attempted, and the callback with what was kept of it
    charge = items["charge_outcome_unknown"]
    assert charge["payment"]["id"] == unknown.json["payment_id"] and charge["payment"]["charge_attempted_at"]
    assert charge["hypay_ids"] == [] and any("saved-card charge asked" in t for t in charge["tried"])
    waiting = items["unverified"]
    assert waiting["hypay_ids"] == [paid.id] and waiting["payment"]["status"] == "pending"
    assert waiting["unverified_callbacks"]["count"] >= 1
    # And once the callback is verified, it leaves the queue
    assert notify(paid.redirect_query).status == 200
    assert [i["reason"] for i in every_item()] == ["charge_outcome_unknown"]


def test_queue_pages_oldest_first_with_an_opaque_cursor_and_refuses_bad_parameters(admin: Env) -> None:
    # Given seven payments under review, created a minute apart, and one unmatched transaction among them
    for n in range(7):
        admin.rows(
            "INSERT INTO payments (user_id, amount, currency, credits, status, review_reason, created_at)"
            " VALUES (:u::uuid, 10, 'ILS', 5, 'needs_review', :r, now() - make_interval(mins => :m))",
            u=DEMO_USER_ID,
            r="amount mismatch: test" if n % 2 else "saved-card charge outcome unknown (test)",
            m=60 - n,
        )
    admin.rows(
        "INSERT INTO hypay_transactions (hypay_id, order_ref, ccode, amount, currency, source, verified, decision,"
        " first_seen) VALUES ('123', 'nope', 0, 5, 'ILS', 'notify', true, 'unmatched',"
        " now() - interval '57 minutes 30 seconds')"
    )
    # When it is read three at a time
    seen, cursor, pages = [], None, 0
    while True:
        answer = queue("limit=3" + (f"&after={cursor}" if cursor else ""))
        assert answer.status == 200, answer.body
        seen += answer.json["items"]
        cursor, pages = answer.json["next"], pages + 1
        if cursor is None:
            break
    # Then every item comes once, oldest first, over three pages
    assert pages == 3 and len(seen) == 8 and len({i["id"] for i in seen}) == 8
    assert [i["since"] for i in seen] == sorted(i["since"] for i in seen)
    assert seen[3]["reason"] == "unmatched"
    # And a filtered page reads past what it skips
    mismatches = queue("reason=amount_mismatch&limit=2")
    assert [i["reason"] for i in mismatches.json["items"]] == ["amount_mismatch"] * 2
    rest = queue(f"reason=amount_mismatch&limit=2&after={mismatches.json['next']}").json
    assert len(rest["items"]) == 1 and rest["next"] is None
    # And bad parameters are a 400 that says which
    for query, word in [
        ("reason=nope", "reason"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1001", "limit"),
        ("after=bm9wZQ", "after"),
        ("after=%%%", "after"),
    ]:
        bad = queue(query)
        assert bad.status == 400 and bad.headers["content-type"] == "application/problem+json", query
        assert bad.json["detail"].startswith(word), (query, bad.json)


# -- resolving ----------------------------------------------------------------------------------------


def test_complete_grants_once_through_the_grant_path_and_is_audited(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a payment in review after an amount mismatch
    use_mode(monkeypatch, "hmac")
    before = admin.credits()
    payment = amount_mismatch(admin, "mismatch", "55500002")
    body = {"action": "complete", "reason": "customer paid the rest by transfer"}
    # When alice completes it
    done = resolve(payment, body, key="r-1")
    # Then the credits are granted once, with the purchase row, and the journal says who paid
    assert done.status == 200, done.body
    assert done.json | {"audit_id": None} == {
        "payment_id": payment,
        "action": "complete",
        "status": "completed",
        "hypay_id": "55500002",
        "credits_granted": 100,
        "audit_id": None,
        "resolved_by": "alice",
    }
    assert admin.credits() == before + 100
    assert admin.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=payment) == [[1]]
    assert admin.rows("SELECT status, hypay_transaction_id FROM payments WHERE id = :p::uuid", p=payment) == [
        ["completed", "55500002"]
    ]
    [(decision, amount, detail)] = admin.rows("SELECT decision, amount::text, detail FROM hypay_transactions")
    assert decision == "granted" and amount == "1.00" and "completed by alice" in detail
    # And the same request again is the same answer, replayed; another key is a 409 that says why
    again = resolve(payment, body, key="r-1")
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true" and again.json == done.json
    other = resolve(payment, body, key="r-2", token=BOT)
    assert other.status == 409 and "is completed" in other.json["detail"]
    assert admin.credits() == before + 100
    # And the audit trail holds one row: who, the key, the request, before and after (never the token)
    [(who, action, key, request, before_state, after_state)] = audit_rows(admin, payment)
    assert (who, action, key) == ("alice", "resolve", "r-1")
    assert json.loads(request)["reason"] == "customer paid the rest by transfer"
    assert json.loads(before_state)["status"] == "needs_review" and json.loads(after_state)["status"] == "completed"
    assert json.loads(after_state)["credits_granted_now"] == 100
    assert admin.rows("SELECT count(*) FROM admin_audit_log WHERE admin_audit_log::text LIKE :t", t=f"%{ALICE}%") == [
        [0]
    ]
    # And it has left the queue
    assert every_item() == []


def test_concurrent_resolves_grant_once(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # (imported here: the metrics object reads its namespace from the environment on first import)
    from payments.idempotency import PostgresPersistenceLayer
    from payments.services.review import ResolvePayment, ResolveRequest

    # Given a payment in review, and six admins' resolves (each its own key and connection) at once
    use_mode(monkeypatch, "hmac")
    before = admin.credits()
    payment = uuid.UUID(amount_mismatch(admin, "mismatch", "55500002"))
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def one(n: int) -> None:
        db = database(os.environ["DATABASE_URL"])
        service = ResolvePayment(db, PostgresPersistenceLayer(database=db))
        barrier.wait()
        try:
            service(
                admin=f"admin-{n}",
                payment_id=payment,
                idempotency_key=f"k-{n}",
                request=ResolveRequest(action="complete", reason="checked"),
            )
            outcomes.append("granted")
        except Conflict:
            outcomes.append("conflict")
        finally:
            db.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then exactly one granted; the others were told it is completed
    assert sorted(outcomes) == ["conflict"] * 5 + ["granted"]
    assert admin.credits() == before + 100
    assert admin.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=str(payment)) == [[1]]
    assert admin.rows("SELECT count(*) FROM admin_audit_log") == [[1]]


def test_fail_closes_without_credits_and_the_money_stays_in_the_queue(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mode(monkeypatch, "hmac")
    before = admin.credits()
    payment = amount_mismatch(admin, "mismatch", "55500002")
    # When ops-bot fails it
    failed = resolve(payment, {"action": "fail", "reason": "customer cancelled"}, key="f-1", token=BOT)
    # Then it is failed, no credits; the transaction Hyp charged is still there to refund
    assert failed.status == 200 and failed.json["status"] == "failed" and failed.json["credits_granted"] == 0
    assert admin.status(payment) == "failed" and admin.credits() == before
    [item] = every_item()
    assert item["id"] == "j:55500002" and item["reason"] == "amount_mismatch"
    assert item["payment"]["status"] == "failed"
    assert [r[:3] for r in audit_rows(admin, payment)] == [["ops-bot", "resolve", "f-1"]]
    # And it cannot be resolved again
    again = resolve(payment, {"action": "complete", "reason": "changed my mind"}, key="f-2")
    assert again.status == 409 and "is failed" in again.json["detail"]


def test_unknown_charge_outcome_needs_the_hyp_id_to_complete_and_can_be_failed(admin: Env, saved_card: str) -> None:
    # Given two saved-card charges whose outcome never came back
    admin.sim.faults.add("soft", "hang", times=3, seconds=1.5)
    charged = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="hang-1").json["payment_id"]
    other = user_with_the_saved_card(admin.rows, "hang-2")  # a user's card: one unsettled charge at a time
    not_charged = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="hang-2", user=other).json[
        "payment_id"
    ]
    before = admin.credits()
    # When completed without saying which Hyp transaction paid: a 409 that asks for it (the body is well formed: the
    # payment's state, no transaction known to have paid it, refuses it)
    unnamed = resolve(charged, {"action": "complete", "reason": "Hyp shows it charged"}, key="u-1")
    assert unnamed.status == 409 and "hypay_id" in unnamed.json["detail"]
    # Then with it: granted, and the journal records the transaction
    named = resolve(charged, {"action": "complete", "reason": "Hyp shows it", "hypay_id": "90000001"}, key="u-2")
    assert named.status == 200 and named.json["credits_granted"] == 500
    assert admin.credits() == before + 500
    assert admin.rows(
        "SELECT source, decision, payment_id::text FROM hypay_transactions WHERE hypay_id = '90000001'"
    ) == [["token_charge", "granted", charged]]
    # And the other is failed, without credits
    assert resolve(not_charged, {"action": "fail", "reason": "not in Hyp"}, key="u-3").status == 200
    assert admin.status(not_charged) == "failed" and admin.credits() == before + 500
    # And the same Hyp Id cannot complete a second payment
    third = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="hang-3").json["payment_id"]
    reused = resolve(third, {"action": "complete", "reason": "r", "hypay_id": "90000001"}, key="u-4")
    assert reused.status == 409 and "another payment" in reused.json["detail"]
    assert admin.credits() == before + 500


def test_a_hyp_id_an_operator_gave_to_another_payment_sends_its_payer_to_review(admin: Env, saved_card: str) -> None:
    # Given a customer who paid on Hyp's page (Id X) and whose callback is late
    page = buy(admin, key="late-payer")
    paid = pay(admin, page)
    # And an operator who completes a lost saved-card charge naming X by mistake (the wrong row in Hyp's portal)
    admin.sim.faults.add("soft", "hang", times=3, seconds=1.5)
    lost = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="lost-1").json["payment_id"]
    before = admin.credits()
    named = resolve(lost, {"action": "complete", "reason": "wrong row", "hypay_id": paid.id}, key="op-1")
    assert named.status == 200 and admin.credits() == before + 500
    # When the payer's genuine callback arrives
    answer = notify(paid.redirect_query)
    # Then the payer's payment goes to a human (it was left pending, then expired, with the money kept), nothing is
    # granted twice, and the journal's row and the other payment stay as they were
    assert answer.status == 200, answer.body
    assert admin.status(page["payment_id"]) == "needs_review"
    [[reason]] = admin.rows("SELECT review_reason FROM payments WHERE id = :p::uuid", p=page["payment_id"])
    assert paid.id in reason and lost in reason
    assert admin.credits() == before + 500 and admin.status(lost) == "completed"
    assert admin.rows("SELECT payment_id::text, decision FROM hypay_transactions WHERE hypay_id = :h", h=paid.id) == [
        [lost, "granted"]
    ]
    # And the queue lists it under a reason of its own, with what to do, filterable
    [item] = every_item("reason=transaction_of_another_payment")
    assert item["id"] == f"p:{page['payment_id']}"
    assert "refund the transaction through the payment" in item["next_step"]


def test_a_retry_of_a_charge_an_operator_failed_is_told_so_not_declined(admin: Env, saved_card: str) -> None:
    # Given a saved-card charge whose answer was lost, which an operator failed (no charge found in Hyp)
    admin.sim.faults.add("soft", "lost")
    first = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="failed-by-hand")
    assert first.status == 202, first.body
    pid = first.json["payment_id"]
    assert resolve(pid, {"action": "fail", "reason": "no charge in Hyp"}, key="fh-1").status == 200
    # When the web app retries with the same key after its stored answer expired (the "being confirmed" 202 is
    # replayed until then)
    admin.rows("DELETE FROM idempotency_keys WHERE key LIKE 'create_payment#%'")
    again = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="failed-by-hand")
    # Then it is told the payment was closed without a charge (a new key may buy), not that the card was declined,
    # and nothing is charged again
    assert again.status == 409 and "closed without a charge" in again.json["detail"], again.body
    assert admin.sim.calls.count("soft") == 1


def test_a_saved_card_charge_failed_by_mistake_can_still_be_completed(admin: Env, saved_card: str) -> None:
    # Given a saved-card charge Hyp made but whose answer was lost, which an operator failed (not found in Hyp)
    admin.sim.faults.add("soft", "lost")
    pid = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="lost-2").json["payment_id"]
    [charge] = [t for t in admin.sim.transactions.values() if t.order == pid]
    before = admin.credits()
    assert resolve(pid, {"action": "fail", "reason": "not seen in Hyp"}, key="f-1").status == 200
    assert admin.status(pid) == "failed"
    again = resolve(pid, {"action": "fail", "reason": "again"}, key="f-2")
    assert again.status == 409 and "failed already" in again.json["detail"]
    # When the operator finds the charge after all: naming it completes the payment (Hyp sends no callback for a
    # saved-card charge, so nothing else could), once; then it is refundable like any completed payment
    done = resolve(pid, {"action": "complete", "reason": "found in Hyp", "hypay_id": charge.id}, key="f-3")
    assert done.status == 200 and done.json["credits_granted"] == 500, done.body
    assert admin.credits() == before + 500 and admin.status(pid) == "completed"
    twice = resolve(pid, {"action": "complete", "reason": "again", "hypay_id": charge.id}, key="f-4")
    assert twice.status == 409 and admin.credits() == before + 500


@pytest.mark.parametrize("ccode", [4, 33], ids=["declined", "refused"])
def test_a_saved_card_charge_hyp_declined_cannot_be_completed(admin: Env, saved_card: str, ccode: int) -> None:
    # Given a saved-card charge Hyp answered with a decline or a refusal and no Id: closed by Hyp's own answer
    admin.sim.faults.add("soft", "ccode", ccode=ccode)
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key=f"declined-{ccode}")
    assert answer.status in (402, 502), answer.body
    pid, before = answer.json["payment_id"], admin.credits()
    assert admin.status(pid) == "failed"
    # When an operator completes it naming an Id (a typo, the wrong ticket)
    done = resolve(pid, {"action": "complete", "reason": "ticket 7", "hypay_id": "55555555"}, key="d-1")
    # Then it is refused, saying Hyp did not charge it, and nothing is granted or journaled
    assert done.status == 409 and f"CCode {ccode}" in done.json["detail"], done.body
    assert admin.status(pid) == "failed" and admin.credits() == before
    assert admin.rows("SELECT count(*) FROM hypay_transactions WHERE payment_id = :p::uuid", p=pid) == [[0]]


def test_resolve_refuses_what_makes_no_sense_with_a_409_that_says_why(admin: Env) -> None:
    paid = buy(admin, key="paid")
    assert notify(pay(admin, paid).redirect_query).status == 200
    pending = buy(admin, key="pending")["payment_id"]
    expired = buy(admin, key="expired")["payment_id"]
    admin.rows("UPDATE payments SET status = 'expired' WHERE id = :p::uuid", p=expired)
    complete = {"action": "complete", "reason": "r"}
    for payment, words in [
        (paid["payment_id"], "is completed"),
        (pending, "is pending"),
        (expired, "holds no Hyp transaction"),
    ]:
        answer = resolve(payment, complete, key=f"k-{payment}")
        assert answer.status == 409 and words in answer.json["detail"], (words, answer.json)
        assert answer.headers["content-type"] == "application/problem+json"
    fail = resolve(pending, {"action": "fail", "reason": "r"}, key="k-fail")
    assert fail.status == 409 and "is pending" in fail.json["detail"]
    # Malformed requests and unknown payments
    assert resolve(str(uuid.uuid4()), complete, key="k-x").status == 404
    assert resolve("not-a-uuid", complete, key="k-y").status == 404
    assert resolve(pending, complete).status == 400  # no Idempotency-Key
    for body in (
        {"action": "refund", "reason": "r"},
        {"action": "fail"},
        {"action": "fail", "reason": " "},
        {"action": "complete", "reason": "r", "hypay_id": "12a"},
        {"action": "complete", "reason": "r", "hypay_id": "000"},  # an all-zero Id names no transaction
        {"action": "fail", "reason": "r", "x": 1},
    ):
        assert resolve(pending, body, key="k-body").status == 400, body
    # Nothing was changed, nothing audited
    assert admin.rows("SELECT count(*) FROM admin_audit_log") == [[0]]
    assert admin.status(pending) == "pending" and admin.status(paid["payment_id"]) == "completed"


def test_a_hyp_id_that_paid_another_payment_is_refused(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    use_mode(monkeypatch, "hmac")
    paid = buy(admin, key="paid")
    transaction = pay(admin, paid)
    assert notify(transaction.redirect_query).status == 200
    payment = amount_mismatch(admin, "mismatch", "55500002")
    body = {"action": "complete", "reason": "r", "hypay_id": transaction.id}
    answer = resolve(payment, body, key="k-1")
    assert answer.status == 409 and "another payment" in answer.json["detail"]


# -- who may: the admin credentials -------------------------------------------------------------------


def test_missing_or_wrong_token_is_401_and_the_old_single_token_still_works_as_admin(
    admin: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment = buy(admin, key="p")["payment_id"]
    for token in (None, "nope", BOT + "x", ALICE[:-1]):
        assert queue(token=token).status == 401
        denied = resolve(payment, {"action": "fail", "reason": "r"}, key="k", token=token)
        assert denied.status == 401 and denied.headers["www-authenticate"] == "Bearer"
    # The earlier forms of the secret keep working, named "admin"
    for value in (ALICE, json.dumps({"token": ALICE})):
        monkeypatch.setenv("ADMIN_API_TOKEN", value)
        _reset()
        assert queue(token=ALICE).status == 200 and queue(token=BOT).status == 401
    # And the cleanup's admin route is audited with the name
    assert (
        invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers={"Authorization": f"Bearer {ALICE}"}).status
        == 200
    )
    [(who, action, _, request, _, after)] = audit_rows(admin)
    assert (who, action) == ("admin", "cleanup") and json.loads(after)["complete"] is True


def test_completing_a_charge_whose_amount_hyp_gave_unreadably_keeps_the_journals_amount_unknown(
    admin: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_money_edges import _answers_rewritten, _field
    from tests.support.payments import CVV, PRO, post

    # Given a saved-card charge Hyp approved with an amount we could not read: in review, its journal row's amount
    # unknown
    charged = _answers_rewritten(admin, monkeypatch, _field("Amount", "199%2C00"))
    before = admin.credits()
    payment = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="odd").json["payment_id"]
    [item] = [i for i in every_item() if i["id"] == f"p:{payment}"]
    [journaled] = item["hypay_transactions"]
    assert (journaled["hypay_id"], journaled["amount"], journaled["decision"]) == (charged[0], None, "review")
    assert "Hyp's answer is journaled below" in item["tried"][0] and "never came back" not in item["tried"][0]
    # When an operator, having looked the amount up at Hyp, completes it
    done = resolve(payment, {"action": "complete", "reason": "Hyp shows 199.00"}, key="c-1")
    assert done.status == 200, done.body
    # Then the credits are granted once, and the journal still says the amount is unknown (not the pack's price)
    assert admin.credits() == before + 500 and admin.status(payment) == "completed"
    assert admin.rows("SELECT decision, amount FROM hypay_transactions WHERE hypay_id = :i", i=charged[0]) == [
        ["granted", None]
    ]


def test_a_key_reused_after_its_record_expired_never_answers_an_action_that_did_not_happen(
    admin: Env, saved_card: str
) -> None:
    # Given a saved-card charge Hyp made whose answer was lost, failed by an operator (not found in Hyp yet), key K
    admin.sim.faults.add("soft", "lost")
    pid = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="reuse-1").json["payment_id"]
    [charge] = [t for t in admin.sim.transactions.values() if t.order == pid]
    before = admin.credits()
    assert resolve(pid, {"action": "fail", "reason": "not seen in Hyp"}, key="K").status == 200
    # And a day later the stored answer has expired (the cleanup purges it)
    admin.rows("DELETE FROM idempotency_keys WHERE key LIKE 'admin_resolve#%'")
    # When the operator, finding the charge in Hyp, completes it and (carelessly) sends the same key
    answer = resolve(pid, {"action": "complete", "reason": "found in Hyp", "hypay_id": charge.id}, key="K")
    audits = admin.rows("SELECT request->>'action' FROM admin_audit_log WHERE payment_id = :p::uuid", p=pid)
    # Then the key is refused for another request (422, as docs/operations.md says): never a 200 saying "complete"
    # for a payment left failed, with no credits and no audit row of it (the earlier resolution's row was replayed)
    assert answer.status == 422, (answer.status, answer.body)
    assert "another request" in answer.json["detail"]
    assert admin.status(pid) == "failed" and admin.credits() == before and audits == [["fail"]]
    # And with a new key the completion is done, once, and audited
    done = resolve(pid, {"action": "complete", "reason": "found in Hyp", "hypay_id": charge.id}, key="K2")
    assert done.status == 200, done.body
    assert admin.status(pid) == "completed" and admin.credits() == before + 500
    # And K's own request again, its record gone too, is K's first answer replayed: nothing is done again
    admin.rows("DELETE FROM idempotency_keys WHERE key LIKE 'admin_resolve#%'")
    again = resolve(pid, {"action": "fail", "reason": "not seen in Hyp"}, key="K")
    assert again.status == 200 and again.json["action"] == "fail" and again.json["status"] == "failed", again.body
    assert admin.status(pid) == "completed" and admin.credits() == before + 500

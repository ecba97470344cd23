"""Refunds through Hyp (zikoyAPI, CancelTrans), at the service level, with real Postgres and the Hypay simulator."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pg8000.native
import pytest

from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    Transaction,
)
from payments.adapters.hypay import HypayClient, HypayCredentials
from payments.adapters.refunds_store import RefundsStore
from payments.domain.money import Money
from payments.errors import GatewayNotAsked, IdempotencyKeyReused, OutcomeUnconfirmed, RequestInProgress
from payments.idempotency import PostgresPersistenceLayer
from tests.support.api import invoke
from tests.support.payments import CALLBACK, STARTER, Env, post
from tests.support.pg import database, with_user

TOMORROW = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Admin:
    """The service as the admin route will call it, logging in as a member of `payments_backend`."""

    def __init__(self, env: Env, login: str, *, url: str | None = None, later: dt.timedelta = TOMORROW) -> None:
        # Imported here: payments.observability reads the metrics namespace from the test's environment.
        from payments.services.refund import Refunds, RefundsDeps

        db_url = env.url if urlsplit(env.url).password else with_user(env.url, login)
        self.db = database(db_url)
        gateway = HypayClient(
            lambda: HypayCredentials(PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_PASSP),
            url=url or env.sim.url,
            timeout_seconds=0.5,
            budget_seconds=2,
        )
        # `later`: how long after the payment the refund is asked (TOMORROW: no longer cancellable -> zikoyAPI).
        deps = RefundsDeps(RefundsStore(self.db), gateway, clock=lambda: _now() + later, cancel_until_hour=24)
        self.service = Refunds(deps, PostgresPersistenceLayer(database=self.db))

    def refund(self, payment_id: str, key: str, amount: str | None = None, **kw: object) -> Any:
        return self.service(
            payment_id=uuid.UUID(payment_id),
            amount=Money.of(amount) if amount else None,
            reason=str(kw.pop("reason", "customer asked")),
            admin=str(kw.pop("admin", "alice")),
            idempotency_key=key,
            **kw,  # type: ignore[arg-type]
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@pytest.fixture
def admin(env: Env, backend_login: str):  # noqa: ANN201
    service = Admin(env, backend_login)
    yield service
    service.close()


def redirect(transaction: Transaction) -> None:
    """The customer's browser back from Hyp's page (the callback function verifies and settles it)."""
    answer = invoke(CALLBACK, "GET", f"/hypay/return?{transaction.redirect_query}", headers={"accept": "text/html"})
    assert answer.status == 302, answer.body


def paid(env: Env, key: str = "buy-1") -> tuple[str, Transaction]:
    """The demo user bought the Starter pack (49.90 ILS, 100 credits) on Hyp's page; the redirect completed it."""
    created = post({"credit_pack_id": STARTER}, key=key).json
    transaction = env.sim.pay(created["payment_url"])
    redirect(transaction)
    assert env.status(created["payment_id"]) == "completed"
    return created["payment_id"], transaction


def refunds(env: Env, pid: str) -> list[list]:
    return env.rows(
        "SELECT status, method, amount::text, ccode, credits_taken FROM refunds WHERE payment_id = :p::uuid"
        " ORDER BY created_at",
        p=pid,
    )


# -- approved ------------------------------------------------------------------------------------


def test_full_refund_of_an_older_payment_uses_zikoy_journals_takes_credits_and_audits(env: Env, admin: Admin) -> None:
    # Given a payment paid yesterday (no longer cancellable)
    pid, txn = paid(env)
    before = env.credits()
    # When the admin refunds it in full (no amount)
    answer = admin.refund(pid, "r-1", reason="duplicate purchase")
    # Then Hyp refunded 49.90 once by zikoyAPI, with its own refund Id
    assert answer.status == 201, answer.body
    body = answer.body
    assert body["method"] == "refund" and body["amount"] == "49.90" and body["status"] == "succeeded"
    assert body["credits_taken"] == 100 and body["credits_shortfall"] == 0 and body["remaining"] == "0.00"
    assert env.sim.calls.count("zikoyAPI") == 1 and env.sim.refunded[txn.id] == 4990
    assert env.credits() == before - 100
    # The journal holds Hyp's refund transaction; the ledger takes the credits back
    assert env.rows(
        "SELECT source, decision, amount::text, payment_id::text FROM hypay_transactions WHERE hypay_id = :h",
        h=body["hypay_refund_id"],
    ) == [["refund", "refunded", "49.90", pid]]
    assert env.rows(
        "SELECT amount, type FROM credit_transactions WHERE payment_id = :p::uuid ORDER BY created_at", p=pid
    ) == [[100, "purchase"], [-100, "refund"]]
    assert env.status(pid) == "completed"  # the payment keeps its status; its refunds say the rest
    # And an audit row: who, what, which key, before and after
    [(who, action, key, request, before_state, after_state)] = env.rows(
        "SELECT admin, action, idempotency_key, request, before_state, after_state FROM admin_audit_log"
        " WHERE payment_id = :p::uuid",
        p=pid,
    )
    assert (who, action, key) == ("alice", "refund", "r-1")
    assert request["reason"] == "duplicate purchase" and before_state["remaining"] == "49.90 ILS"
    assert after_state["refund_status"] == "succeeded" and after_state["credits_taken"] == 100
    # A retry with the same key answers the same, and Hyp is not asked again
    again = admin.refund(pid, "r-1", reason="duplicate purchase")
    assert again.replayed and again.status == 201 and again.body == body
    assert env.sim.calls.count("zikoyAPI") == 1


def test_same_day_full_refund_is_a_cancellation(env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hyp's (and the simulator's) cut-off is 22:00 Israel time: lifted, as the service's is, so that the test does
    # not depend on the hour it runs at.
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    pid, txn = paid(env)
    today = Admin(env, backend_login, later=dt.timedelta(0))
    try:
        answer = today.refund(pid, "c-1")
    finally:
        today.close()
    assert answer.status == 201 and answer.body["method"] == "cancel", answer.body
    assert env.sim.calls.count("CancelTrans") == 1 and "zikoyAPI" not in env.sim.calls
    assert txn.id in env.sim.cancelled and answer.body["credits_taken"] == 100
    # No new Hyp Id is documented for a cancellation: the original's journal row says it was cancelled
    [[detail]] = env.rows("SELECT detail FROM hypay_transactions WHERE hypay_id = :h", h=txn.id)
    assert "cancelled (CancelTrans)" in detail


@pytest.mark.parametrize("refusal", ["920: already transmitted", "901: this terminal may not cancel"])
def test_a_cancellation_hyp_refuses_refunds_once_instead(
    env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    # Given a same-day full refund whose CancelTrans Hyp refuses: the day's transmission went out early (920), or
    # the terminal has no cancel permission (901)
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    pid, txn = paid(env)
    if refusal.startswith("920"):
        env.sim.transmit(txn.id)
    else:
        env.sim.faults.add("CancelTrans", "ccode", ccode=901)
    today = Admin(env, backend_login, later=dt.timedelta(0))
    try:
        answer = today.refund(pid, "c-2")
    finally:
        today.close()
    # Then nothing moved by it, and the same attempt refunds by zikoyAPI, once (901: not a 503 until the next day)
    assert answer.status == 201 and answer.body["method"] == "refund", answer.body
    assert env.sim.calls.count("CancelTrans") == 1 and env.sim.calls.count("zikoyAPI") == 1
    assert env.sim.refund_count() == 1 and txn.id not in env.sim.cancelled  # one money movement
    assert refunds(env, pid) == [["succeeded", "refund", "49.90", 0, 100]]


def test_partial_refunds_take_credits_in_proportion_and_never_more_than_paid(env: Env, admin: Admin) -> None:
    pid, txn = paid(env)
    first = admin.refund(pid, "p-1", "20.00")
    second = admin.refund(pid, "p-2", "29.90")
    assert first.status == second.status == 201, (first.body, second.body)
    # 100 credits for 49.90: 20.00 stands for 40 of them; the rest (exactly the remaining 60) with the last
    assert (first.body["credits_taken"], second.body["credits_taken"]) == (40, 60)
    assert second.body["refunded"] == "49.90" and second.body["remaining"] == "0.00"
    # Then nothing remains: 422 before Hyp is called
    third = admin.refund(pid, "p-3", "0.01")
    assert third.status == 422 and third.body["remaining"] == "0.00", third.body
    assert env.sim.calls.count("zikoyAPI") == 2 and env.sim.refunded[txn.id] == 4990


def test_credits_already_spent_are_taken_back_only_down_to_zero(env: Env, admin: Admin) -> None:
    pid, _ = paid(env)
    env.rows("UPDATE profiles SET credits = 30 WHERE id = (SELECT user_id FROM payments WHERE id = :p::uuid)", p=pid)
    answer = admin.refund(pid, "s-1")
    assert answer.status == 201, answer.body
    assert answer.body["credits_taken"] == 30 and answer.body["credits_shortfall"] == 70
    assert "70 of 100 credits not taken back" in answer.body["detail"]
    assert env.credits() == 0  # never negative
    [[after]] = env.rows("SELECT after_state FROM admin_audit_log WHERE payment_id = :p::uuid", p=pid)
    assert after["credits_shortfall"] == 70 and after["balance"] == 0
    # The replay shows the shortfall too
    assert admin.refund(pid, "s-1").body["credits_shortfall"] == 70


def test_a_second_charge_is_refunded_by_its_own_id_and_takes_no_credits(env: Env, admin: Admin) -> None:
    # Given the same payment page paid twice: the second charge is journaled for review
    pid, _, second = _paid_twice(env)
    before = env.credits()
    answer = admin.refund(pid, "sc-1", hypay_id=second.id, reason="paid twice")
    assert answer.status == 201 and answer.body["hypay_transaction_id"] == second.id, answer.body
    assert answer.body["credits_taken"] == 0 and env.credits() == before
    assert env.sim.refunded == {second.id: 4990}
    # A Hyp Id that is not a paying transaction of this payment is refused before Hyp
    assert admin.refund(pid, "sc-2", hypay_id="123").status == 409


# -- refused -------------------------------------------------------------------------------------


def test_over_amount_is_422_before_hyp_and_writes_nothing(env: Env, admin: Admin) -> None:
    pid, _ = paid(env)
    answer = admin.refund(pid, "o-1", "50.00")
    assert answer.status == 422 and "more than what remains" in answer.body["detail"], answer.body
    assert answer.body["remaining"] == "49.90"
    assert "zikoyAPI" not in env.sim.calls and refunds(env, pid) == []
    # Not stored: the same key with a valid amount then refunds
    assert admin.refund(pid, "o-2", "49.90").status == 201


def test_an_all_zero_hyp_id_names_no_transaction_to_refund(env: Env, admin: Admin) -> None:
    from payments.errors import InvalidRequest

    pid, _ = paid(env)
    with pytest.raises(InvalidRequest, match="not all zeros"):
        admin.refund(pid, "z-1", "10.00", hypay_id="0000")
    assert refunds(env, pid) == [] and "zikoyAPI" not in env.sim.calls


def test_hyp_refusal_is_typed_in_words_final_and_never_asked_again(env: Env, admin: Admin) -> None:
    pid, txn = paid(env)
    env.sim.faults.add("zikoyAPI", "ccode", ccode=33)
    answer = admin.refund(pid, "h-1", "10.00")
    assert answer.status == 502, answer.body
    assert answer.body["ccode"] == 33 and answer.body["refund_status"] == "refused"
    assert "more than what remains of the original transaction" in answer.body["detail"]
    assert refunds(env, pid) == [["refused", "refund", "10.00", 33, 0]]
    again = admin.refund(pid, "h-1", "10.00")
    assert again.replayed and again.body == answer.body and env.sim.calls.count("zikoyAPI") == 1
    # Nothing moved: the whole amount still remains
    assert admin.refund(pid, "h-2").body["amount"] == "49.90"
    assert env.sim.refunded[txn.id] == 4990


def test_gateway_outage_changes_nothing_and_the_same_key_then_refunds(
    env: Env, admin: Admin, backend_login: str
) -> None:
    pid, txn = paid(env)
    down = Admin(env, backend_login, url="http://127.0.0.1:9/p/")  # nothing listens: the connection is refused
    try:
        with pytest.raises(GatewayNotAsked):
            down.refund(pid, "g-1")
    finally:
        down.close()
    assert env.sim.refund_count() == 0
    assert env.rows("SELECT status, ccode FROM refunds WHERE payment_id = :p::uuid", p=pid) == [["refused", None]]
    answer = admin.refund(pid, "g-1")
    assert answer.status == 201 and env.sim.refunded[txn.id] == 4990, answer.body
    assert env.rows("SELECT count(*) FROM refunds") == [[1]]  # the same row, taken up again


# -- unknown -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["lost", "drop", "hang", "moved"])
def test_lost_answer_or_timeout_is_unknown_and_never_refunds_twice(
    env: Env, admin: Admin, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    pid, txn = paid(env)
    # lost: Hyp refunded, then an error page; drop: refunded, connection closed; hang: past our timeout; moved:
    # refunded, then a redirect to an address that refuses connections (followed, it looked like nothing was sent)
    env.sim.faults.add("zikoyAPI", fault, seconds=1.5)
    answer = admin.refund(pid, "u-1")
    assert answer.status == 202 and answer.body["status"] == "unknown", answer.body
    assert "do not retry with a new Idempotency-Key" in answer.body["detail"]
    assert refunds(env, pid)[0][0] == "unknown"
    assert "refund outcome unknown" in caplog.text
    # Retried with the same key: the stored answer; with a new key: 422 (the unknown refund counts), Hyp not asked
    assert admin.refund(pid, "u-1").replayed
    assert admin.refund(pid, "u-2").status == 422
    assert env.sim.calls.count("zikoyAPI") == 1
    assert env.sim.refunded.get(txn.id, 0) == (0 if fault == "hang" else 4990)
    assert env.rows("SELECT count(*) FROM admin_audit_log WHERE payment_id = :p::uuid", p=pid) == [[1]]


def test_answer_not_stored_keeps_the_key_in_progress_then_unknown(
    env: Env, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    # Given Hyp refunds but storing its answer fails
    pid, txn = paid(env)
    env.rows("""
        CREATE FUNCTION refuse_refund() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'storage failure' USING ERRCODE = '53100'; END $$""")
    env.rows(
        "CREATE TRIGGER refuse_refund BEFORE INSERT ON hypay_transactions FOR EACH ROW"
        " WHEN (NEW.source = 'refund') EXECUTE FUNCTION refuse_refund()"
    )
    with pytest.raises(OutcomeUnconfirmed) as unconfirmed:
        admin.refund(pid, "k-1")
    # Then the answer says what happened: Hyp answered, its answer was not stored (not "lost")
    assert "Hyp answered, but its answer could not be stored" in unconfirmed.value.message
    # And the error line names Hyp's refund Id (what a human would otherwise search Hyp's portal for)
    [lost] = [r for r in caplog.records if r.getMessage() == "refund answered but not stored"]
    [refund_id] = [r.id for r in env.sim.reversals if r.original_id == txn.id and r.kind == "refund"]
    assert getattr(lost, "hypay_refund_id", None) == refund_id
    # And the key stays locked: a retry is "in progress", never run
    assert env.rows("SELECT count(*) FROM idempotency_keys WHERE status = 'pending' AND key LIKE 'refund%'") == [[1]]
    with pytest.raises(RequestInProgress):
        admin.refund(pid, "k-1")
    # When the holder is known dead, the retry finds the attempted row: unknown, never a second call
    env.rows("DROP TRIGGER refuse_refund ON hypay_transactions")
    env.rows("UPDATE idempotency_keys SET in_progress_expiry_timestamp = 1 WHERE status = 'pending'")
    retried = admin.refund(pid, "k-1")
    assert retried.status == 202 and retried.body["status"] == "unknown", retried.body
    assert env.sim.calls.count("zikoyAPI") == 1


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read", "serializable"])
def test_concurrent_refunds_never_exceed_what_was_paid(
    env: Env, backend_login: str, database_url: str, isolation: str
) -> None:
    # Whatever the database's default isolation: under REPEATABLE READ a refund's snapshot was taken before it waited
    # for the payment's lock, so it missed the attempts committed meanwhile and every refund was sent to Hyp.
    name = urlsplit(database_url).path.lstrip("/")
    env.rows(f"ALTER DATABASE {pg8000.native.identifier(name)} SET default_transaction_isolation = '{isolation}'")
    pid, txn = paid(env)
    answers: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def one(n: int) -> None:
        service = Admin(env, backend_login)
        try:
            start.wait()
            answer = service.refund(pid, f"t-{n}", "10.00")
        finally:
            service.close()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] * 4 + [422] * 4, [a.body for a in answers]
    assert env.sim.refunded[txn.id] == 4000 and env.sim.calls.count("zikoyAPI") == 4
    [[total]] = env.rows("SELECT sum(amount) FROM refunds WHERE status = 'succeeded'")
    assert Decimal(total) == Decimal("40.00")


def test_a_lost_answer_to_the_attempts_commit_still_asks_hyp_once(
    env: Env, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.faults import Injector, Point
    from tests.support.pg import connect

    injector = Injector(connect(env.url))
    injector.install(monkeypatch)
    # Given a clean refund's steps (where the attempt row is inserted and committed)
    clean_pid, _ = paid(env, key="buy-clean")
    with injector.invocation():
        assert admin.refund(clean_pid, "r-clean").status == 201
    trace = list(injector.trace)
    inserted = next(i for i, p in enumerate(trace) if p.label.startswith("insert refunds"))
    commit = next(i for i, p in enumerate(trace) if i > inserted and p == Point("db", "COMMIT"))
    # When the attempt's COMMIT runs but its answer is lost (the transaction is re-run on a new connection)
    pid, txn = paid(env, key="buy-2")
    with injector.invocation(at=commit, fault="drop_after"):
        answer = admin.refund(pid, "r-1")
    assert injector.fired == Point("db", "COMMIT") and not injector.problems
    # Then the re-run finds its own attempt (Hyp not asked yet) and asks Hyp, once: refunded, nothing in review
    assert answer.status == 201 and answer.body["status"] == "succeeded", answer.body
    assert refunds(env, pid)[0][0] == "succeeded"
    assert (
        env.sim.refunded.get(txn.id) == 4990
        and env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans") == 2
    )


def _refund_row(env: Env, pid: str, hypay_id: str, *, amount: str, status: str) -> str:
    """A refund row as an earlier invocation left it (by zikoyAPI, in ILS); its id."""
    [[rid]] = env.rows(
        "INSERT INTO refunds (payment_id, original_hypay_id, method, amount, currency, status, reason,"
        " idempotency_key, admin) VALUES (:p::uuid, :h, 'refund', :a::numeric, 'ILS', :s, 'earlier', :k, 'alice')"
        " RETURNING id::text",
        p=pid,
        h=hypay_id,
        a=amount,
        s=status,
        k=f"earlier-{status}",
    )
    return str(rid)


def test_two_writers_of_one_refund_outcome_never_collide(env: Env, admin: Admin) -> None:
    # Given an attempted refund, and another writer holding its payment (an invocation storing Hyp's answer after
    # the first one's in-progress expiry, say)
    import time

    from payments.domain.refund import RefundStatus
    from tests.support.pg import connect

    pid, txn = paid(env)
    rid = _refund_row(env, pid, txn.id, amount="10", status="attempted")
    holder = connect(env.url)
    holder.run("BEGIN")
    holder.run("SELECT 1 FROM payments WHERE id = :p::uuid FOR UPDATE", p=pid)
    result: dict[str, Any] = {}

    def store_unknown() -> None:
        try:
            result["row"] = RefundsStore(admin.db).not_moved_or_unknown(
                uuid.UUID(rid), status=RefundStatus.UNKNOWN, ccode=None, message="answer lost", audit=None
            )
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            result["error"] = exc

    writer = threading.Thread(target=store_unknown)
    writer.start()
    # When this one has read the refund and waits for the payment, the other stores its outcome and commits
    deadline = time.monotonic() + 10
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        " AND position('FOR UPDATE' IN query) > 0 AND position('public.payments' IN query) > 0"
    )
    while not env.rows(waiting)[0][0]:
        assert time.monotonic() < deadline, "the writer never waited for the payment"
        time.sleep(0.02)
    holder.run("UPDATE refunds SET status = 'refused', ccode = 33 WHERE id = :r::uuid", r=rid)
    holder.run("COMMIT")
    holder.close()
    writer.join(timeout=10)
    # Then the second writer answers the outcome stored first, and writes nothing over it (no error, no 500)
    assert "error" not in result, result
    assert result["row"].status == RefundStatus.REFUSED
    assert env.rows("SELECT status, ccode FROM refunds WHERE id = :r::uuid", r=rid) == [["refused", 33]]


def test_hyps_success_answer_settles_a_refund_another_writer_stored_as_unknown(env: Env, admin: Admin) -> None:
    # Given an attempted refund that another invocation stored as unknown (its answer from Hyp was lost)
    from payments.domain.refund import RefundStatus

    pid, txn = paid(env)
    before = env.credits()
    rid = _refund_row(env, pid, txn.id, amount="49.90", status="unknown")
    # When the invocation holding Hyp's success answer stores it
    finished = RefundsStore(admin.db).succeeded(
        uuid.UUID(rid), hypay_refund_id="77777", approval_code="0012345", audit=lambda tx, before, after: None
    )
    # Then the refund is succeeded with Hyp's refund Id and the credits are taken back, once
    assert finished.row.status == RefundStatus.SUCCEEDED
    assert env.rows("SELECT status, hypay_refund_id, credits_taken FROM refunds WHERE id = :r::uuid", r=rid) == [
        ["succeeded", "77777", 100]
    ]
    assert env.credits() == before - 100


def test_a_refunds_own_hyp_id_arriving_as_a_charge_settles_nothing(env: Env, admin: Admin) -> None:
    # Given a refunded payment: the journal holds the refund's own Hyp transaction (decision 'refunded')
    from payments.adapters.journal import HypTransaction, Source
    from payments.services.settle import settle

    pid, txn = paid(env)
    assert admin.refund(pid, "r-own").status == 201
    [[refund_id]] = env.rows("SELECT hypay_refund_id FROM refunds WHERE payment_id = :p::uuid", p=pid)
    before = env.credits()
    journal = env.rows("SELECT hypay_id, decision, deliveries FROM hypay_transactions ORDER BY hypay_id")
    # When that Id arrives as an approved charge of the same payment (a forged or garbled callback)
    charge = HypTransaction(
        hypay_id=refund_id,
        order_ref=pid,
        payment_id=uuid.UUID(pid),
        ccode=0,
        amount=Money.of("49.90"),
        source=Source.NOTIFY,
        verified=True,
    )
    settled = settle(admin.db, charge)
    # Then it is a duplicate that changes nothing (it raised ValueError: a 500 on every delivery)
    assert str(settled.result) == "duplicate" and env.credits() == before
    after = env.rows("SELECT hypay_id, decision FROM hypay_transactions ORDER BY hypay_id")
    assert after == [[h, d] for h, d, _ in journal]


@pytest.mark.parametrize(
    ("action", "ccode"),
    [("zikoyAPI", 901), ("zikoyAPI", 902), ("CancelTrans", 902), ("zikoyAPI", 400), ("zikoyAPI", 401),
     ("CancelTrans", 400)],
)  # fmt: skip
def test_hyp_refusing_our_own_request_moves_nothing_and_the_same_key_then_refunds(
    env: Env, admin: Admin, backend_login: str, monkeypatch: pytest.MonkeyPatch, action: str, ccode: int
) -> None:
    from payments.errors import GatewayAuthenticationError

    # Given Hyp refuses our terminal's permission (901) or credentials (902), or finds our request invalid (400-402):
    # ours
    pid, txn = paid(env)
    if action == "CancelTrans":  # the same day: a cancellation (the cut-off lifted, as in the test above)
        monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
        admin = Admin(env, backend_login, later=dt.timedelta(0))
    env.sim.faults.add(action, "ccode", ccode=ccode)
    with pytest.raises(GatewayAuthenticationError):
        admin.refund(pid, "own-1")
    # Then nothing moved and nothing is final: the attempt is released, no credits taken
    assert env.sim.refund_count() == 0
    assert env.rows("SELECT status, credits_taken FROM refunds WHERE payment_id = :p::uuid", p=pid) == [["refused", 0]]
    # And once fixed, the same key refunds, once
    env.sim.faults.clear()
    answer = admin.refund(pid, "own-1")
    assert answer.status == 201, answer.body
    assert env.sim.refunded.get(txn.id) == 4990 or txn.id in env.sim.cancelled
    assert env.rows("SELECT count(*) FROM refunds") == [[1]]
    if action == "CancelTrans":
        admin.close()


# -- a key sent again after its idempotency record is gone ---------------------------------------


def _records_purged(env: Env) -> None:
    """A week on: the refunds' idempotency records expired and the cleanup purged them (their rows stay)."""
    env.rows("DELETE FROM idempotency_keys WHERE key LIKE 'refund#%'")


def test_a_key_reused_for_another_refund_after_its_record_is_gone_is_refused_not_answered_with_the_first(
    env: Env, admin: Admin
) -> None:
    # Given 20.00 of a 49.90 payment refunded with key K, and K's idempotency record purged a week later
    pid, txn = paid(env)
    first = admin.refund(pid, "K", "20.00", reason="partial: one video failed")
    assert first.status == 201 and first.body["amount"] == "20.00", first.body
    _records_purged(env)
    # When an operator refunds another 10.00, for another reason, with the same key
    with pytest.raises(IdempotencyKeyReused):
        admin.refund(pid, "K", "10.00", reason="goodwill: support delay")
    # Then it is refused as the key reused (422 on the route), never told "succeeded" of the first refund; nothing moved
    assert env.sim.refunded[txn.id] == 2000
    assert [r[0] for r in refunds(env, pid)] == ["succeeded"]
    # And the same request as the first, sent again, still gets the first's outcome, Hyp not asked again
    again = admin.refund(pid, "K", "20.00", reason="partial: one video failed")
    assert again.status == 201 and again.body["amount"] == "20.00" and again.body["status"] == "succeeded"
    assert env.sim.refunded[txn.id] == 2000
    # And with a new key the 10.00 is refunded
    assert admin.refund(pid, "K2", "10.00", reason="goodwill: support delay").status == 201
    assert env.sim.refunded[txn.id] == 3000


def test_a_key_reused_for_another_transaction_after_its_record_is_gone_is_refused(env: Env, admin: Admin) -> None:
    # Given a payment page paid twice; the first charge partly refunded with key K, its record purged
    pid, _, second = _paid_twice(env)
    assert admin.refund(pid, "K", "10.00", reason="paid twice").status == 201
    _records_purged(env)
    # When the second charge is refunded with the same key (same amount and reason)
    with pytest.raises(IdempotencyKeyReused):
        admin.refund(pid, "K", "10.00", hypay_id=second.id, reason="paid twice")
    # Then it is refused: the second charge was not refunded, and no answer says it was
    assert second.id not in env.sim.refunded


def test_a_refund_row_from_before_its_request_was_kept_is_answered_as_before(env: Env, admin: Admin) -> None:
    # Given a refund made before 017 (its row has no request) and its record purged
    pid, txn = paid(env)
    assert admin.refund(pid, "K", "20.00").status == 201
    env.rows("UPDATE refunds SET request = NULL WHERE payment_id = :p::uuid", p=pid)
    _records_purged(env)
    # When its key is sent again, with another amount: nothing tells the requests apart; the row's outcome answers
    answer = admin.refund(pid, "K", "10.00")
    assert answer.status == 201 and answer.body["amount"] == "20.00"
    assert env.sim.refunded[txn.id] == 2000


def _paid_twice(env: Env) -> tuple[str, Transaction, Transaction]:
    """A payment page paid twice: the payment, its first charge (its own) and its second (journaled for review)."""
    created = post({"credit_pack_id": STARTER}, key="twice").json
    first = env.sim.pay(created["payment_url"])
    redirect(first)
    second = env.sim.pay(created["payment_url"])
    redirect(second)
    return created["payment_id"], first, second


def _never_sent(env: Env, backend_login: str, pid: str, **kw: object) -> None:
    """A refund of 10.00 with key K that was never sent (Hyp unreachable): released, its idempotency record deleted."""
    with Admin(env, backend_login, url="http://127.0.0.1:9/p/") as down, pytest.raises(GatewayNotAsked):
        down.refund(pid, "K", "10.00", reason="paid twice", **kw)


@pytest.mark.parametrize("kept", [True, False], ids=["request kept", "row from before 017"])
def test_a_refund_never_sent_is_taken_up_again_only_for_the_request_it_was_made_for(
    env: Env, admin: Admin, backend_login: str, kept: bool
) -> None:
    # Given a payment page paid twice, and a refund of the first charge with key K never sent (Hyp unreachable):
    # released, its idempotency record deleted with it
    pid, first, second = _paid_twice(env)
    _never_sent(env, backend_login, pid)
    assert [r[0] for r in refunds(env, pid)] == ["refused"]
    if not kept:
        env.rows("UPDATE refunds SET request = NULL WHERE payment_id = :p::uuid", p=pid)
    # When K is sent again naming the second charge / Then it is refused as the key reused: the row taken up again
    # would have refunded the first charge, which this request did not name
    with pytest.raises(IdempotencyKeyReused):
        admin.refund(pid, "K", "10.00", hypay_id=second.id, reason="paid twice")
    assert env.sim.refunded == {}
    # And K sent again for the request it was made for refunds the first charge, once
    answer = admin.refund(pid, "K", "10.00", reason="paid twice")
    assert answer.status == 201 and answer.body["hypay_transaction_id"] == first.id, answer.body
    assert env.sim.refunded == {first.id: 1000}


def test_a_refund_never_sent_from_before_017_is_not_taken_up_for_the_payments_own_transaction(
    env: Env, admin: Admin, backend_login: str
) -> None:
    # Given a payment page paid twice, and a refund of the SECOND charge with key K never sent (Hyp unreachable),
    # written before 017 (its row keeps no request)
    pid, _, second = _paid_twice(env)
    _never_sent(env, backend_login, pid, hypay_id=second.id)
    env.rows("UPDATE refunds SET request = NULL WHERE payment_id = :p::uuid", p=pid)
    # When K is sent again naming no transaction (the payment's own: the first charge) / Then it is refused: the row
    # taken up again would have refunded the second charge, which this request did not name
    with pytest.raises(IdempotencyKeyReused):
        admin.refund(pid, "K", "10.00", reason="paid twice")
    assert env.sim.refunded == {}
    # And K sent again naming the second charge refunds it, once
    answer = admin.refund(pid, "K", "10.00", hypay_id=second.id, reason="paid twice")
    assert answer.status == 201 and answer.body["hypay_transaction_id"] == second.id, answer.body
    assert env.sim.refunded == {second.id: 1000}

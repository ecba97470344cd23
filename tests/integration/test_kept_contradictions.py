"""What a verified delivery says against the journal reaches the refund's choice of method, whenever it lands.

A verified redirect the database did not settle (kept instead) still counts its contradiction on the journal's row; a
contradiction journaled after a same-day cancellation was planned switches it to a zikoyAPI refund before it is sent
(CancelTrans would send back Hyp's whole charge, whatever the refund's row says); and a kept redirect verified on its
Sign alone journals no currency its Sign does not cover."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from payments.adapters.db import QueryError
from payments.services import handle_callback
from payments.services.handle_callback import HandleCallback
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import browser, buy, forge, location, pay
from tests.integration.test_refunds import Admin, paid
from tests.support.faults import Killed
from tests.support.payments import PENDING_PAGE, Env


def overcharged(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any, list[tuple[str, str]]]:
    """A payment of 49.90 granted on Hyp's answer (journal: 49.90), whose transaction Hyp's own record says was 99.80;
    and a verified (signed, HMAC mode) redirect of it saying so."""
    pid, txn = paid(env)
    env.sim.transactions[txn.id].amount = "99.80"
    use_mode(monkeypatch, "hmac")
    return pid, txn, forge([(k, txn.id if k == "Id" else v) for k, v in unpaid_claim(pid, amount="99.80")])


def kept_not_settled(env: Env, monkeypatch: pytest.MonkeyPatch, redirect: Any) -> None:
    """The redirect meets a lock wait once (the web app holding the payment): not settled, kept."""
    real = handle_callback.settle
    calls: list[Any] = []

    def lock_wait_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise QueryError("canceling statement due to lock timeout", "55P03")
        return real(*args, **kwargs)

    monkeypatch.setattr(handle_callback, "settle", lock_wait_once)
    assert location(browser(redirect))[0] == PENDING_PAGE


def test_a_kept_contradicting_redirect_is_a_contradiction(
    env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a payment Hyp charged more for than it decided, and a verified redirect saying so, kept not settled
    pid, txn, again = overcharged(env, monkeypatch)
    kept_not_settled(env, monkeypatch, again)
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE hypay_id = :t", t=txn.id) == [[1]]
    # Then the journal's row says a verified delivery contradicted it (what the alarm, the queue and the refund read)
    assert env.rows("SELECT amount::text, contradictions FROM hypay_transactions WHERE hypay_id = :t", t=txn.id) == [
        ["49.90", 1]
    ]


def test_a_same_day_refund_after_a_kept_contradicting_redirect_never_cancels_more_than_its_row(
    env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, txn, again = overcharged(env, monkeypatch)
    kept_not_settled(env, monkeypatch, again)
    # When the operator refunds what the journal says was paid, the same day
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    with Admin(env, backend_login, later=dt.timedelta(0)) as admin:
        answer = admin.refund(pid, "refund-1", amount="49.90", reason="Hyp charged 99.80 for 49.90")
    assert answer.status == 201, answer.body
    # Then Hyp sent back 49.90 (what the refund's row says), not its whole 99.80 charge
    rows = env.rows("SELECT method, amount::text FROM refunds WHERE payment_id = :p::uuid", p=pid)
    assert txn.id not in env.sim.cancelled and env.sim.refunded.get(txn.id) == 4990, rows
    assert rows == [["refund", "49.90"]]


def test_a_contradiction_journaled_after_the_refund_was_planned_is_refunded_not_cancelled_whole(
    env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner reads `contradicted` when the attempt is recorded; Hyp's verified delivery saying 99.80 lands
    (notify, a reload) after that commit, before CancelTrans is sent: it is read again right before the call."""
    from payments.services.refund import Refunds
    from tests.integration.test_hypay_callback import notify

    # Given a payment Hyp charged more for than it decided, and a verified notify saying so still to come
    pid, txn, again = overcharged(env, monkeypatch)
    real_reverse = Refunds._reverse

    def contradiction_lands_first(self: Refunds, row: Any) -> Any:
        assert row.method == "cancel"  # planned before the contradiction: a same-day cancellation
        assert notify(again).status == 200  # Hyp's notify of the same transaction, saying 99.80: journaled
        assert env.rows("SELECT contradictions FROM hypay_transactions WHERE hypay_id = :t", t=txn.id) == [[1]]
        return real_reverse(self, row)

    monkeypatch.setattr(Refunds, "_reverse", contradiction_lands_first)
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    # When the operator refunds the journal's amount the same day, the contradiction landing after it was planned
    with Admin(env, backend_login, later=dt.timedelta(0)) as admin:
        answer = admin.refund(pid, "refund-1", amount="49.90", reason="customer asked")
    # Then Hyp sent back 49.90 by zikoyAPI, the switch recorded on the row, never its whole charge by CancelTrans
    rows = env.rows("SELECT method, amount::text, status FROM refunds WHERE payment_id = :p::uuid", p=pid)
    assert answer.status == 201, answer.body
    assert txn.id not in env.sim.cancelled and env.sim.refunded.get(txn.id) == 4990, rows
    assert rows == [["refund", "49.90", "succeeded"]]
    # And the audit says how it went out (its request, what was planned)
    [(request, after)] = env.rows(
        "SELECT request, after_state FROM admin_audit_log WHERE payment_id = :p::uuid AND action = 'refund'", p=pid
    )
    assert (request["method"], after["method"]) == ("cancel", "refund")


def _killed_mid_work(self: HandleCallback, *args: Any, **kwargs: Any) -> Any:
    raise Killed()


def test_a_kept_redirect_does_not_journal_an_unsigned_coin(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key=str(uuid.uuid4()))
    transaction = pay(env, payment)
    with monkeypatch.context() as m:
        m.setattr(HandleCallback, "_settle", _killed_mid_work)
        with pytest.raises(Killed):
            browser(transaction.redirect_query)
    # The link's holder reloads with Coin edited (not signed: its Sign still holds)
    edited = transaction.redirect_query.replace("Coin=1", "Coin=2")
    assert edited != transaction.redirect_query
    assert location(browser(edited))[0] == PENDING_PAGE
    rows = env.rows("SELECT decision, verified, currency FROM hypay_transactions")
    assert rows == [["unverified", False, "ILS"]] or rows == [["unverified", False, None]], rows


@pytest.mark.parametrize("check", ["unanswered", "committed, its answer lost"])
def test_a_cancellation_not_checked_before_the_call_is_not_sent_and_a_retry_refunds_the_row(
    env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    from payments.adapters.refunds_store import RefundsStore
    from payments.errors import DatabaseUnavailable, GatewayNotAsked
    from payments.services.refund import Refunds
    from tests.integration.test_hypay_callback import notify

    # Given a same-day refund planned as a cancellation, a verified delivery contradicting it landing after, and the
    # check right before CancelTrans unanswered (the database out of reach; or its switch committed, its answer lost)
    pid, txn, again = overcharged(env, monkeypatch)
    real_reverse, real_check = Refunds._reverse, RefundsStore.method_to_send
    checks: list[Any] = []

    def contradiction_lands_first(self: Refunds, row: Any) -> Any:
        if not checks:
            assert notify(again).status == 200
        return real_reverse(self, row)

    def check_once_unanswered(self: RefundsStore, *args: Any, **kwargs: Any) -> Any:
        checks.append(1)
        if len(checks) > 1:
            return real_check(self, *args, **kwargs)
        if check != "unanswered":
            real_check(self, *args, **kwargs)
        raise DatabaseUnavailable("the database connection broke")

    monkeypatch.setattr(Refunds, "_reverse", contradiction_lands_first)
    monkeypatch.setattr(RefundsStore, "method_to_send", check_once_unanswered)
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    with Admin(env, backend_login, later=dt.timedelta(0)) as admin:
        # When it is asked: then "not yet" (the route's 503), with nothing sent to Hyp and the row released
        with pytest.raises(GatewayNotAsked):
            admin.refund(pid, "refund-1", amount="49.90")
        assert (txn.id in env.sim.cancelled, env.sim.refunded.get(txn.id)) == (False, None)
        assert env.rows("SELECT status, ccode FROM refunds WHERE payment_id = :p::uuid", p=pid) == [["refused", None]]
        # And asked again with its key: the same row taken up again and planned anew, refunded by zikoyAPI once
        answer = admin.refund(pid, "refund-1", amount="49.90")
    assert answer.status == 201, answer.body
    assert txn.id not in env.sim.cancelled and env.sim.refunded.get(txn.id) == 4990
    rows = env.rows("SELECT method, amount::text, status FROM refunds WHERE payment_id = :p::uuid", p=pid)
    assert rows == [["refund", "49.90", "succeeded"]]

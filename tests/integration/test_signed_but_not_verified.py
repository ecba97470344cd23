"""A paid callback whose Sign is right, which Hyp's VERIFY does not confirm: kept for a human, never marked forged.

In `both` mode (the default) the Sign is checked first (an HMAC with our terminal's KEY: only Hyp, or someone holding
the KEY, makes it) and then VERIFY. A callback whose Sign is right reports a transaction Hyp charged. When VERIFY
does not confirm it, it used to be dropped: nothing written, and a copy kept earlier marked forged.
- VERIFY refusing our request (Hyp's validation codes 400-402) says nothing of the callback: "not yet" (503, kept).
- VERIFY saying "not genuine" (an unsigned field altered by the redirect's holder, or a terminal setting): refused as
  before (403: the holder's edit is not processed), and the paid transaction kept for a human, never marked forged.
"""

from __future__ import annotations

import pytest

from tests.integration.test_hypay_callback import browser, buy, location, notify, pay
from tests.support.payments import Env


def _kept(env: Env, hypay_id: str) -> tuple[list[list], list[list]]:
    return (
        env.rows("SELECT decision, verified FROM hypay_transactions WHERE hypay_id = :t", t=hypay_id),
        env.rows("SELECT found_forged_at IS NULL FROM hypay_unverified_callbacks WHERE hypay_id = :t", t=hypay_id),
    )


@pytest.mark.parametrize(("ccode", "answered"), [(402, 503), (902, 403)])
def test_a_signed_paid_notify_verify_refuses_is_kept(env: Env, ccode: int, answered: int) -> None:
    # Given a paid transaction, and VERIFY answering CCode `ccode` for it
    payment = buy(env)
    paid = pay(env, payment)
    env.sim.faults.add("VERIFY", "ccode", ccode=ccode, times=10)
    # When its notify arrives
    answer = notify(paid.redirect_query)
    # Then it is "not yet" (our request refused) or refused (not genuine), and kept either way, not marked forged; the
    # payment waits for it
    assert answer.status == answered, answer.body
    assert _kept(env, paid.id) == ([["unverified", False]], [[True]])
    assert env.status(payment["payment_id"]) == "pending"
    # And once VERIFY confirms it, its next delivery completes the payment
    env.sim.faults.clear()
    assert notify(paid.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed"


def test_a_signed_paid_redirect_verify_refuses_is_kept(env: Env) -> None:
    payment = buy(env)
    paid = pay(env, payment)
    env.sim.faults.add("VERIFY", "ccode", ccode=902, times=10)
    page, _ = location(browser(paid.redirect_query))
    assert page == "https://app.example.test/payments/failure"
    assert _kept(env, paid.id) == ([["unverified", False]], [[True]])


def test_a_kept_paid_callback_is_not_marked_forged_when_verify_refuses_it_later(env: Env) -> None:
    # Given a paid notify kept while VERIFY could not be reached
    payment = buy(env)
    paid = pay(env, payment)
    env.sim.faults.add("VERIFY", "http500", times=4)
    assert notify(paid.redirect_query).status == 503
    env.sim.faults.clear()
    # When VERIFY then says it is not genuine (its Sign still right)
    env.sim.faults.add("VERIFY", "ccode", ccode=902, times=10)
    assert notify(paid.redirect_query).status == 403
    # Then the kept copy is not marked forged: it still holds the payment for a human
    assert _kept(env, paid.id)[1] == [[True]]


def test_a_verified_redirect_the_database_could_not_settle_this_time_is_kept(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pg8000.native
    from pg8000.exceptions import DatabaseError

    # Given a paid transaction whose settling statement the database does not pass once (a lock wait timed out)
    payment = buy(env)
    paid = pay(env, payment)
    real_run = pg8000.native.Connection.run
    failed: list[str] = []

    def run(conn: pg8000.native.Connection, sql: str, stream: object = None, types: object = None, **params: object):  # type: ignore[no-untyped-def]
        if "credit_transactions" in sql and not failed:
            failed.append(sql)
            raise DatabaseError({"S": "ERROR", "C": "55P03", "M": "canceling statement due to lock timeout"})
        return real_run(conn, sql, stream=stream, types=types, **params)

    monkeypatch.setattr(pg8000.native.Connection, "run", run)
    # When the customer's browser brings the redirect (a terminal without notifications: nothing else will)
    page, _ = location(browser(paid.redirect_query))
    # Then the browser is told to wait, and the paid transaction is kept: the cleanup will not expire the payment
    assert failed and page == "https://app.example.test/payments/confirming"
    assert _kept(env, paid.id) == ([["unverified", False]], [[True]])
    # And a reload completes the payment
    assert location(browser(paid.redirect_query))[0] == "https://app.example.test/payments/success"
    assert env.status(payment["payment_id"]) == "completed"

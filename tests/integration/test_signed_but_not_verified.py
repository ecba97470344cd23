"""A paid callback whose Sign is right, which Hyp's VERIFY does not confirm.

In `both` mode (the default) the Sign is checked first (an HMAC with our terminal's KEY) and then VERIFY.
- VERIFY refusing our request itself (Hyp's validation codes 400-402) says nothing of the callback: "not yet" (503),
  kept as in any VERIFY outage. It used to be called forged: 403, nothing written.
- VERIFY saying "not genuine" to a callback whose Sign is right (the terminal's "verify by signature" setting off at
  Hyp, or an unsigned field edited by the link's holder): the Sign proves what Hyp decided (Id, code, amount,
  Order), so the callback is settled on those alone, as in `hmac` mode (the payment's own currency, Coin/Hesh/L4digit/
  errMsg not read), counted (VerifyDisagreedWithSign, alarmed); never refused with nothing written, never kept to
  wait (an edited link would hold its payment for ever). In `verify` mode the Sign is not trusted: refused (403).
A verified redirect the database could not settle this time (a lock wait, a conflict) is kept: nothing else may
bring it again.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from payments.settings import callback_settings
from tests.integration.test_hypay_callback import CALLBACK, browser, buy, location, metric_totals, notify, pay
from tests.support.api import reset_function_state
from tests.support.payments import Env


def _mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("HYPAY_VERIFY_MODE", mode)
    callback_settings.cache_clear()
    reset_function_state(CALLBACK)


def _kept(env: Env, hypay_id: str) -> tuple[list[list], list[list]]:
    return (
        env.rows("SELECT decision, verified FROM hypay_transactions WHERE hypay_id = :t", t=hypay_id),
        env.rows("SELECT found_forged_at IS NULL FROM hypay_unverified_callbacks WHERE hypay_id = :t", t=hypay_id),
    )


def test_a_signed_paid_notify_whose_verify_refuses_our_request_is_kept_and_not_yet(env: Env) -> None:
    # Given a paid transaction, and VERIFY answering one of Hyp's validation codes (our request refused)
    payment = buy(env)
    paid = pay(env, payment)
    env.sim.faults.add("VERIFY", "ccode", ccode=402, times=10)
    # When its notify arrives: "not yet" (Hyp sends it again), kept; the payment waits for it
    assert notify(paid.redirect_query).status == 503
    assert _kept(env, paid.id) == ([["unverified", False]], [[True]])
    assert env.status(payment["payment_id"]) == "pending"
    # And once VERIFY answers, its next delivery completes the payment
    env.sim.faults.clear()
    assert notify(paid.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed"


@pytest.mark.parametrize("path", ["notify", "browser"])
def test_a_signed_paid_callback_verify_calls_not_genuine_is_settled_on_its_sign(
    env: Env, path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a paid transaction, and Hyp's VERIFY saying "not genuine" to every callback (the terminal's "verify by
    # signature" setting off), its Sign right
    before = env.credits()
    payment = buy(env)
    paid = pay(env, payment)
    env.sim.faults.add("VERIFY", "ccode", ccode=902, times=10)
    # When its callback arrives: settled on what the Sign covers (the success page, 200 to Hyp)
    if path == "notify":
        assert notify(paid.redirect_query).status == 200
    else:
        assert location(browser(paid.redirect_query))[0] == "https://app.example.test/payments/success"
    # Then the payment is completed and credited once, its journal row verified in the payment's currency, and the
    # disagreement counted (alarmed)
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    assert env.rows("SELECT decision, verified, currency FROM hypay_transactions") == [["granted", True, "ILS"]]
    assert metric_totals(capsys.readouterr().out).get("VerifyDisagreedWithSign") == 1
    # And its next delivery, VERIFY working again, changes nothing
    env.sim.faults.clear()
    assert notify(paid.redirect_query).status == 200
    assert env.credits() == before + 100


def test_in_verify_mode_a_callback_verify_calls_not_genuine_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `verify` mode trusts VERIFY alone: its "not genuine" is a refusal (403), nothing kept
    _mode(monkeypatch, "verify")
    payment = buy(env)
    paid = pay(env, payment)
    env.sim.faults.add("VERIFY", "ccode", ccode=902, times=10)
    assert notify(paid.redirect_query).status == 403
    assert _kept(env, paid.id) == ([], [])
    assert env.status(payment["payment_id"]) == "pending"


def test_a_kept_paid_callback_is_not_marked_forged_when_verify_refuses_it_later(env: Env) -> None:
    # Given a paid notify kept while VERIFY could not be reached
    payment = buy(env)
    paid = pay(env, payment)
    env.sim.faults.add("VERIFY", "http500", times=4)
    assert notify(paid.redirect_query).status == 503
    env.sim.faults.clear()
    # When VERIFY then says it is not genuine (its Sign still right): settled on its Sign
    env.sim.faults.add("VERIFY", "ccode", ccode=902, times=10)
    assert notify(paid.redirect_query).status == 200
    # Then the kept copy is not marked forged, and the payment is completed by it
    assert _kept(env, paid.id) == ([["granted", True]], [[True]])
    assert env.status(payment["payment_id"]) == "completed"


def _claim(sql: str) -> bool:
    return "INSERT INTO" in sql and "idempotency_keys" in sql


def _settling(sql: str) -> bool:
    return "credit_transactions" in sql


def _failing_once(monkeypatch: pytest.MonkeyPatch, *faults: tuple[Callable[[str], bool], str]) -> list[str]:
    """Each (statement, SQLSTATE) in turn: the first statement `statement` takes, after the faults before it, fails with
    that SQLSTATE without running; the list returned fills with the SQLSTATEs raised."""
    import pg8000.native
    from pg8000.exceptions import DatabaseError

    real_run = pg8000.native.Connection.run
    raised: list[str] = []

    def run(conn: pg8000.native.Connection, sql: str, stream: object = None, types: object = None, **params: object):  # type: ignore[no-untyped-def]
        if len(raised) < len(faults):
            statement, sqlstate = faults[len(raised)]
            if statement(sql):
                raised.append(sqlstate)
                raise DatabaseError({"S": "ERROR", "C": sqlstate, "M": "the statement did not pass"})
        return real_run(conn, sql, stream=stream, types=types, **params)

    monkeypatch.setattr(pg8000.native.Connection, "run", run)
    return raised


@pytest.mark.parametrize(
    ("statement", "sqlstate"),
    [
        (_settling, "55P03"),  # a lock wait timed out
        (_claim, "55P03"),  # the same, on the idempotency claim: the first statement of the delivery
        (_claim, "57014"),  # the claim cancelled by its statement timeout
        (_claim, "23514"),  # the claim refused for good (a check a trigger or constraint of the web app's makes)
    ],
    ids=["settling-lock-timeout", "claim-lock-timeout", "claim-statement-timeout", "claim-refused-for-good"],
)
def test_a_verified_redirect_the_database_could_not_settle_this_time_is_kept(
    env: Env, monkeypatch: pytest.MonkeyPatch, statement: Callable[[str], bool], sqlstate: str
) -> None:
    # Given a paid transaction, and a statement of its delivery the database does not pass once
    payment = buy(env)
    paid = pay(env, payment)
    failed = _failing_once(monkeypatch, (statement, sqlstate))
    # When the customer's browser brings the redirect (a terminal without notifications: nothing else will)
    page, _ = location(browser(paid.redirect_query))
    # Then the browser is told to wait, and the paid transaction is kept: the cleanup will not expire the payment
    assert failed and page == "https://app.example.test/payments/confirming"
    assert _kept(env, paid.id) == ([["unverified", False]], [[True]])
    # And a reload completes the payment
    assert location(browser(paid.redirect_query))[0] == "https://app.example.test/payments/success"
    assert env.status(payment["payment_id"]) == "completed"


def _clearing_the_claim(sql: str) -> bool:
    return sql.lstrip().startswith("DELETE FROM") and "idempotency_keys" in sql and "status = 'pending'" in sql


@pytest.mark.parametrize("delete_sqlstate", ["55P03", "57014"])
def test_a_verified_redirect_whose_settling_and_claim_clearing_both_fail_is_kept(
    env: Env, monkeypatch: pytest.MonkeyPatch, delete_sqlstate: str
) -> None:
    # Given a paid transaction whose settling statement times out on a lock once, and the statement that then clears
    # the in-progress idempotency claim is not passed either (a lock wait / statement timeout under the same load)
    payment = buy(env)
    paid = pay(env, payment)
    failed = _failing_once(monkeypatch, (_settling, "55P03"), (_clearing_the_claim, delete_sqlstate))
    # When the customer's browser brings the redirect (a terminal without notifications: nothing else will)
    page, _ = location(browser(paid.redirect_query))
    # Then the browser waits, and the paid transaction must be kept (as when only the settling statement failed):
    # otherwise no row names Hyp's paid transaction and the cleanup expires the payment Hyp charged
    assert failed == ["55P03", delete_sqlstate] and page == "https://app.example.test/payments/confirming"
    assert env.status(payment["payment_id"]) == "pending"
    assert _kept(env, paid.id) == ([["unverified", False]], [[True]])

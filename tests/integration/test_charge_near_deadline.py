"""Hyp's answer to a saved-card charge arrives at the last moment the invocation allowed for it (a charge is asked only
with Hyp's timeout and the deadline's reserve left), while the web app holds the buyer's profile row. Storing the
answer waited for that lock as long as the database allows a transaction (a quarter of DB_QUERY_TIMEOUT), past the
reserve: Lambda would have ended the invocation with the answer unstored and the fallback unrun (an outside review).
Near the invocation's end a transaction's lock wait and statement time are cut to what is left, so the answer is
stored, or its fallback runs (the payment held for review naming Hyp's transaction), before the invocation ends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.local_api import build_event
from ops.seed import DEMO_USER_ID
from tests.support.api import TEMPLATE, load_handler, reset_function_state
from tests.support.payments import CREATE, CVV, PRO, Env
from tests.support.pg import connect

PAYMENT_ROW = "SELECT 1 FROM payments WHERE idempotency_key LIKE '%:late' AND :u::uuid IS NOT NULL FOR UPDATE"


def timed_purchase(handler: Callable[..., dict], key: str, timeout: float, *, page: bool = False) -> tuple[dict, float]:
    """POST /payments through create_payment's `handler` in an invocation of `timeout` seconds: a saved-card charge
    (`page`: a purchase on Hyp's page). The answer, and how long the invocation took."""
    event = build_event(
        method="POST",
        target="/payments",
        headers={"content-type": "application/json", "Idempotency-Key": key},
        body=json.dumps(
            {"credit_pack_id": PRO} if page else {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}
        ).encode(),
        source_ip="203.0.113.7",
        route_key="POST /payments",
        path_parameters={},
        claims={"sub": DEMO_USER_ID, "aud": "authenticated", "role": "authenticated"},
    )
    started = time.monotonic()
    result = handler(event, LocalLambdaContext(function_name=CREATE, timeout_seconds=timeout))
    return result, time.monotonic() - started


def _charge_while_held(
    env: Env, monkeypatch: pytest.MonkeyPatch, held: str, answer: Callable[[], None], *, page: bool = False
) -> tuple[dict, float]:
    """A saved-card charge in an invocation of 3.1 s (HYPAY_TIMEOUT 1 s: asked after < 0.1 s of work), while the web
    app runs `held` in a transaction from the moment the charge is marked, for 4 s. `answer()` sets Hyp's answer on
    the simulator (after a warm-up charge). The answer, and how long the invocation took. `page`: a purchase on Hyp's
    page instead (the payment held from when it is written)."""
    monkeypatch.setenv("HYPAY_TIMEOUT", "1")
    from payments.settings import hypay_settings

    hypay_settings.cache_clear()
    reset_function_state(CREATE)
    handler = load_handler(TEMPLATE.functions[CREATE])

    def charge(key: str, timeout: float) -> tuple[dict, float]:
        return timed_purchase(handler, key, timeout, page=page)

    charge("warm-up", 20)  # a warm execution environment
    answer()

    def web_app_holds_the_row() -> None:  # from when the charge is marked, for 4 s
        conn = connect(env.url)
        while not conn.run(
            "SELECT 1 FROM payments WHERE idempotency_key LIKE '%:late'"
            + ("" if page else " AND charge_attempt_id IS NOT NULL")
        ):
            time.sleep(0.01)
        conn.run("BEGIN")
        conn.run(held, u=DEMO_USER_ID)
        time.sleep(4)
        conn.run("COMMIT")
        conn.close()

    holder = threading.Thread(target=web_app_holds_the_row)
    holder.start()
    try:
        return charge("late", TIMEOUT)
    finally:
        holder.join()


TIMEOUT = 3.1  # the charge needs HYPAY_TIMEOUT + the reserve (3 s) left


@pytest.mark.parametrize(
    "held",
    ["SELECT credits FROM profiles WHERE id = :u::uuid FOR UPDATE", PAYMENT_ROW],  # storing waits; the fallback too
    ids=["profile-row", "payment-row"],
)
def test_hyps_late_answer_is_stored_before_the_invocation_ends(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    def answer() -> None:  # Hyp answers just within its timeout
        env.sim.faults.add("soft", "latency", times=1, seconds=0.95)

    result, took = _charge_while_held(env, monkeypatch, held, answer)
    assert env.sim.calls.count("soft") == 2  # Hyp charged the card
    # Answered before Lambda would end it ("being confirmed", or the stored outcome)
    assert took <= TIMEOUT, f"answered after {took:.2f} s: Lambda ends the invocation at {TIMEOUT} s"
    assert result["statusCode"] in (201, 202), result
    [[status, hyp_id, reason, attempted]] = env.rows(
        "SELECT status, hypay_transaction_id, review_reason, charge_attempt_id IS NOT NULL FROM payments"
        " WHERE idempotency_key LIKE '%:late'"
    )
    charged = list(env.sim.transactions)[-1]
    if held.startswith("SELECT credits"):
        # Hyp's charge on record: completed, or held for review naming it
        assert (status == "completed" and hyp_id == charged) or (status == "needs_review" and charged in reason), (
            status,
            hyp_id,
            reason,
        )
    else:
        # The web app held the payment's own row past the invocation: nothing could be written to it; its charge
        # attempt mark (written before Hyp was asked) keeps it for the cleanup's review, never charged again
        assert (status, attempted) == ("pending", True), (status, hyp_id, reason)


@pytest.mark.parametrize("ccode", [4, 300, 902], ids=["declined-without-id", "refused", "credentials-refused"])
def test_a_decline_without_an_id_is_stored_or_left_marked_before_the_invocation_ends(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch, ccode: int
) -> None:
    """Hyp declines with a CCode and no Id, or refuses (a code neither a decline nor ours), or refuses our credentials
    (nothing charged: the attempt is released): each is an update of the payment's own row. Those were autocommit
    statements, without the limits a transaction takes near the invocation's end: with the web app holding the row
    they waited the query timeout (10 s), and again on a new connection, long after Lambda would have ended the
    invocation (outside reviews)."""
    take = env.sim.faults.take

    def slow_take(action: str) -> object:  # Hyp answers after 0.3 s: the web app holds the row by then
        rule = take(action)
        if action == "soft" and rule is not None:
            time.sleep(0.3)
        return rule

    def answer() -> None:
        env.sim.faults.add("soft", "ccode", times=1, ccode=ccode)  # CCode only, no Id
        monkeypatch.setattr(env.sim.faults, "take", slow_take)

    result, took = _charge_while_held(env, monkeypatch, PAYMENT_ROW, answer)
    assert took <= TIMEOUT, f"answered after {took:.2f} s: Lambda ends the invocation at {TIMEOUT} s ({result})"
    # Nothing could be written to the held row: still marked (the cleanup's review), never charged again
    [[status, attempted]] = env.rows(
        "SELECT status, charge_attempt_id IS NOT NULL FROM payments WHERE idempotency_key LIKE '%:late'"
    )
    assert (status, attempted) == ("pending", True)
    assert result["statusCode"] in (202, 503), result


def test_the_page_of_a_payment_the_web_app_holds_is_answered_before_the_invocation_ends(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hyp signed the page; its URL is stored by an update of the new payment's row, an autocommit statement that
    waited past the invocation's end while the web app held the row (an outside review)."""
    take = env.sim.faults.take

    def slow_take(action: str) -> object:  # Hyp signs after 0.3 s: the web app holds the row by then
        if action == "SIGN":
            time.sleep(0.3)
        return take(action)

    def answer() -> None:
        monkeypatch.setattr(env.sim.faults, "take", slow_take)

    result, took = _charge_while_held(env, monkeypatch, PAYMENT_ROW, answer, page=True)
    assert took <= TIMEOUT, f"answered after {took:.2f} s: Lambda ends the invocation at {TIMEOUT} s ({result})"
    assert result["statusCode"] == 503, result  # not yet: the retry (same key) stores the URL and answers it

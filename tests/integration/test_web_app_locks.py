"""The web app holding a lock the backend's statements need (the buyer's balance row, in a transaction it left open)
while Hyp's answer is stored: the statements give up on the lock in a quarter of the query timeout (the server's own
55P03, the connection intact), and every fallback that keeps Hyp's answer on a row still runs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ops.seed import DEMO_USER_ID
from payments.adapters import db as db_module
from payments.settings import database_settings
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_hypay_callback import browser, buy, location, notify, pay
from tests.integration.test_review import ADMIN
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.api import reset_function_state
from tests.support.payments import CALLBACK, CREATE, CVV, PRO, Env, post
from tests.support.pg import connect

# -- 2. the web app holding the buyer's balance row while Hyp's answer is stored -------------------------------------


@pytest.fixture
def short_query_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """DB_QUERY_TIMEOUT=2 (10 by default) so that the tests wait seconds, not the whole invocation."""
    monkeypatch.setenv("DB_QUERY_TIMEOUT", "2")
    database_settings.cache_clear()
    db_module.reset_default_database()
    for function in (CREATE, CALLBACK, ADMIN):
        reset_function_state(function)
    yield


@contextmanager
def web_app_spending(env: Env, seconds: float) -> Iterator[None]:
    """The web app debits the user's credits in a transaction that stays open `seconds` (a job that debits first, or
    a session left idle in transaction: docs/deploy.md names that as the usual cause of a stuck lock)."""
    web = connect(env.url)
    web.run("BEGIN")
    web.run("UPDATE profiles SET credits = credits - 1 WHERE id = :u::uuid", u=DEMO_USER_ID)
    timer = threading.Timer(seconds, lambda: web.run("COMMIT"))
    timer.start()
    try:
        yield
    finally:
        timer.join()
        web.close()


@pytest.mark.usefixtures("short_query_timeout")
def test_a_verified_redirect_that_waits_on_the_web_apps_lock_is_kept(env: Env) -> None:
    payment = buy(env)
    paid = pay(env, payment)
    with web_app_spending(env, 8):
        answer = browser(paid.redirect_query)
    # "not yet" for the browser is fine; but Hyp took the money: its transaction must be on a row (the journal's
    # 'unverified' summary keeps the cleanup from expiring the payment), as for any other statement that did not pass
    location(answer)
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id = :h", h=paid.id) == [[1]], env.rows(
        "SELECT status FROM payments WHERE id = :p::uuid", p=payment["payment_id"]
    )


@pytest.mark.usefixtures("short_query_timeout")
def test_a_saved_card_charge_that_waits_on_the_web_apps_lock_names_hyps_transaction(env: Env, saved_card: str) -> None:
    with web_app_spending(env, 8):
        answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="charge-under-lock")
    assert answer.status in (201, 202), answer.body
    [[status, reason]] = env.rows(
        "SELECT status, review_reason FROM payments WHERE idempotency_key LIKE '%:charge-under-lock'"
    )
    # Hyp approved the charge: its Id is on a row (completed, or in review naming it), never only in a log line
    named = env.rows("SELECT count(*) FROM hypay_transactions WHERE source = 'token_charge'")[0][0] == 1
    assert status == "completed" or named or (reason and "Hyp transaction" in reason), (status, reason)


@pytest.mark.usefixtures("admin", "short_query_timeout")
def test_a_refund_that_waits_on_the_web_apps_lock_stores_hyps_refund(env: Env) -> None:
    payment = buy(env)
    assert notify(pay(env, payment).redirect_query).status == 200
    with web_app_spending(env, 8):
        answer = refund(payment["payment_id"], {"reason": "customer asked"}, key=str(uuid.uuid4()))
    # (a cancellation the same day in Israel, a refund after: Hyp asked once either way)
    assert env.sim.calls.count("zikoyAPI") + env.sim.calls.count("CancelTrans") == 1
    # Hyp made the refund (a new transaction): its Id is on the refund's row (stored, or in words for the human who
    # settles it), not only in a log line
    [[status, refund_id, message]] = env.rows("SELECT status, hypay_refund_id, message FROM refunds")
    assert refund_id is not None or (status == "attempted" and "refund Id" in (message or "")), (
        answer.status,
        answer.json,
        status,
        message,
    )

"""A refund's answer noted on its row when storing the outcome itself keeps failing (the web app holding a lock):
never "not refunded" for an answer that was lost, and kept through the retry with the same key."""

from __future__ import annotations

import threading
import uuid

import pytest

from payments.adapters.hypay import HypayClient
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_web_app_locks import short_query_timeout as short_query_timeout  # noqa: F401
from tests.support.payments import Env
from tests.support.pg import connect


@pytest.mark.usefixtures("admin", "short_query_timeout")
def test_a_refund_whose_answer_was_lost_is_never_noted_as_not_refunded(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment = buy(env)
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    # Hyp makes the refund, then its answer is lost (an error page): the outcome is unknown
    env.sim.faults.add("zikoyAPI", "lost")
    # And while Hyp is being asked, the web app takes the payment's row in a transaction it keeps open a few seconds
    original = HypayClient._send
    web = connect(env.url)
    timers: list[threading.Timer] = []

    def send(client: HypayClient, request, timeout):  # type: ignore[no-untyped-def]
        if b"zikoyAPI" in (request.data or b""):
            web.run("BEGIN")
            web.run("SELECT 1 FROM payments WHERE id = :p::uuid FOR UPDATE", p=pid)
            timer = threading.Timer(5, lambda: web.run("COMMIT"))
            timer.start()
            timers.append(timer)
        return original(client, request, timeout)

    monkeypatch.setattr(HypayClient, "_send", send)
    try:
        answer = refund(pid, {"reason": "customer asked"}, key=str(uuid.uuid4()))
    finally:
        for t in timers:
            t.join()
        web.close()
    assert len(env.sim.reversals) == 1  # Hyp refunded
    [[status, message]] = env.rows("SELECT status, message FROM refunds")
    # The row must not tell the human who settles it that Hyp did not refund (it did, or may have)
    assert "did not refund" not in (message or ""), (answer.status, status, message)


from tests.integration.test_web_app_locks import web_app_spending  # noqa: E402


@pytest.mark.usefixtures("admin", "short_query_timeout")
def test_the_refund_id_noted_on_the_row_survives_the_retry_with_the_same_key(env: Env) -> None:
    payment = buy(env)
    assert notify(pay(env, payment).redirect_query).status == 200
    key = str(uuid.uuid4())
    # Hyp refunds; storing its answer keeps failing (the web app holds the balance row): the refund Id is noted
    with web_app_spending(env, 8):
        first = refund(payment["payment_id"], {"reason": "customer asked"}, key=key)
    [reversal] = env.sim.reversals
    [[status, message]] = env.rows("SELECT status, message FROM refunds")
    # (a cancellation, same day in Israel, has no Id of its own: the note says so)
    noted = f"Hyp refunded it (refund Id {reversal.id or 'none: a cancellation'})"
    assert status == "attempted" and noted in (message or ""), (first.status, status, message)
    # When the operator's client retries with the same key once the attempt's in-progress time is over
    env.rows("UPDATE idempotency_keys SET in_progress_expiry_timestamp = 1 WHERE status = 'pending'")
    again = refund(payment["payment_id"], {"reason": "customer asked"}, key=key)
    # Then Hyp's refund Id is still on the refund's row for the human who settles it
    [[status, hyp_id, message]] = env.rows("SELECT status, hypay_refund_id, message FROM refunds")
    stored = reversal.id is not None and hyp_id == reversal.id
    assert stored or noted in (message or ""), (again.status, status, message)

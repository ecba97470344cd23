"""POST /payments and GET /payments/{id} through the handler, with real Postgres and the Hypay simulator."""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
)
from ops.local_api import LocalApi, local_token
from ops.seed import DEMO_USER_ID
from ops.template import load
from payments.domain import hypay as protocol
from tests.support.api import invoke, reset_function_state
from tests.support.leaks import holds, pg_standing
from tests.support.payments import CREATE as FN
from tests.support.payments import CVV, LEGACY, OTHER_USER, PRO, STARTER, Env, post


def test_happy_path_creates_a_pending_payment_with_a_signed_page(env: Env) -> None:
    # When the demo user buys the Starter pack
    answer = post({"credit_pack_id": STARTER})

    # Then 201 with the payment, priced from the pack
    assert answer.status == 201, answer.body
    body = answer.json
    assert body["amount"] == "49.90" and body["currency"] == "ILS" and body["credits"] == 100
    assert body["status"] == "pending" and "idempotent-replayed" not in answer.headers
    # And a pending row holds the amount, the pack, the (user-scoped) key and the page URL
    [(pid, user, status, amount, key, url)] = env.payments()
    assert (pid, user, status, amount) == (body["payment_id"], DEMO_USER_ID, "pending", "49.90")
    assert key == f"api:{DEMO_USER_ID}:key-1" and url == body["payment_url"]
    # And the page is Hyp's, for this payment (Order = payment id), with the profile's name and email
    fields = protocol.decode_query(urlsplit(url).query)
    assert url.startswith(env.sim.url) and fields["Order"] == pid and fields["Amount"] == "49.90"
    assert fields["ClientName"] == "משתמש" and fields["email"] == "demo@example.co.il"
    assert env.sim.calls.count("SIGN") == 1


def test_security_headers_on_every_answer(env: Env) -> None:
    for answer in (
        post({"credit_pack_id": STARTER}),
        post({"credit_pack_id": "nope"}, key="k2"),
        invoke(FN, "GET", f"/payments/{uuid.uuid4()}", user=DEMO_USER_ID),
    ):
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert answer.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (None, "required"),
        ("", "required"),
        ("x" * 256, "1 to 255"),
        ("tab\there", "1 to 255"),
        ("קוד", "1 to 255"),
        ("   ", "1 to 255"),
    ],
)
def test_missing_or_malformed_idempotency_key_is_400_and_writes_nothing(env: Env, key: str | None, why: str) -> None:
    answer = post({"credit_pack_id": STARTER}, key=key)
    assert answer.status == 400 and answer.headers["content-type"] == "application/problem+json"
    assert why in answer.json["detail"]
    assert env.payments() == [] and env.rows("SELECT count(*) FROM idempotency_keys") == [[0]]


def test_quoted_structured_field_key_is_accepted(env: Env) -> None:
    assert post({"credit_pack_id": STARTER}, key='"8e03978e-40d5-43e8-bc93-6894a57f9324"').status == 201


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        [],
        {},
        {"credit_pack_id": "not-a-uuid"},
        {"credit_pack_id": STARTER, "price": 1},
        {"credit_pack_id": STARTER, "cvv": CVV},
        {"credit_pack_id": STARTER, "saved_card": True, "cvv": "12ab"},
    ],
)
def test_malformed_body_is_400_naming_the_problem_and_writes_nothing(env: Env, body: object) -> None:
    answer = post(body)
    assert answer.status == 400, answer.body
    assert answer.json["detail"] and not holds(answer.body, "12ab") and not holds(answer.body, CVV)
    assert env.payments() == [] and env.rows("SELECT count(*) FROM idempotency_keys") == [[0]]


def test_unknown_or_inactive_pack(env: Env) -> None:
    unknown = post({"credit_pack_id": str(uuid.uuid4())}, key="k-unknown")
    inactive = post({"credit_pack_id": LEGACY}, key="k-legacy")
    assert unknown.status == 404 and "does not exist" in unknown.json["detail"]
    assert inactive.status == 409 and "no longer sold" in inactive.json["detail"]
    assert env.payments() == []


def test_a_user_deleted_between_the_checks_and_the_pending_payment_is_404_not_an_outage(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The web app deleting the user while a purchase of theirs is between reading the profile and writing the
    pending payment: the payment's foreign key refuses it. Gone for good, as the check would have found: 404, never
    503 and the UnhandledError alarm (an outside review)."""
    from payments.adapters.payments_store import PaymentsStore

    real = PaymentsStore.pack_and_profile

    def read_then_user_gone(self: PaymentsStore, *args: object, **kwargs: object) -> object:
        found = real(self, *args, **kwargs)  # type: ignore[arg-type]
        for table in ("credit_transactions", "invoices", "payments"):
            env.rows(f"DELETE FROM {table} WHERE user_id = :u::uuid", u=OTHER_USER)
        env.rows("DELETE FROM profiles WHERE id = :u::uuid", u=OTHER_USER)
        return found

    monkeypatch.setattr(PaymentsStore, "pack_and_profile", read_then_user_gone)
    answer = post({"credit_pack_id": STARTER}, key="gone-midway", user=OTHER_USER)
    monkeypatch.setattr(PaymentsStore, "pack_and_profile", real)
    retry = post({"credit_pack_id": STARTER}, key="gone-midway", user=OTHER_USER)
    out = capsys.readouterr().out
    assert (answer.status, retry.status) == (404, 404), (answer.body, retry.body)
    assert env.payments() == []
    assert '"UnhandledError"' not in out


def test_a_pack_whose_credits_the_balance_cannot_hold_is_not_sold(env: Env) -> None:
    """profiles.credits is an integer: a sale whose grant could never be written is refused before anything is
    written, never paid for and then refused at every delivery of its callback (an outside review)."""
    env.rows("UPDATE profiles SET credits = 2147483600 WHERE id = :u::uuid", u=DEMO_USER_ID)
    answer = post({"credit_pack_id": STARTER}, key="overflow")
    assert answer.status == 409 and "would pass the largest balance" in answer.json["detail"], answer.body
    assert env.payments() == []
    env.rows("UPDATE profiles SET credits = 2147483647 - 100 WHERE id = :u::uuid", u=DEMO_USER_ID)
    assert post({"credit_pack_id": STARTER}, key="fits").status == 201  # the Starter's 100 credits still fit


def test_a_retry_reusing_its_pending_payment_is_checked_with_that_payments_credits(env: Env) -> None:
    """A key whose first attempt left a pending payment that got nowhere (Hyp's SIGN failed) is retried after the
    web app lowered the pack's credits: the retry sells the payment's own 100 credits, which the balance is checked
    against, not the catalogue's 1 (an outside review of the check)."""
    env.sim.faults.add("SIGN", "html", times=2)
    assert post({"credit_pack_id": STARTER}, key="stale").status == 503
    env.rows("UPDATE credit_packs SET credits = 1 WHERE id = :p::uuid", p=STARTER)
    env.rows("UPDATE profiles SET credits = 2147483647 - 50 WHERE id = :u::uuid", u=DEMO_USER_ID)
    answer = post({"credit_pack_id": STARTER}, key="stale")
    assert answer.status == 409 and "the pack's 100" in answer.json["detail"], answer.body
    assert env.sim.calls.count("SIGN") == 2  # the first attempt's two tries; none for the refused retry


def test_a_retry_reusing_its_pending_payment_is_not_refused_for_todays_catalogue_credits(env: Env) -> None:
    """The other way round: the pack now sells 1000 credits, which the balance cannot hold, but the retry sells its
    payment's own 100, which it can (an outside review of the check)."""
    env.sim.faults.add("SIGN", "html", times=2)
    assert post({"credit_pack_id": STARTER}, key="stale-up").status == 503
    env.rows("UPDATE credit_packs SET credits = 1000 WHERE id = :p::uuid", p=STARTER)
    env.rows("UPDATE profiles SET credits = 2147483647 - 500 WHERE id = :u::uuid", u=DEMO_USER_ID)
    answer = post({"credit_pack_id": STARTER}, key="stale-up")
    assert answer.status == 201 and answer.json["credits"] == 100, answer.body
    assert post({"credit_pack_id": STARTER}, key="new-key").status == 409  # a new purchase sells today's 1000


def test_replay_returns_the_same_answer_without_a_second_row_or_sign(env: Env) -> None:
    first = post({"credit_pack_id": STARTER})
    again = post({"credit_pack_id": STARTER})
    assert again.status == first.status == 201
    assert again.json == first.json and again.headers["idempotent-replayed"] == "true"
    assert again.body == first.body  # byte for byte, not only the same JSON
    assert len(env.payments()) == 1 and env.sim.calls.count("SIGN") == 1


def test_same_key_with_another_body_is_422(env: Env) -> None:
    post({"credit_pack_id": STARTER})
    answer = post({"credit_pack_id": PRO})
    assert answer.status == 422 and "different request" in answer.json["detail"]
    assert len(env.payments()) == 1


def test_same_key_while_the_first_runs_is_409_with_retry_after(env: Env) -> None:
    env.sim.faults.add("SIGN", "latency", seconds=0.4)
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(answer=post({"credit_pack_id": STARTER})))
    thread.start()
    while "SIGN" not in env.sim.calls:  # the first request is now inside the gateway call
        threading.Event().wait(0.01)
    reset_function_state(FN)  # the second request comes to another execution environment
    second = post({"credit_pack_id": STARTER})
    thread.join(10)
    assert second.status == 409 and int(second.headers["retry-after"]) >= 1
    assert first["answer"].status == 201 and len(env.payments()) == 1


def test_keys_are_scoped_per_user(env: Env) -> None:
    mine = post({"credit_pack_id": STARTER}, key="shared-key")
    theirs = post({"credit_pack_id": STARTER}, key="shared-key", user=OTHER_USER)
    assert mine.status == theirs.status == 201 and "idempotent-replayed" not in theirs.headers
    assert mine.json["payment_id"] != theirs.json["payment_id"]
    # And nobody reads another user's payment
    assert invoke(FN, "GET", f"/payments/{mine.json['payment_id']}", user=OTHER_USER).status == 404


def test_gateway_unavailable_is_503_not_stored_and_the_retry_reuses_the_payment(env: Env) -> None:
    env.sim.faults.add("SIGN", "html", times=2)
    failed = post({"credit_pack_id": STARTER})
    assert failed.status == 503 and failed.headers["retry-after"]
    [(pid, _, status, _, _, url)] = env.payments()
    assert status == "pending" and url is None
    assert env.rows("SELECT count(*) FROM idempotency_keys") == [[0]]  # nothing stored: a retry runs again
    retried = post({"credit_pack_id": STARTER})
    assert retried.status == 201 and retried.json["payment_id"] == pid
    assert len(env.payments()) == 1


def test_gateway_refusing_our_credentials_is_503_not_yet_and_the_retry_works(env: Env) -> None:
    # Given Hyp refuses our terminal's credentials (a KEY rotation in progress): ours, so "not yet"
    env.sim.faults.add("SIGN", "ccode", ccode=902)
    answer = post({"credit_pack_id": STARTER})
    assert answer.status == 503 and answer.headers["retry-after"] and PUBLIC_TEST_TERMINAL_KEY not in answer.body
    # And once the credentials are right, the retry with the same key creates the page
    retried = post({"credit_pack_id": STARTER})
    assert retried.status == 201 and len(env.payments()) == 1


def test_rate_limit_per_user_is_429_with_retry_after(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "3")
    reset_function_state(FN)
    from payments.settings import api_settings

    api_settings.cache_clear()
    answers = [post({"credit_pack_id": STARTER}, key=f"rl-{i}") for i in range(3)]
    assert [a.status for a in answers] == [201, 201, 201]
    assert post({"credit_pack_id": STARTER}, key="rl-0").status == 201  # a replay is not a creation
    limited = post({"credit_pack_id": STARTER}, key="rl-3")
    assert limited.status == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert post({"credit_pack_id": STARTER}, key="rl-x", user=OTHER_USER).status == 201  # per user
    assert len(env.payments()) == 4
    # A refused request writes nothing: the 429 itself does not count
    windows = env.rows("SELECT bucket, count, last_request FROM rate_limits ORDER BY bucket")
    assert post({"credit_pack_id": STARTER}, key="rl-4").status == 429
    assert env.rows("SELECT bucket, count, last_request FROM rate_limits ORDER BY bucket") == windows


def test_requests_refused_before_any_payment_do_not_count_against_the_rate(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a limit of 2 payments a window
    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "2")
    reset_function_state(FN)
    from payments.settings import api_settings

    api_settings.cache_clear()
    # When the web app asks for a retired pack, an unknown one, and a saved card the user has none of, many times
    for i in range(5):
        assert post({"credit_pack_id": LEGACY}, key=f"old-{i}").status == 409
        assert post({"credit_pack_id": str(uuid.uuid4())}, key=f"unknown-{i}").status == 404
        assert post({"credit_pack_id": STARTER, "saved_card": True, "cvv": CVV}, key=f"card-{i}").status == 409
    # Then nothing was written, and the user can still buy
    assert env.rows("SELECT count(*) FROM rate_limits") == [[0]]
    assert post({"credit_pack_id": STARTER}, key="real-1").status == 201


def test_get_payment_for_its_owner(env: Env) -> None:
    created = post({"credit_pack_id": STARTER}).json
    mine = invoke(FN, "GET", f"/payments/{created['payment_id']}", user=DEMO_USER_ID)
    assert mine.status == 200 and mine.json["status"] == "pending" and mine.json["amount"] == "49.90"
    assert invoke(FN, "GET", "/payments/not-a-uuid", user=DEMO_USER_ID).status == 404
    assert invoke(FN, "GET", f"/payments/{uuid.uuid4()}", user=DEMO_USER_ID).status == 404


def test_no_user_in_the_token_is_401(env: Env) -> None:
    answer = invoke(
        FN, "POST", "/payments", user=None, body={"credit_pack_id": STARTER}, headers={"Idempotency-Key": "k"}
    )
    assert answer.status == 401 and env.payments() == []


# -- saved cards ---------------------------------------------------------------------------------


def test_saved_card_charge_completes_and_grants_credits(env: Env, saved_card: str) -> None:
    before = env.credits()
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-1")
    assert answer.status == 201, answer.body
    assert answer.json["status"] == "completed" and answer.json["payment_url"] is None
    assert env.credits() == before + 500
    pid = answer.json["payment_id"]
    assert env.rows("SELECT status, hypay_transaction_id IS NOT NULL FROM payments WHERE id = :p::uuid", p=pid) == [
        ["completed", True]
    ]
    assert env.rows("SELECT amount, type FROM credit_transactions WHERE payment_id = :p::uuid", p=pid) == [
        [500, "purchase"]
    ]
    # A replay charges nothing more
    again = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-1")
    assert again.json == answer.json and env.sim.calls.count("soft") == 1 and env.credits() == before + 500


def test_declined_saved_card_is_402_with_hyps_code_and_no_credits(env: Env, saved_card: str) -> None:
    before = env.credits()
    env.sim.faults.add("soft", "ccode", ccode=4)
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-2")
    assert answer.status == 402 and answer.json["ccode"] == 4 and answer.json["gateway_message"]
    assert env.rows("SELECT status, hypay_ccode FROM payments WHERE id = :p::uuid", p=answer.json["payment_id"]) == [
        ["failed", 4]
    ]
    assert env.credits() == before


@pytest.mark.parametrize(("fault", "seconds"), [("hang", 1.5), ("cut", 0.0), ("moved", 0.0)])
def test_saved_card_charge_with_unknown_outcome_is_never_retried(
    env: Env, saved_card: str, capsys: pytest.CaptureFixture[str], fault: str, seconds: float
) -> None:
    # Given Hyp does not answer the charge in time, or its answer is cut short, or is a redirect to an address that
    # refuses connections (after charging)
    env.sim.faults.add("soft", fault, seconds=seconds)
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-3")
    # Then 202: being confirmed, the payment in review, counted for the alarm
    assert answer.status == 202 and "being confirmed" in answer.json["detail"]
    again = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-3")
    assert again.status == 202 and again.headers["idempotent-replayed"] == "true"
    assert env.sim.calls.count("soft") == 1  # the card was asked once, whatever happens
    assert env.rows(
        "SELECT status, review_reason IS NOT NULL, charge_attempt_id IS NOT NULL FROM payments WHERE id = :p::uuid",
        p=answer.json["payment_id"],
    ) == [["needs_review", True, True]]
    assert "ChargeOutcomeUnknown" in capsys.readouterr().out


def test_a_bug_while_hyp_is_asked_sends_the_charge_to_review(
    env: Env, saved_card: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Hyp charges the card and then something of ours breaks before its answer is read
    from payments.adapters.hypay import HypayClient

    charge = HypayClient.charge_token

    def charged_then_broken(self: HypayClient, *args: object, **kwargs: object) -> object:
        charge(self, *args, **kwargs)
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(HypayClient, "charge_token", charged_then_broken)
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-bug")
    # Then 202 (being confirmed), the payment in review and counted for the alarm, and never charged again
    assert answer.status == 202 and "being confirmed" in answer.json["detail"]
    payment_id = answer.json["payment_id"]
    assert env.rows(
        "SELECT status, review_reason LIKE '%RuntimeError%' FROM payments WHERE id = :p::uuid", p=payment_id
    ) == [["needs_review", True]]
    assert "ChargeOutcomeUnknown" in capsys.readouterr().out
    _expire_in_progress_records(env)
    assert post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-bug").status == 202
    assert env.sim.calls.count("soft") == 1


def test_a_payment_expired_before_its_charge_was_marked_is_a_409_with_nothing_charged(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the cleanup expires the (reused) pending payment just before this attempt marks its charge
    from payments.adapters.payments_store import PaymentsStore

    mark = PaymentsStore.mark_charge_attempt

    def expired_first(self: PaymentsStore, payment_id: object, attempt_id: object) -> bool:
        env.rows("UPDATE payments SET status = 'expired' WHERE id = :p::uuid", p=str(payment_id))
        return mark(self, payment_id, attempt_id)  # type: ignore[arg-type]

    monkeypatch.setattr(PaymentsStore, "mark_charge_attempt", expired_first)
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-expired")
    # Then a 409 that says nothing was charged and to use a new key (not 202 "being confirmed, do not retry")
    assert answer.status == 409 and "a card charged; retry with a new Idempotency-Key" in answer.json["detail"], (
        answer.body
    )
    assert env.sim.calls.count("soft") == 0
    assert env.rows("SELECT count(*) FROM payments WHERE charge_attempt_id IS NOT NULL") == [[0]]


def test_a_retry_after_the_cleanup_expired_the_uncharged_payment_is_the_same_409(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a saved-card purchase that failed before its charge (our Hyp credentials unreadable: 503, key released)
    from payments.adapters.hypay import HypayClient
    from payments.errors import GatewayNotAsked

    def not_asked(self: HypayClient, *args: object, **kwargs: object) -> object:
        raise GatewayNotAsked("credentials unreadable")

    with monkeypatch.context() as patched:
        patched.setattr(HypayClient, "charge_token", not_asked)
        assert post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-later").status == 503
    # And its pending payment expired by the cleanup before the client retried with the key
    env.rows("UPDATE payments SET status = 'expired' WHERE status = 'pending' AND charge_attempt_id IS NULL")
    again = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-later")
    # Then the same 409 as when it expires during the attempt: nothing charged, use a new key
    assert again.status == 409 and "a card charged; retry with a new Idempotency-Key" in again.json["detail"], (
        again.body
    )
    assert env.sim.calls.count("soft") == 0


def _expire_in_progress_records(env: Env) -> None:
    """As if the invocation holding the key ran out of time: its in-progress expiry is past."""
    env.rows("UPDATE idempotency_keys SET in_progress_expiry_timestamp = 1 WHERE status = 'pending'")


def test_saved_card_approved_then_the_store_fails_never_charges_twice(env: Env, saved_card: str) -> None:
    # Given Hyp approves the charge but writing its outcome fails (the journal refuses token charges)
    before = env.credits()
    env.rows("""
        CREATE FUNCTION refuse_charge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'storage failure' USING ERRCODE = '53100'; END $$""")
    env.rows(
        "CREATE TRIGGER refuse_charge BEFORE INSERT ON hypay_transactions FOR EACH ROW"
        " WHEN (NEW.source = 'token_charge') EXECUTE FUNCTION refuse_charge()"
    )
    body = {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}
    answer = post(body, key="saved-4")
    # Then the caller is told it is being confirmed (never "retry"), and the key stays locked
    assert answer.status == 202 and "being confirmed" in answer.json["detail"], answer.body
    assert env.rows("SELECT count(*) FROM idempotency_keys WHERE status = 'pending'") == [[1]]
    assert post(body, key="saved-4").status == 409
    # When the storage recovers and the lock's holder is known dead, the same key is retried
    env.rows("DROP TRIGGER refuse_charge ON hypay_transactions")
    _expire_in_progress_records(env)
    retried = post(body, key="saved-4")
    # Then no second charge: the payment goes to review, the outcome being confirmed
    assert retried.status == 202 and retried.json["status"] == "needs_review", retried.body
    assert env.sim.calls.count("soft") == 1 and env.credits() == before
    assert env.status(answer.json["payment_id"]) == "needs_review"


class _Killed(BaseException):
    """The Lambda runtime killing the invocation: no `except Exception` runs."""


def killed_after_the_charge(body: dict, key: str) -> None:
    """POST /payments whose invocation dies right after Hyp charged the saved card (its answer never read)."""
    from ops.template import load_module
    from tests.support.api import TEMPLATE

    gateway = load_module(TEMPLATE.functions[FN])._service().deps.gateway
    real_open = gateway._open

    def charge_then_die(request, timeout):  # noqa: ANN001, ANN202 - the opener's signature
        answer = real_open(request, timeout)
        if b"action=soft" in request.data:
            raise _Killed()
        return answer

    gateway._open = charge_then_die
    try:
        with pytest.raises(_Killed):
            post(body, key=key)
    finally:
        gateway._open = real_open


def test_saved_card_invocation_killed_mid_charge_never_charges_twice(env: Env, saved_card: str) -> None:
    # Given the invocation dies right after Hyp charged (its answer never read)
    body = {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}
    killed_after_the_charge(body, "saved-5")
    # When the client retries with the same key: first while the dead invocation's lock holds, then after
    assert post(body, key="saved-5").status == 409
    _expire_in_progress_records(env)
    retried = post(body, key="saved-5")
    # Then the card was charged once, and the payment waits for review with the charge being confirmed
    assert retried.status == 202 and retried.json["status"] == "needs_review", retried.body
    assert env.sim.calls.count("soft") == 1
    [(status, reason)] = env.rows(
        "SELECT status, review_reason FROM payments WHERE id = :p::uuid", p=retried.json["payment_id"]
    )
    assert status == "needs_review" and "interrupted" in reason


def test_no_saved_card_is_409(env: Env) -> None:
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-4")
    assert answer.status == 409 and "no saved card" in answer.json["detail"]


def test_the_cvv_is_nowhere(env: Env, saved_card: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given every saved-card flow ran with a distinctive CVV, logs captured at DEBUG
    caplog.set_level(logging.DEBUG)
    post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="cvv-1")
    env.sim.faults.add("soft", "ccode", ccode=4)
    post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="cvv-2")
    post({"credit_pack_id": PRO, "saved_card": True, "cvv": "12x"}, key="cvv-3")
    # Then no table, no idempotency record and no log line holds it
    tables = [r[0] for r in env.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        hits = env.rows(f"SELECT count(*) FROM {table} t WHERE to_jsonb(t)::text ~ :p", p=pg_standing(CVV))
        assert hits == [[0]], f"CVV found in {table}"
    assert not holds(caplog.text, CVV)
    assert not holds(caplog.text, saved_card)  # nor the token
    records = env.rows("SELECT request_hash, response_data::text FROM idempotency_keys")
    assert records and not any(holds(json.dumps(r), CVV) for r in records)


# -- over HTTP, through `make run`'s local API (worker processes, the emulated authorizer) ---------


@pytest.fixture
def local_api(env: Env) -> Iterator[LocalApi]:
    environment = {
        k: os.environ[k]
        for k in (
            "DATABASE_URL",
            "HYPAY_URL",
            "HYPAY_MASOF",
            "HYPAY_KEY",
            "HYPAY_PASSP",
            "POWERTOOLS_METRICS_NAMESPACE",
            "POWERTOOLS_TRACE_DISABLED",
        )
    }
    api = LocalApi(
        load(), environment | {"HYPAY_TIMEOUT": "5", "HYPAY_BUDGET": "10"}, port=0, workers=4, run_schedules=False
    )
    api.start()
    yield api
    api.stop()


def http_post(api: LocalApi, body: dict, key: str, token: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        f"{api.url}/payments",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read())


def test_over_http_20_concurrent_identical_requests_make_one_payment(env: Env, local_api: LocalApi) -> None:
    # Given a slow gateway, and 20 identical requests (same user, key and body) at once
    env.sim.faults.add("SIGN", "latency", seconds=1.0)
    token = local_token(DEMO_USER_ID)
    barrier = threading.Barrier(20)
    answers: list[tuple[int, dict, dict]] = []

    def call() -> None:
        barrier.wait()
        try:
            answers.append(http_post(local_api, {"credit_pack_id": STARTER}, "burst-key", token))
        except Exception as exc:  # recorded, so the assertion below says what went wrong
            answers.append((0, {}, {"error": repr(exc)}))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    # Then one payment row and one SIGN call; every answer is the payment (once fresh, else replayed)
    # or "still running, retry"
    assert len(env.payments()) == 1 and env.sim.calls.count("SIGN") == 1
    statuses = sorted(a[0] for a in answers)
    assert len(answers) == 20 and set(statuses) <= {201, 409}, answers
    fresh = [a for a in answers if a[0] == 201 and a[1].get("idempotent-replayed") != "true"]
    assert len(fresh) == 1
    assert all(a[2]["payment_id"] == fresh[0][2]["payment_id"] for a in answers if a[0] == 201)
    assert all("retry-after" in a[1] for a in answers if a[0] == 409)


def test_over_http_happy_path_and_authorizer(env: Env, local_api: LocalApi) -> None:
    status, headers, body = http_post(local_api, {"credit_pack_id": STARTER}, "http-1", local_token(DEMO_USER_ID))
    assert status == 201 and body["status"] == "pending" and headers["cache-control"] == "no-store"
    assert http_post(local_api, {"credit_pack_id": STARTER}, "http-2", "not-a-token")[0] == 401


def test_store_failure_after_the_page_was_created_answers_the_same_payment_on_retry(env: Env) -> None:
    # Given the page is created, but storing the idempotent answer fails (the record stays in progress)
    env.rows("""
        CREATE FUNCTION refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.status = 'completed' THEN RAISE EXCEPTION 'storage failure' USING ERRCODE = '53100';
        END IF; RETURN NEW; END $$""")
    env.rows(
        "CREATE TRIGGER refuse_completion BEFORE UPDATE ON idempotency_keys FOR EACH ROW"
        " EXECUTE FUNCTION refuse_completion()"
    )
    failed = post({"credit_pack_id": STARTER}, key="page-1")
    assert failed.status == 503, failed.body
    env.rows("DROP TRIGGER refuse_completion ON idempotency_keys")
    env.rows("UPDATE idempotency_keys SET in_progress_expiry_timestamp = 1 WHERE status = 'pending'")
    # When the client retries with the same key, user and body
    retried = post({"credit_pack_id": STARTER}, key="page-1")
    # Then it answers the payment that exists, with its page, never a 422 and never a second page
    [(pid, _, status, _, _, url)] = env.payments()
    assert retried.status == 201, retried.body
    assert retried.json["payment_id"] == pid and retried.json["payment_url"] == url and status == "pending"
    assert env.sim.calls.count("SIGN") == 1


def test_a_record_that_changes_under_the_claim_past_the_retries_is_409_not_a_500(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the store says the key is taken, then that no record holds it, every time (a record purged or taken over
    # between the claim and its read, again and again): Powertools gives up with its inconsistent-state error
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyItemAlreadyExistsError,
        IdempotencyItemNotFoundError,
    )

    from payments.idempotency import PostgresPersistenceLayer

    def taken(self: object, data_record: object) -> None:
        raise IdempotencyItemAlreadyExistsError()

    def absent(self: object, idempotency_key: str) -> None:
        raise IdempotencyItemNotFoundError()

    monkeypatch.setattr(PostgresPersistenceLayer, "_put_record", taken)
    monkeypatch.setattr(PostgresPersistenceLayer, "_get_record", absent)
    # When a payment is asked for / Then "still being processed, retry" (ours, not yet), nothing written
    answer = post({"credit_pack_id": STARTER})
    assert answer.status == 409 and int(answer.headers["retry-after"]) >= 1
    assert env.payments() == []

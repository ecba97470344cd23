"""Hostile and broken callbacks, in every verify mode: nothing steers a request to Hyp, nothing is a 5xx,
and a failure that is ours is "not yet" (kept for reconciliation), never a rejection of a paid callback."""

from __future__ import annotations

import pytest

from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_KEY
from payments.adapters.db import Database
from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_hypay_callback import (
    FAILURE_PAGE,
    PENDING_PAGE,
    SUCCESS_PAGE,
    browser,
    buy,
    forge,
    location,
    metric_totals,
    notify,
    pay,
)
from tests.support.api import invoke, reset_function_state
from tests.support.payments import CALLBACK, Env
from tests.support.pg import database

MODES = ("hmac", "verify", "both")


def use_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("HYPAY_VERIFY_MODE", mode)
    from payments.settings import callback_settings

    callback_settings.cache_clear()
    reset_function_state(CALLBACK)


def unpaid_claim(payment_id: str, ccode: str = "0", amount: str = "49.90") -> list[tuple[str, str]]:
    return [
        ("Id", "77700001"),
        ("CCode", ccode),
        ("Amount", amount),
        ("ACode", "0012345"),
        ("Order", payment_id),
        ("Fild1", ""),
        ("Fild2", ""),
        ("Fild3", ""),
        ("Coin", "1"),
    ]


def untouched(env: Env, payment_id: str, credits: int) -> None:
    assert env.status(payment_id) == "pending" and env.credits() == credits
    assert env.rows("SELECT count(*) FROM hypay_transactions") == [[0]]


STEERING = [
    "What=SIGN",
    "action=APISign",
    "Masof=0010999999",
    "KEY=0123456789abcdef",
    "PassP=attacker",
    "Wh%61t=SIGN",  # decodes to What
    "what=SIGN",
    "CCode=0",  # repeated: which one would Hyp read?
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extra", STEERING)
def test_a_callback_that_would_steer_the_request_to_hyp_is_refused_before_any_call(
    env: Env, monkeypatch: pytest.MonkeyPatch, mode: str, extra: str, capsys: pytest.CaptureFixture[str]
) -> None:
    use_mode(monkeypatch, mode)
    # Given a payment, and a forged success for it (HMAC-signed with the terminal's KEY, unpaid) plus a
    # parameter that belongs to our requests to Hyp
    before = env.credits()
    payment = buy(env)
    calls = len(env.sim.calls)
    raw = forge(unpaid_claim(payment["payment_id"])) + "&" + extra
    # When it arrives as a notify and as a redirect
    answer = notify(raw)
    page, _ = location(browser(raw))
    # Then refused (400 / the failure page), counted, Hyp never asked, nothing written
    assert answer.status == 400 and "not a Hypay callback" in answer.json["detail"], answer.body
    assert page == FAILURE_PAGE
    assert env.sim.calls[calls:] == []
    untouched(env, payment["payment_id"], before)
    assert metric_totals(capsys.readouterr().out).get("CallbackRefused") == 2


@pytest.mark.parametrize("mode", ["verify", "both"])
def test_a_genuine_redirect_with_what_sign_appended_is_refused_and_the_real_one_still_pays(
    env: Env, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    use_mode(monkeypatch, mode)
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    assert notify(transaction.redirect_query + "&What=SIGN").status == 400
    assert env.status(payment["payment_id"]) == "pending"
    assert notify(transaction.redirect_query).status == 200
    assert env.credits() == before + 100


@pytest.mark.parametrize("mode", ["verify", "both"])
@pytest.mark.parametrize("field", ["Hesh", "Coin", "L4digit"])
def test_an_unsigned_field_altered_fails_verify(
    env: Env, monkeypatch: pytest.MonkeyPatch, mode: str, field: str
) -> None:
    use_mode(monkeypatch, mode)
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    altered = "&".join(
        f"{k}={'99999' if k == field else v}"
        for k, v in (p.split("=", 1) for p in transaction.redirect_query.split("&"))
    )
    if mode == "verify":
        # VERIFY alone is trusted: an altered copy is refused, nothing decided
        assert notify(altered).status == 403
        assert env.status(payment["payment_id"]) == "pending"
        assert env.rows("SELECT count(*) FROM hypay_transactions") == [[0]]
        return
    # With the Sign checked too, the Sign (Hyp's) decides on what it covers: the altered field is not read
    assert notify(altered).status == 200
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    assert env.rows("SELECT count(*) FROM invoices") == [[0]]
    assert env.rows("SELECT decision, verified, currency FROM hypay_transactions") == [["granted", True, "ILS"]]


def test_hmac_only_trusts_no_unsigned_field(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given HMAC-only verification: Hesh, Coin, L4digit and errMsg are not covered by Sign
    use_mode(monkeypatch, "hmac")
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    altered = transaction.redirect_query.replace("Coin=1", "Coin=2") + "&Hesh=424242"
    altered = altered.replace("&Hesh=0", "", 1)
    # When the genuine redirect arrives with them altered
    assert notify(altered).status == 200
    # Then the payment completes in its own currency, and no invoice number was taken from the callback
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    assert env.rows("SELECT count(*) FROM invoices") == [[0]]
    assert env.rows("SELECT currency FROM hypay_transactions") == [["ILS"]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("CCode", "%2B0"),
        ("CCode", "+0"),
        ("CCode", "%D9%A0"),
        ("CCode", "99999999999"),
        ("CCode", ""),
        ("Id", "%D9%A1%D9%A2"),
        ("Id", "12%0A"),
        ("Amount", "49.90%0A"),
        ("Amount", "1e3"),
    ],
)
def test_malformed_deciding_fields_are_a_4xx_never_approved(
    env: Env, monkeypatch: pytest.MonkeyPatch, mode: str, field: str, value: str
) -> None:
    use_mode(monkeypatch, mode)
    before = env.credits()
    payment = buy(env)
    fields = [(k, value if k == field else v) for k, v in unpaid_claim(payment["payment_id"])]
    signed = forge([(k, v) for k, v in fields if k != field])  # the rest well-formed and signed
    raw = f"{signed}&{field}={value}" if value else signed.replace(f"{field}=", f"{field}=", 1)
    calls = len(env.sim.calls)
    answer = notify(raw)
    assert 400 <= answer.status < 500, (answer.status, answer.body)
    assert location(browser(raw))[0] == FAILURE_PAGE
    assert env.sim.calls[calls:] == []
    untouched(env, payment["payment_id"], before)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"Id=1&CCode=0&Fild1=\xe9\xf9\xf8\xe0\xec", {"content-type": "application/x-www-form-urlencoded"}),
        (b"\xff\xfe\x00garbage", {"content-type": "application/octet-stream"}),
        ("Fild1=שלום&Id=1".encode(), {"content-type": "text/plain"}),
    ],
)
def test_a_notify_body_that_is_not_ascii_is_a_400_that_stops_retries(
    env: Env, body: bytes, headers: dict[str, str]
) -> None:
    answer = invoke(CALLBACK, "POST", "/hypay/notify", body=body, headers=headers, source_ip="198.51.100.20")
    assert answer.status == 400 and "ASCII" in answer.json["detail"], (answer.status, answer.body)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_raw_nul_in_a_callback_is_a_400_even_while_we_cannot_verify(
    env: Env, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    # A paid callback with a raw NUL byte in a value (no database text can hold it), while our Hyp configuration
    # is incomplete (nothing can be verified, the callback would be kept for reconciliation): a 400 that stops
    # retries and writes nothing (it was a 500)
    payment = buy(env)
    transaction = pay(env, payment)
    monkeypatch.delenv("HYPAY_PASSP")
    from payments.adapters import hypay

    hypay.hypay_settings.cache_clear()
    reset_function_state(CALLBACK)
    raw = transaction.redirect_query.replace("Fild1=", "Fild1=a\x00", 1)
    assert "\x00" in raw
    if method == "POST":
        form = {"content-type": "application/x-www-form-urlencoded"}
        answer = invoke(CALLBACK, "POST", "/hypay/notify", body=raw.encode(), headers=form, source_ip="198.51.100.20")
    else:
        answer = invoke(CALLBACK, "GET", f"/hypay/notify?{raw}", source_ip="198.51.100.20")
    assert answer.status == 400 and "NUL" in answer.json["detail"], (answer.status, answer.body)
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks") == [[0]]
    assert env.status(payment["payment_id"]) == "pending"


def test_a_base64_notify_body_is_read_as_api_gateway_sends_it(env: Env) -> None:
    # API Gateway base64-encodes form bodies (isBase64Encoded): a genuine one is decoded and pays
    from tests.support.api import call, notify_event

    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    result = call(CALLBACK, notify_event(transaction.redirect_query, base64_encoded=True))
    assert result["statusCode"] == 200, result
    assert env.credits() == before + 100


# -- a failure that is ours is "not yet" -----------------------------------------------------------


def wrong_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our KEY is not Hyp's (a rotation half done): every check that uses it fails."""
    from payments.adapters import hypay

    monkeypatch.setenv("HYPAY_KEY", "f" * 40)
    hypay.hypay_settings.cache_clear()
    reset_function_state(CALLBACK)


def right_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from payments.adapters import hypay

    monkeypatch.setenv("HYPAY_KEY", PUBLIC_TEST_TERMINAL_KEY)
    hypay.hypay_settings.cache_clear()
    reset_function_state(CALLBACK)


@pytest.mark.parametrize("mode", MODES)
def test_our_wrong_key_is_not_yet_never_forged_and_the_payment_completes_once_fixed(
    env: Env, monkeypatch: pytest.MonkeyPatch, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    use_mode(monkeypatch, mode)
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    # Given our KEY is not the one Hyp signs with
    wrong_key(monkeypatch)
    # When Hyp's genuine callback arrives
    answer = notify(transaction.redirect_query)
    page, query = location(browser(transaction.redirect_query))
    # Then "not yet": 503 with Retry-After, the browser on the pending page, alarm metric on the first one
    assert answer.status == 503 and answer.headers["retry-after"], answer.body
    assert page == PENDING_PAGE and query == {"payment_id": [payment["payment_id"]]}
    metrics = metric_totals(capsys.readouterr().out)
    assert metrics.get("CallbackNotVerifiable") == 2 and "VerificationFailed" not in metrics
    # And the callback is kept for reconciliation, unverified, nothing granted
    [(decision, verified, raw, pid)] = env.rows(
        "SELECT decision, verified, raw_callback, payment_id::text FROM hypay_transactions"
    )
    assert (decision, verified, raw, pid) == ("unverified", False, transaction.redirect_query, payment["payment_id"])
    assert env.credits() == before
    # And the hourly cleanup never expires that payment
    db: Database = database(env.url)
    env.rows("UPDATE payments SET created_at = now() - interval '1 day' WHERE id = :p::uuid", p=payment["payment_id"])
    run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=60))
    db.close()
    assert env.status(payment["payment_id"]) == "pending"
    # When the KEY is fixed and Hyp sends it again
    right_key(monkeypatch)
    assert notify(transaction.redirect_query).status == 200
    # Then the payment completes once, and the journal row is now verified and granted
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    assert env.rows("SELECT decision, verified, deliveries FROM hypay_transactions") == [["granted", True, 3]]


def test_verify_permission_refused_is_not_yet(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    use_mode(monkeypatch, "verify")
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    env.sim.faults.add("VERIFY", "ccode", ccode=901)
    assert notify(transaction.redirect_query).status == 503
    assert env.rows("SELECT decision FROM hypay_transactions") == [["unverified"]]
    assert notify(transaction.redirect_query).status == 200
    assert env.credits() == before + 100
    assert env.rows("SELECT decision, verified FROM hypay_transactions") == [["granted", True]]


@pytest.mark.parametrize("mode", MODES)
def test_a_forgery_with_our_right_credentials_is_still_rejected(
    env: Env, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    use_mode(monkeypatch, mode)
    before = env.credits()
    payment = buy(env)
    forged = forge(unpaid_claim(payment["payment_id"]), key="0" * 40)
    assert notify(forged).status == 403
    assert location(browser(forged))[0] == FAILURE_PAGE
    untouched(env, payment["payment_id"], before)


def test_configuration_missing_is_not_yet(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    payment = buy(env)
    transaction = pay(env, payment)
    monkeypatch.delenv("HYPAY_PASSP")
    from payments.adapters import hypay

    hypay.hypay_settings.cache_clear()
    reset_function_state(CALLBACK)
    answer = notify(transaction.redirect_query)
    assert answer.status == 503 and answer.headers["retry-after"], answer.body
    assert location(browser(transaction.redirect_query))[0] == PENDING_PAGE


# -- the journal -----------------------------------------------------------------------------------


def test_paying_the_same_page_twice_leaves_the_second_charge_in_review_with_an_alarm(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a payment paid once, then its page paid again (two tabs)
    before = env.credits()
    payment = buy(env)
    first = pay(env, payment)
    assert notify(first.redirect_query).status == 200
    second = pay(env, payment)
    # When the second success arrives
    assert notify(second.redirect_query).status == 200
    page, _ = location(browser(second.redirect_query))
    # Then no second grant, and the second charge is a journal row in review, counted for the alarm
    assert env.credits() == before + 100 and env.status(payment["payment_id"]) == "completed"
    rows = env.rows("SELECT hypay_id, decision, detail FROM hypay_transactions ORDER BY first_seen")
    assert [(r[0], r[1]) for r in rows] == [(first.id, "granted"), (second.id, "review")]
    assert "second charge" in rows[1][2] and first.id in rows[1][2]
    assert page == PENDING_PAGE
    assert metric_totals(capsys.readouterr().out).get("SecondCharge") == 1
    # And a redelivery counts the delivery, changes nothing else
    assert location(browser(first.redirect_query))[0] == SUCCESS_PAGE
    assert env.rows("SELECT deliveries >= 1, last_seen >= first_seen FROM hypay_transactions") == [
        [True, True],
        [True, True],
    ]


def test_every_decision_has_its_journal_row(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    use_mode(monkeypatch, "hmac")
    paid = buy(env, key="paid")
    declined = buy(env, key="declined")
    mismatch = buy(env, key="mismatch")
    granted = pay(env, paid)
    notify(granted.redirect_query)
    notify(forge([(k, v) for k, v in unpaid_claim(declined["payment_id"], ccode="4")]))
    notify(forge([(k, "77700002" if k == "Id" else v) for k, v in unpaid_claim(mismatch["payment_id"], amount="1.00")]))
    rows = dict(env.rows("SELECT payment_id::text, decision FROM hypay_transactions"))
    assert rows == {
        paid["payment_id"]: "granted",
        declined["payment_id"]: "declined",
        mismatch["payment_id"]: "review",
    }
    assert env.status(declined["payment_id"]) == "failed" and env.status(mismatch["payment_id"]) == "needs_review"


@pytest.mark.parametrize(("ccode", "amount", "said"), [("0", "99.90", "amount 99.90"), ("6", "49.90", "CCode 6")])
def test_a_verified_redelivery_that_contradicts_the_decision_is_kept_and_counted_and_moves_no_money(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ccode: str, amount: str, said: str
) -> None:
    use_mode(monkeypatch, "hmac")
    before = env.credits()
    payment = buy(env)
    approved = forge(unpaid_claim(payment["payment_id"]))
    assert notify(approved).status == 200
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    capsys.readouterr()
    # When a delivery of the same transaction, signed with the terminal's KEY, says another code or amount
    assert notify(forge(unpaid_claim(payment["payment_id"], ccode=ccode, amount=amount))).status == 200
    # Then no money moves: the payment stays completed with its credits granted once, the decision stays
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    assert env.rows(
        "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=payment["payment_id"]
    ) == [[1]]
    [(decision, journaled, deliveries, contradictions, last, stamped)] = env.rows(
        "SELECT decision, ccode, deliveries, contradictions, last_contradiction, last_contradiction_at IS NOT NULL"
        " FROM hypay_transactions"
    )
    assert (decision, journaled, deliveries, contradictions, stamped) == ("granted", 0, 2, 1, True)
    # And what it said is on the journal's row, and counted for the alarm
    assert "77700001" in last and said in last, last
    assert metric_totals(capsys.readouterr().out).get("ContradictingDelivery") == 1
    # And a redelivery that agrees with the decision (answered from its idempotency record) counts no contradiction
    assert notify(approved).status == 200
    assert env.rows("SELECT deliveries, contradictions FROM hypay_transactions") == [[2, 1]]
    assert "ContradictingDelivery" not in metric_totals(capsys.readouterr().out)


def test_two_verified_deliveries_racing_for_the_first_decision_keep_their_disagreement(env: Env) -> None:
    import threading
    import time
    from uuid import UUID

    from payments.adapters.journal import HypTransaction, Source
    from payments.domain.money import Currency, Money
    from payments.services.settle import Result, settle
    from tests.support.pg import connect

    before = env.credits()
    payment_id = buy(env)["payment_id"]

    def delivery(amount: str) -> HypTransaction:
        return HypTransaction(
            hypay_id="77700009",
            order_ref=payment_id,
            payment_id=UUID(payment_id),
            ccode=0,
            amount=Money.of(amount, Currency.ILS),
            source=Source.NOTIFY,
            verified=True,
        )

    # Given another session holding the payment, and two verified deliveries of one new Hyp Id waiting for it,
    # the first for the payment's amount, the second for another
    holder = connect(env.url)
    holder.run("BEGIN")
    holder.run("SELECT 1 FROM payments WHERE id = :p::uuid FOR UPDATE", p=payment_id)
    results: dict[str, object] = {}

    def deliver(name: str, amount: str) -> None:
        db = database(env.url)
        try:
            results[name] = settle(db, delivery(amount))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            results[name] = exc
        finally:
            db.close()

    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        " AND position('WITH j AS (' IN query) > 0"  # the journal's facts (the view keeps too little to see FOR UPDATE)
    )
    threads = []
    for count, (name, amount) in enumerate((("first", "49.90"), ("second", "50.00")), start=1):
        threads.append(threading.Thread(target=deliver, args=(name, amount)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while env.rows(waiting)[0][0] < count:  # queued in this order on the payment's lock
            assert time.monotonic() < deadline, "a delivery never waited for the payment"
            time.sleep(0.02)
    # When the holder lets go: the first decides and commits while the second has already read the journal
    holder.run("COMMIT")
    holder.close()
    for thread in threads:
        thread.join(timeout=20)
    # Then the first granted once, and the second, decided again on the first's row, is kept as a contradiction
    assert [getattr(results[n], "result", results[n]) for n in ("first", "second")] == [
        Result.COMPLETED,
        Result.COMPLETED,
    ], results
    assert env.status(payment_id) == "completed" and env.credits() == before + 100
    [(decision, contradictions, last)] = env.rows(
        "SELECT decision, contradictions, last_contradiction FROM hypay_transactions WHERE hypay_id = '77700009'"
    )
    assert (decision, contradictions) == ("granted", 1) and "amount 50.00 ILS" in last, last

"""hypay_callback with the simulator and real Postgres: verified callbacks grant credits exactly once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from ops.hypay_simulator import (
    APPROVING_CARD,
    DECLINING_CARD,
    PUBLIC_TEST_TERMINAL_KEY,
    HypaySimulator,
    Transaction,
    public_test_terminal,
    redirect_sign,
)
from ops.local_api import LocalApi
from ops.seed import DEMO_USER_ID
from ops.template import load
from payments.domain import hypay as protocol
from tests.support.api import Answer, invoke, reset_function_state
from tests.support.payments import (
    CALLBACK,
    FAILURE_PAGE,
    PENDING_PAGE,
    PRO,
    STARTER,
    SUCCESS_PAGE,
    Env,
    post,
    slow_down,
)
from tests.support.pg import connect

DOCUMENTED_EXAMPLE = (
    "Id=12788261&CCode=0&Amount=10&ACode=0012345&Order=12345678910&Fild1=Israel%20Isareli&Fild2=test%40yaad.net"
    "&Fild3=&Sign=13cccf141e2fc2e2dd8d8201a90d58929514d97e00084cb9436cab087f1ba8c6&Bank=6&Payments=1"
    "&UserId=203269535&Brand=2&Issuer=2&L4digit=0000&street=levanon%203&city=netanya&zip=42361&cell=098610338"
    "&Coin=1&Tmonth=03&Tyear=2023&errMsg=%20(0)&Hesh=31"
)


def buy(env: Env, pack: str = STARTER, key: str = "buy-1", **extra: object) -> dict:
    answer = post({"credit_pack_id": pack, **extra}, key=key)
    assert answer.status == 201, answer.body
    return answer.json


def pay(env: Env, payment: dict, card: str = APPROVING_CARD, cvv: str = "125") -> Transaction:
    return env.sim.pay(payment["payment_url"], card, cvv=cvv)


def browser(raw: str) -> Answer:
    return invoke(CALLBACK, "GET", f"/hypay/return?{raw}", headers={"accept": "text/html"})


def notify(raw: str, *, source_ip: str = "198.51.100.20", method: str = "POST", **headers: str) -> Answer:
    if method == "GET":
        return invoke(CALLBACK, "GET", f"/hypay/notify?{raw}", source_ip=source_ip, headers=headers)
    return invoke(
        CALLBACK,
        "POST",
        "/hypay/notify",
        body=raw,
        source_ip=source_ip,
        headers={"content-type": "application/x-www-form-urlencoded", **headers},
    )


def location(answer: Answer) -> tuple[str, dict[str, list[str]]]:
    assert answer.status == 302, (answer.status, answer.body)
    parts = urlsplit(answer.headers["location"])
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


def metric_totals(out: str) -> dict[str, float]:
    """Sum of every EMF metric printed (Powertools Metrics flushes JSON lines to stdout)."""
    totals: dict[str, float] = {}
    for line in out.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + (
                    sum(value) if isinstance(value, list) else value
                )
    return totals


def forge(fields: list[tuple[str, str]], key: str = PUBLIC_TEST_TERMINAL_KEY) -> str:
    """A redirect signed with the terminal's KEY (only the HMAC check can be satisfied this way)."""
    encoded = [(k, quote(v, safe="-_.!~*'()")) for k, v in fields]
    sign = redirect_sign(dict(encoded), key)
    head = [kv for kv in encoded if kv[0] in protocol.SIGNED_FIELDS]
    rest = [kv for kv in encoded if kv[0] not in protocol.SIGNED_FIELDS]
    return "&".join(f"{k}={v}" for k, v in [*head, ("Sign", sign), *rest])


def hmac_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPAY_VERIFY_MODE", "hmac")
    from payments.settings import callback_settings

    callback_settings.cache_clear()
    reset_function_state(CALLBACK)


# -- the whole payment ---------------------------------------------------------------------------


def test_full_payment_from_post_payments_to_credits(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a payment created through the API and paid on Hyp's page with the approving card
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)

    # When Hyp redirects the browser back
    answer = browser(transaction.redirect_query)

    # Then the browser goes to the success page with our payment id, and nothing of Hyp's
    page, query = location(answer)
    assert page == SUCCESS_PAGE and query == {"payment_id": [payment["payment_id"]]}
    # And the payment is completed, once, with the credits, the purchase row and Hyp's transaction id
    pid = payment["payment_id"]
    assert env.rows(
        "SELECT status, hypay_transaction_id, hypay_approval_code IS NOT NULL FROM payments WHERE id = :p::uuid", p=pid
    ) == [["completed", transaction.id, True]]
    assert env.credits() == before + 100
    assert env.rows("SELECT amount, type FROM credit_transactions WHERE payment_id = :p::uuid", p=pid) == [
        [100, "purchase"]
    ]
    # And the web app sees it
    assert invoke("CreatePaymentFunction", "GET", f"/payments/{pid}", user=DEMO_USER_ID).json["status"] == "completed"
    totals = metric_totals(capsys.readouterr().out)
    assert totals.get("PaymentsCompleted") == 1 and totals.get("CreditsGranted") == 100


def test_reloads_and_the_notification_change_nothing(env: Env) -> None:
    payment = buy(env)
    transaction = pay(env, payment)
    first = browser(transaction.redirect_query)
    balance = env.credits()
    again = [browser(transaction.redirect_query) for _ in range(3)] + [notify(transaction.redirect_query)]
    assert all(location(a) == location(first) for a in again[:3])
    assert again[3].status == 200 and again[3].body == "OK"
    assert env.credits() == balance
    assert env.rows(
        "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=payment["payment_id"]
    ) == [[1]]


def test_invoice_number_is_recorded(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPAY_SEND_INVOICE", "true")
    from payments.settings import api_settings

    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")
    payment = buy(env)
    transaction = pay(env, payment)
    browser(transaction.redirect_query)
    hesh = protocol.decode_query(transaction.redirect_query)["Hesh"]
    assert hesh != "0"
    assert env.rows(
        "SELECT invoice_number, amount::text FROM invoices WHERE payment_id = :p::uuid", p=payment["payment_id"]
    ) == [[hesh, "49.90"]]


def test_declined_payment_fails_with_hyps_code_and_no_credits(env: Env) -> None:
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment, DECLINING_CARD, cvv="123")
    page, query = location(browser(transaction.redirect_query))
    assert page == FAILURE_PAGE and query == {"payment_id": [payment["payment_id"]]}
    assert env.rows(
        "SELECT status, hypay_ccode, hypay_message FROM payments WHERE id = :p::uuid", p=payment["payment_id"]
    ) == [["failed", 4, "declined by the card issuer:  (4)".replace("  ", " ")]]
    assert env.credits() == before


@pytest.mark.parametrize(("ccode", "meaning"), [(700, "authorized, not charged (J5)"), (800, "postponed")])
def test_j5_and_postponed_are_recorded_without_credits(
    env: Env, monkeypatch: pytest.MonkeyPatch, ccode: int, meaning: str
) -> None:
    hmac_only(monkeypatch)
    before = env.credits()
    payment = buy(env)
    raw = forge(
        [
            ("Id", "55500001"),
            ("CCode", str(ccode)),
            ("Amount", "49.90"),
            ("ACode", ""),
            ("Order", payment["payment_id"]),
            ("Fild1", ""),
            ("Fild2", ""),
            ("Fild3", ""),
            ("Coin", "1"),
        ]
    )
    assert notify(raw).status == 200
    [(status, code, message)] = env.rows(
        "SELECT status, hypay_ccode, hypay_message FROM payments WHERE id = :p::uuid", p=payment["payment_id"]
    )
    assert (status, code) == ("failed", ccode) and message.startswith(meaning)
    assert env.credits() == before


def test_portal_connection_test_gets_a_harmless_200(env: Env) -> None:
    for answer in (browser(""), notify(""), notify("", method="GET")):
        assert answer.status == 200 and answer.body == "OK"
    assert env.rows("SELECT count(*) FROM idempotency_keys") == [[0]]


# -- verification --------------------------------------------------------------------------------


def test_documented_example_passes_the_hmac_check(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hmac_only(monkeypatch)
    # Genuine (signed with the test terminal's KEY), but its Order is not one of our payments: verified,
    # then journaled as unmatched (money Hyp took for nothing of ours is never only a log line)
    answer = notify(DOCUMENTED_EXAMPLE)
    assert answer.status == 404 and "Order" in json.loads(answer.body)["detail"]
    metrics = metric_totals(capsys.readouterr().out)
    assert "VerificationFailed" not in metrics and metrics.get("UnmatchedTransaction") == 1
    assert env.rows(
        "SELECT hypay_id, payment_id, order_ref, decision, verified, amount::text FROM hypay_transactions"
    ) == [["12788261", None, "12345678910", "unmatched", True, "10.00"]]


@pytest.mark.parametrize("field", protocol.SIGNED_FIELDS)
def test_each_signed_field_tampered_is_rejected_and_changes_nothing(
    env: Env, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    payment = buy(env)
    transaction = pay(env, payment)
    pairs = protocol.split_raw_query(transaction.redirect_query)
    # A digit appended keeps every field well-formed except Amount (49.901: three decimals), which is
    # refused as malformed before any check
    tampered = "&".join(f"{k}={v + '1' if k == field else v}" for k, v in pairs)
    before = env.credits()
    # The browser is sent to the failure page; the notification is refused
    assert location(browser(tampered))[0] == FAILURE_PAGE
    assert notify(tampered).status == (400 if field == "Amount" else 403)
    assert env.status(payment["payment_id"]) == "pending" and env.credits() == before
    counted = "CallbackRefused" if field == "Amount" else "VerificationFailed"
    assert metric_totals(capsys.readouterr().out).get(counted) == 2


def test_unsigned_field_tampered_is_not_read(env: Env) -> None:
    payment = buy(env)
    transaction = pay(env, payment)
    tampered = transaction.redirect_query.replace("Coin=1", "Coin=2")
    # VERIFY says no; the Sign (Hyp's) is right: settled on what it covers, in the payment's own currency
    assert notify(tampered).status == 200
    assert env.status(payment["payment_id"]) == "completed"
    assert env.rows("SELECT currency, verified FROM hypay_transactions") == [["ILS", True]]


def test_verify_down_credits_nothing_and_a_later_delivery_does(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    payment = buy(env)
    transaction = pay(env, payment)
    env.sim.faults.add("VERIFY", "hang", times=4, seconds=1.5)
    # The notification is asked to come again; the browser goes to "confirming your payment"
    unavailable = notify(transaction.redirect_query)
    assert unavailable.status == 503 and unavailable.headers["retry-after"]
    page, query = location(browser(transaction.redirect_query))
    assert page == PENDING_PAGE and query == {"payment_id": [payment["payment_id"]]}
    assert env.status(payment["payment_id"]) == "pending"
    assert metric_totals(capsys.readouterr().out).get("CallbackNotVerifiable") == 2
    # When Hyp answers again, the next delivery completes it
    assert notify(transaction.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed"


@pytest.mark.parametrize("kind", ["cut", "drop", "http500"])
def test_a_verify_answer_cut_short_or_lost_is_not_yet_and_the_callback_is_kept(env: Env, kind: str) -> None:
    # Hyp's VERIFY answer arrives cut short of its Content-Length (http.client's IncompleteRead, not an OSError),
    # never arrives, or is an error page: "cannot verify yet", never a 500
    payment = buy(env)
    transaction = pay(env, payment)
    env.sim.faults.add("VERIFY", kind, times=4)
    unavailable = notify(transaction.redirect_query)
    assert unavailable.status == 503 and unavailable.headers["retry-after"]
    assert location(browser(transaction.redirect_query))[0] == PENDING_PAGE
    # The paid callback is on record, waiting for its verification
    [[kept]] = env.rows(
        "SELECT count(*) FROM hypay_unverified_callbacks WHERE payment_id = :p::uuid", p=payment["payment_id"]
    )
    assert kept >= 1 and env.status(payment["payment_id"]) == "pending"
    # And the next delivery, with Hyp answering again, completes it
    env.sim.faults.clear()
    assert notify(transaction.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed"


def test_ip_allowlist_is_a_signal_a_genuine_notify_from_elsewhere_is_processed_a_forged_one_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.integration.test_money_edges import claim

    monkeypatch.setenv("HYPAY_NOTIFY_ALLOWED_CIDRS", "198.51.100.0/24, 2001:db8::/32")
    from payments.settings import callback_settings

    callback_settings.cache_clear()
    reset_function_state(CALLBACK)
    before = env.credits()
    payment, other = buy(env), buy(env, key="buy-2")
    transaction = pay(env, payment)
    raw = transaction.redirect_query
    # A forgery from outside the list, even claiming an allowed address in X-Forwarded-For: refused as a forgery,
    # nothing written
    forged = forge(claim(other["payment_id"], hyp_id="99900002"), key="0" * 40)
    assert notify(forged, source_ip="203.0.113.9", **{"x-forwarded-for": "198.51.100.20"}).status == 403
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id = '99900002'") == [[0]]
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE hypay_id = '99900002'") == [[0]]
    out = capsys.readouterr().out
    assert metric_totals(out).get("VerificationFailed") == 1 and "NotifyOutsideAllowlist" not in metric_totals(out)
    # Hyp's genuine notification from an address the list lacks (the list is ours, Hyp publishes none): processed,
    # counted and named in a warning, so the list gets fixed; refusing it would leave a paid transaction on no row
    assert notify(raw, source_ip="203.0.113.9", **{"x-forwarded-for": "198.51.100.20"}).status == 200
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    out = capsys.readouterr().out
    assert metric_totals(out).get("NotifyOutsideAllowlist") == 1
    [warning] = [r for r in caplog.records if "outside HYPAY_NOTIFY_ALLOWED_CIDRS" in r.getMessage()]
    assert warning.source_ip == "203.0.113.9"  # API Gateway's sourceIp, never X-Forwarded-For
    assert notify(raw, source_ip="not-an-ip").status == 200
    assert metric_totals(capsys.readouterr().out).get("NotifyOutsideAllowlist") == 1
    # The browser comes from the customer's own address: no allowlist there
    assert location(browser(raw))[0] == SUCCESS_PAGE
    # From inside the list (IPv6 too): processed, not counted
    assert notify(raw, source_ip="198.51.100.77").status == 200
    assert notify(raw, source_ip="2001:db8::5").status == 200
    assert "NotifyOutsideAllowlist" not in metric_totals(capsys.readouterr().out)
    assert env.credits() == before + 100


def test_empty_allowlist_is_a_warning_at_cold_start(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    payment = buy(env)
    notify(pay(env, payment).redirect_query)
    assert any("accepts any source address" in r.getMessage() for r in caplog.records)


# -- exactly once ----------------------------------------------------------------------------------


def test_same_hyp_id_for_another_payment_is_rejected(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hmac_only(monkeypatch)  # only a holder of the KEY could sign this; VERIFY would refuse it anyway
    first, second = buy(env, key="a"), buy(env, key="b")
    transaction = pay(env, first)
    assert notify(transaction.redirect_query).status == 200
    before = env.credits()
    reused = forge(
        [
            ("Id", transaction.id),
            ("CCode", "0"),
            ("Amount", "49.90"),
            ("ACode", "0012345"),
            ("Order", second["payment_id"]),
            ("Fild1", ""),
            ("Fild2", ""),
            ("Fild3", ""),
            ("Coin", "1"),
        ]
    )
    assert notify(reused).status == 409
    assert location(browser(reused))[0] == FAILURE_PAGE
    assert env.status(second["payment_id"]) == "pending" and env.credits() == before
    assert metric_totals(capsys.readouterr().out).get("DuplicateTransaction") == 2


def test_amount_mismatch_completes_nothing_flags_review_and_alarms(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hmac_only(monkeypatch)
    before = env.credits()
    payment = buy(env)
    cheap = forge(
        [
            ("Id", "55500002"),
            ("CCode", "0"),
            ("Amount", "1.00"),
            ("ACode", "0012345"),
            ("Order", payment["payment_id"]),
            ("Fild1", ""),
            ("Fild2", ""),
            ("Fild3", ""),
            ("Coin", "1"),
        ]
    )
    page, query = location(browser(cheap))
    assert page == PENDING_PAGE and query == {"payment_id": [payment["payment_id"]]}
    [(status, reason)] = env.rows(
        "SELECT status, review_reason FROM payments WHERE id = :p::uuid", p=payment["payment_id"]
    )
    assert status == "needs_review" and "amount mismatch" in reason
    assert env.credits() == before
    assert metric_totals(capsys.readouterr().out).get("AmountMismatch") == 1


@pytest.mark.parametrize("given_up", ["expired", "failed"])
def test_paid_after_giving_up_completes_by_itself_recording_the_status_it_had(env: Env, given_up: str) -> None:
    # Given a payment the cleanup expired (or a decline failed) before Hyp's genuine success arrived
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    env.rows("UPDATE payments SET status = :s WHERE id = :p::uuid", s=given_up, p=payment["payment_id"])
    # When the success arrives, exact amount and currency
    assert notify(transaction.redirect_query).status == 200
    # Then the payment completes, once, and the journal records what it was before
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100
    assert env.rows(
        "SELECT decision, previous_status FROM hypay_transactions WHERE hypay_id = :i", i=transaction.id
    ) == [["granted", given_up]]
    assert location(browser(transaction.redirect_query))[0] == SUCCESS_PAGE
    assert env.credits() == before + 100


def test_paid_after_expiry_with_another_amount_stays_in_review(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    hmac_only(monkeypatch)
    before = env.credits()
    payment = buy(env)
    env.rows("UPDATE payments SET status = 'expired' WHERE id = :p::uuid", p=payment["payment_id"])
    cheap = forge(
        [
            ("Id", "55500003"),
            ("CCode", "0"),
            ("Amount", "1.00"),
            ("ACode", "0012345"),
            ("Order", payment["payment_id"]),
            ("Fild1", ""),
            ("Fild2", ""),
            ("Fild3", ""),
            ("Coin", "1"),
        ]
    )
    assert notify(cheap).status == 200
    [(status, reason)] = env.rows(
        "SELECT status, review_reason FROM payments WHERE id = :p::uuid", p=payment["payment_id"]
    )
    assert status == "needs_review" and "55500003" in reason and "expired" in reason
    assert env.credits() == before
    assert env.rows("SELECT decision, previous_status FROM hypay_transactions") == [["review", "expired"]]


def test_card_is_saved_after_success_only_when_asked(env: Env) -> None:
    plain = buy(env, key="plain")
    notify(pay(env, plain).redirect_query)
    assert env.rows("SELECT count(*) FROM saved_cards") == [[0]]
    keep = buy(env, key="keep", save_card=True)
    transaction = pay(env, keep)
    notify(transaction.redirect_query)
    [(user, last4, length, payment_id)] = env.rows(
        "SELECT user_id::text, last4, length(token), payment_id::text FROM saved_cards"
    )
    assert (user, last4, length, payment_id) == (DEMO_USER_ID, APPROVING_CARD[-4:], 19, keep["payment_id"])
    # And the saved card then pays directly
    charged = post({"credit_pack_id": PRO, "saved_card": True, "cvv": "125"}, key="with-saved")
    assert charged.status == 201 and charged.json["status"] == "completed"


def test_connection_killed_inside_the_transaction_leaves_nothing_partial(env: Env) -> None:
    # Given the grant is slowed down inside the completing statement (a trigger sleeps), so the
    # connection can be killed while the transaction is open
    slow_down(env.rows, "slow_grant", "BEFORE INSERT ON credit_transactions FOR EACH ROW")
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)

    kills: list[int] = []
    done = threading.Event()

    def kill_while_granting() -> None:  # every attempt, the resent one included
        admin = connect(env.url)
        while not done.is_set():
            for (pid,) in admin.run(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%WITH paid AS%' "
                "AND pid <> pg_backend_pid() AND state = 'active'"
            ):
                admin.run("SELECT pg_terminate_backend(:p)", p=pid)
                kills.append(pid)
            time.sleep(0.02)
        admin.close()

    killer = threading.Thread(target=kill_while_granting)
    killer.start()
    # When the notification is processed and its connection dies mid-transaction (and again on the resend)
    answer = notify(transaction.redirect_query)
    done.set()
    killer.join(10)
    # Then it is not acknowledged (Hyp sends it again), and nothing of the grant was written (the
    # transaction is run once more on a fresh connection, and that one is killed too)
    assert len(kills) == 2, kills
    assert answer.status == 503
    assert env.status(payment["payment_id"]) == "pending" and env.credits() == before
    assert env.rows(
        "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=payment["payment_id"]
    ) == [[0]]
    # And the next delivery grants it, once
    env.rows("DROP TRIGGER slow_grant ON credit_transactions")
    assert notify(transaction.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100


# -- 50 concurrent deliveries over HTTP --------------------------------------------------------------


@pytest.fixture
def served(env: Env) -> Iterator[tuple[LocalApi, HypaySimulator]]:
    import os

    names = (
        "DATABASE_URL",
        "HYPAY_URL",
        "HYPAY_MASOF",
        "HYPAY_KEY",
        "HYPAY_PASSP",
        "WEB_APP_SUCCESS_URL",
        "WEB_APP_FAILURE_URL",
        "WEB_APP_PENDING_URL",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_TRACE_DISABLED",
    )
    api = LocalApi(
        load(),
        {n: os.environ[n] for n in names} | {"HYPAY_TIMEOUT": "10", "HYPAY_BUDGET": "20"},
        port=0,
        workers=4,
        run_schedules=False,
    )
    api.start()
    terminal = env.sim.terminals[public_test_terminal().masof]
    terminal.success_url = terminal.failure_url = f"{api.url}/hypay/return"
    terminal.notify_url = f"{api.url}/hypay/notify"
    yield api, env.sim
    api.stop()


def test_50_concurrent_deliveries_mixed_grant_credits_once(env: Env, served: tuple[LocalApi, HypaySimulator]) -> None:
    _, sim = served
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    results: dict[str, list[int]] = {}

    def burst(kind: str) -> None:
        results[kind] = sim.deliver(transaction, times=25, concurrently=True, notify=kind == "notify")

    threads = [threading.Thread(target=burst, args=(k,)) for k in ("redirect", "notify")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Every delivery was answered: browsers redirected, notifications acknowledged or asked to retry
    assert set(results["redirect"]) == {302} and set(results["notify"]) <= {200, 503}
    assert env.credits() == before + 100
    assert env.rows(
        "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=payment["payment_id"]
    ) == [[1]]
    assert env.status(payment["payment_id"]) == "completed"


def test_a_record_that_changes_under_the_claim_past_the_retries_is_not_yet(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a paid transaction, and a store that says its key is taken, then that no record holds it, every time:
    # Powertools gives up with its inconsistent-state error
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyItemAlreadyExistsError,
        IdempotencyItemNotFoundError,
    )

    from payments.idempotency import PostgresPersistenceLayer

    payment = buy(env)
    paid = pay(env, payment)
    real_put = PostgresPersistenceLayer._put_record

    def taken(self: PostgresPersistenceLayer, data_record: object) -> None:
        raise IdempotencyItemAlreadyExistsError()

    def absent(self: object, idempotency_key: str) -> None:
        raise IdempotencyItemNotFoundError()

    monkeypatch.setattr(PostgresPersistenceLayer, "_put_record", taken)
    monkeypatch.setattr(PostgresPersistenceLayer, "_get_record", absent)
    # When Hyp's notify and the browser's redirect arrive: Then "not yet" (503 with Retry-After, the pending page)
    answer = notify(paid.redirect_query)
    assert answer.status == 503 and "retry-after" in answer.headers
    assert location(browser(paid.redirect_query))[0] == "https://app.example.test/payments/confirming"
    assert env.status(payment["payment_id"]) == "pending"
    # And once the store answers again, the next delivery completes the payment
    monkeypatch.setattr(PostgresPersistenceLayer, "_put_record", real_put)
    assert notify(paid.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed"

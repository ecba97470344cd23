"""The edges an outside review found: failures of ours that must stay "not yet", unverified callbacks an
attacker must not be able to overwrite, and verified oddities that must be journaled, never dropped."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ops.seed import DEMO_USER_ID
from ops.template import load_module
from payments.errors import ConfigurationError, GatewayUnavailable, SecretUnavailable
from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_callback_attacks import use_mode
from tests.integration.test_hypay_callback import (
    PENDING_PAGE,
    browser,
    buy,
    forge,
    location,
    metric_totals,
    notify,
    pay,
)
from tests.support.api import TEMPLATE, reset_function_state
from tests.support.payments import CALLBACK, CREATE, CVV, PRO, SUCCESS_PAGE, Env, post
from tests.support.pg import database


def claim(payment_id: str, hyp_id: str = "77700001", ccode: str = "0", amount: str = "49.90") -> list[tuple[str, str]]:
    return [
        ("Id", hyp_id),
        ("CCode", ccode),
        ("Amount", amount),
        ("ACode", "0012345"),
        ("Order", payment_id),
        ("Fild1", ""),
        ("Fild2", ""),
        ("Fild3", ""),
    ]


def hourly_cleanup_long_after(env: Env) -> None:
    env.rows("UPDATE payments SET created_at = now() - interval '1 day'")
    db = database(env.url)
    run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=60))
    db.close()


@pytest.mark.parametrize(
    "failure",
    [GatewayUnavailable("could not read the Hypay secret"), ConfigurationError("Hypay credentials lack KEY")],
    ids=["secret-outage", "bad-secret"],
)
def test_saved_card_credentials_unreadable_is_503_nothing_charged_and_the_retry_charges(
    env: Env, saved_card: str, failure: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given our Hyp credentials cannot be read (Secrets Manager outage, malformed secret)
    gateway = load_module(TEMPLATE.functions[CREATE])._service().deps.gateway
    real = gateway._credentials

    def unreadable() -> None:
        raise failure

    gateway._credentials = unreadable
    body = {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}
    answer = post(body, key="sc-1")
    gateway._credentials = real
    # Then "not yet": 503 to retry, Hyp never asked, no review, no alarm
    assert answer.status == 503 and answer.headers["retry-after"], answer.body
    assert env.sim.calls.count("soft") == 0
    assert "ChargeOutcomeUnknown" not in metric_totals(capsys.readouterr().out)
    # And the retry with the same key charges, once
    retried = post(body, key="sc-1")
    assert retried.status == 201 and retried.json["status"] == "completed", retried.body
    assert env.sim.calls.count("soft") == 1


def test_missing_configuration_keeps_the_paid_callback_and_the_cleanup_never_expires_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    # Given the Hyp configuration is broken (PassP missing)
    monkeypatch.delenv("HYPAY_PASSP")
    from payments.adapters import hypay

    hypay.hypay_settings.cache_clear()
    reset_function_state(CALLBACK)
    # When Hyp's genuine callback arrives (redirect and notify)
    assert notify(transaction.redirect_query).status == 503
    assert location(browser(transaction.redirect_query))[0] == PENDING_PAGE
    # Then it is kept, and the cleanup leaves the payment pending
    # (the redirect and the notify carry the same query string: one row, two deliveries)
    assert env.rows("SELECT count(*), sum(deliveries) FROM hypay_unverified_callbacks") == [[1, 2]]
    assert env.rows("SELECT decision, verified FROM hypay_transactions") == [["unverified", False]]
    hourly_cleanup_long_after(env)
    assert env.status(payment["payment_id"]) == "pending"
    # And once fixed, the next delivery completes it
    monkeypatch.setenv("HYPAY_PASSP", "yaad")
    hypay.hypay_settings.cache_clear()
    reset_function_state(CALLBACK)
    assert notify(transaction.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == before + 100


def test_a_forgery_during_an_outage_cannot_overwrite_the_kept_genuine_callback(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mode(monkeypatch, "both")
    payment = buy(env)
    victim = payment["payment_id"]
    transaction = pay(env, payment)
    attacker = buy(env, key="attacker")["payment_id"]
    # Given Hyp is unreachable, and the genuine redirect was kept unverified
    for action in ("VERIFY", "SIGN"):
        env.sim.faults.add(action, "http500", times=100)
    assert location(browser(transaction.redirect_query))[0] == PENDING_PAGE
    # When a forgery (no KEY) claims the same Hyp Id for another payment
    forged = forge(claim(attacker, hyp_id=transaction.id), key="0" * 40)
    assert notify(forged).status == 503
    # Then the genuine callback is still on record, as received, naming the victim's payment
    [(pid, raw)] = env.rows("SELECT payment_id::text, raw_callback FROM hypay_transactions")
    assert (pid, raw) == (victim, transaction.redirect_query)
    kept = {r[0] for r in env.rows("SELECT raw_callback FROM hypay_unverified_callbacks")}
    assert transaction.redirect_query in kept
    # And the cleanup never expires the victim's payment
    hourly_cleanup_long_after(env)
    assert env.status(victim) == "pending"


def test_an_approval_after_a_decline_of_the_same_id_goes_to_review_with_an_alarm(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_mode(monkeypatch, "hmac")
    before = env.credits()
    payment = buy(env)
    assert notify(forge(claim(payment["payment_id"], ccode="4"))).status == 200
    assert env.status(payment["payment_id"]) == "failed"
    # When the same Hyp Id now says approved
    assert notify(forge(claim(payment["payment_id"], ccode="0"))).status == 200
    # Then never silently: the payment and the journal row are in review, counted for the alarm
    assert env.status(payment["payment_id"]) == "needs_review" and env.credits() == before
    assert env.rows("SELECT decision, ccode FROM hypay_transactions") == [["review", 0]]
    assert metric_totals(capsys.readouterr().out).get("PaidNotPending") == 1


def test_a_verified_callback_in_an_unknown_currency_is_journaled_for_review(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mode(monkeypatch, "both")
    before = env.credits()
    payment = buy(env)
    transaction = pay(env, payment)
    # Given Hyp's own redirect said Coin=5 (VERIFY covers it: the simulator's record is rewritten to match)
    odd = transaction.redirect_query.replace("Coin=1", "Coin=5")
    transaction.redirect_query = odd
    assert notify(odd).status == 200
    assert env.status(payment["payment_id"]) == "needs_review" and env.credits() == before
    assert env.rows("SELECT decision, currency FROM hypay_transactions") == [["review", None]]


def test_a_paid_callback_with_an_overlong_order_is_journaled_unmatched(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mode(monkeypatch, "hmac")
    assert notify(forge(claim("x" * 500))).status == 404
    assert env.rows("SELECT decision, length(order_ref) FROM hypay_transactions") == [["unmatched", 200]]


@pytest.mark.parametrize("legacy", ["paid", "cancelled"])
def test_a_payment_with_a_legacy_status_is_read_and_money_for_it_goes_to_review(
    env: Env, monkeypatch: pytest.MonkeyPatch, legacy: str
) -> None:
    use_mode(monkeypatch, "hmac")
    before = env.credits()
    payment = buy(env)
    # Given a status the web app wrote before this backend (kept by `make migrate --adopt-legacy`)
    env.rows("ALTER TABLE payments DROP CONSTRAINT payments_status_check")
    env.rows("UPDATE payments SET status = :s WHERE id = :p::uuid", s=legacy, p=payment["payment_id"])
    # Then its owner reads it (never a 500), and a paid callback for it is journaled for review
    from ops.seed import DEMO_USER_ID
    from tests.support.api import invoke

    read = invoke(CREATE, "GET", f"/payments/{payment['payment_id']}", user=DEMO_USER_ID)
    assert read.status == 200 and read.json["status"] == "legacy", read.body
    assert notify(forge(claim(payment["payment_id"]))).status == 200
    assert env.rows("SELECT decision FROM hypay_transactions") == [["review"]]
    assert env.status(payment["payment_id"]) == legacy and env.credits() == before


def test_a_resent_rate_limit_statement_counts_the_request_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from payments.adapters.payments_store import PaymentsStore
    from tests.support.faults import Injector
    from tests.support.pg import connect

    store = PaymentsStore(database(env.url))
    admin = connect(env.url)
    injector = Injector(admin)
    injector.install(monkeypatch)
    try:
        # Given the counting upsert ran, then its answer was lost (the connection dropped): Database.run resends
        with injector.invocation(at=0, fault="drop_after"):
            count, _ = store.hit_rate_limit("create_payment:resend", 3600, request="key-1", limit=10)
        assert injector.fired is not None and not injector.problems
        # Then the request was counted once, and a different request counts as the second
        assert count == 1
        assert store.hit_rate_limit("create_payment:resend", 3600, request="key-2", limit=10)[0] == 2
        # And a client's retry with the same key right after is the same request
        assert store.hit_rate_limit("create_payment:resend", 3600, request="key-2", limit=10)[0] == 2
    finally:
        admin.close()


def test_an_approved_charge_answer_without_a_transaction_id_goes_to_review(
    env: Env, saved_card: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given Hyp approves the saved-card charge but its answer carries no transaction Id ("CCode=0" alone)
    env.sim.faults.add("soft", "ccode", ccode=0)
    answer = post({"credit_pack_id": PRO, "saved_card": True}, key="no-id-1")
    # Then the money may have moved: never a charge recorded under a blank Id, the payment goes to review
    assert answer.status == 202 and answer.json["status"] == "needs_review", answer.body
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id = '' OR hypay_id ~ '^0+$'") == [[0]]
    assert metric_totals(capsys.readouterr().out).get("ChargeOutcomeUnknown") == 1
    # And a retry with the same key never charges again
    assert post({"credit_pack_id": PRO, "saved_card": True}, key="no-id-1").status == 202
    assert env.sim.calls.count("soft") == 1


@pytest.mark.parametrize("hyp_id", ["0", "0000"])
def test_an_all_zero_id_is_no_hyp_transaction(env: Env, saved_card: str, hyp_id: str) -> None:
    # Given two declines that both name the Id 0 (a charge answer, a callback)
    env.sim.faults.add("soft", "ccode", ccode=6)
    declined = post({"credit_pack_id": PRO, "saved_card": True}, key="zero-1")
    assert declined.status == 402, declined.body
    payment = buy(env, key="zero-2")
    raw = forge(claim(payment["payment_id"], hyp_id=hyp_id, ccode="6"))
    answer = notify(raw)
    # Then neither is journaled under that Id (all such failures would share one row and one key): the
    # callback is malformed (400, nothing written), the charge's decline is stored on its payment
    assert answer.status == 400 and "not all zeros" in answer.json["detail"], answer.body
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id ~ '^0+$'") == [[0]]
    assert env.status(declined.json["payment_id"]) == "failed"
    assert env.status(payment["payment_id"]) == "pending"


def test_a_card_not_saved_for_an_outage_is_saved_by_the_next_delivery(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a buyer who asked to keep the card pays, and Hyp's getToken is down when the notify arrives
    payment = buy(env, key="keep-1", save_card=True)
    transaction = pay(env, payment)
    env.sim.faults.add("getToken", "http500", times=2)  # the first attempt and its one retry
    first = notify(transaction.redirect_query)
    # Then the credits are granted, the card is not saved yet, and the delivery is "not yet" (Hyp sends it again)
    assert first.status == 503 and first.headers.get("retry-after"), first.body
    assert env.status(payment["payment_id"]) == "completed"
    credits = env.credits()
    assert env.rows("SELECT count(*) FROM saved_cards") == [[0]]
    assert metric_totals(capsys.readouterr().out).get("CardNotSavedYet") == 1
    # When Hyp sends it again (or the browser reloads the redirect)
    again = notify(transaction.redirect_query)
    # Then the card is saved, and nothing is granted twice
    assert again.status == 200, again.body
    assert env.rows("SELECT count(*) FROM saved_cards WHERE payment_id = :p::uuid", p=payment["payment_id"]) == [[1]]
    assert env.credits() == credits
    # And later deliveries owe nothing more
    assert browser(transaction.redirect_query).status == 302
    assert env.sim.calls.count("getToken") == 3


def test_an_older_payments_card_never_replaces_a_newer_one(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from payments.adapters.db import QueryError
    from payments.adapters.payments_store import PaymentsStore

    # Given payment A completes but its card cannot be saved yet (getToken down: "not yet")
    older = buy(env, key="card-a", save_card=True)
    older_txn = pay(env, older)
    env.sim.faults.add("getToken", "http500", times=2)
    assert notify(older_txn.redirect_query).status == 503
    # And then payment B completes and its card is saved
    newer = buy(env, key="card-b", save_card=True)
    newer_txn = pay(env, newer)
    assert notify(newer_txn.redirect_query).status == 200
    saved = "SELECT payment_id::text FROM saved_cards"
    assert env.rows(saved) == [[newer["payment_id"]]]
    # When A's notify comes again (Hyp retries) / Then nothing is owed for A any more: B's card stays
    assert notify(older_txn.redirect_query).status == 200
    assert env.rows(saved) == [[newer["payment_id"]]]
    # And a late save of A's card (a slow getToken that answers after B's) never replaces B's
    store = PaymentsStore(database(env.url))
    store.save_card(
        user_id=DEMO_USER_ID,
        payment_id=older["payment_id"],
        token="1" * 19,
        expiry_month=1,
        expiry_year=2031,
        last4="1111",
    )
    assert env.rows(saved) == [[newer["payment_id"]]]

    # And a conflict while saving a card (a database conflict that outlasted its retries) is "not yet", not lost
    third = buy(env, key="card-c", save_card=True)
    third_txn = pay(env, third)
    real = PaymentsStore.save_card

    def conflicted(self: PaymentsStore, **kwargs: object) -> None:
        monkeypatch.setattr(PaymentsStore, "save_card", real)
        raise QueryError("could not serialize access", "40001")

    monkeypatch.setattr(PaymentsStore, "save_card", conflicted)
    assert notify(third_txn.redirect_query).status == 503
    assert notify(third_txn.redirect_query).status == 200
    assert env.rows(saved) == [[third["payment_id"]]]


# -- a saved-card charge's answer in a shape we do not expect (a second outside review) -----------------------


def _answers_rewritten(env: Env, monkeypatch: pytest.MonkeyPatch, change: Callable[[str], str]) -> list[str]:
    """Hyp really charges (the simulator records it); its answer reaches us rewritten. The Ids it charged."""
    real = env.sim._soft
    charged: list[str] = []

    def soft(params: dict[str, str]) -> str:
        answer = real(params)
        charged.append(re.search(r"(?:^|&)Id=(\d+)", answer).group(1))  # type: ignore[union-attr]
        return change(answer)

    monkeypatch.setattr(env.sim, "_soft", soft)
    return charged


def _field(name: str, value: str | None) -> Callable[[str], str]:
    """The answer with `name`'s value replaced (None: the field left out)."""

    def change(answer: str) -> str:
        kept = [p for p in answer.split("&") if not p.startswith(f"{name}=")]
        return "&".join(kept if value is None else [*kept, f"{name}={value}"])

    return change


@pytest.mark.parametrize(
    ("change", "said"),
    [
        pytest.param(_field("Amount", "199%2C00"), "an amount that could not be read", id="amount-with-a-comma"),
        pytest.param(_field("Amount", "1%2C199.00"), "an amount that could not be read", id="thousands-separator"),
        pytest.param(_field("Amount", "1e3"), "an amount that could not be read", id="exponent"),
        pytest.param(_field("Amount", "99999999999.00"), "an amount that could not be read", id="beyond-the-journal"),
        pytest.param(_field("Amount", None), "an amount that could not be read", id="no-amount"),
        pytest.param(_field("Coin", "9"), "paid 199.00 ILS", id="a-coin-we-do-not-sell-in"),
    ],
)
def test_an_approved_charge_whose_amount_cannot_be_read_is_journaled_for_review_never_granted_as_the_price(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch, change: Callable[[str], str], said: str
) -> None:
    # Given Hyp charged the saved card, and answered approved with its Id but an amount we cannot take as asked
    before = env.credits()
    charged = _answers_rewritten(env, monkeypatch, change)
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="odd-answer")
    # Then the payment is "being confirmed" and in review, nothing granted, and Hyp's transaction is a journal row
    # decided `review` (an operator can complete the payment with it), never the price taken for granted
    assert answer.status == 202 and env.credits() == before, answer.body
    [[decision, detail, payment_id]] = env.rows(
        "SELECT decision, detail, payment_id::text FROM hypay_transactions WHERE hypay_id = :i", i=charged[0]
    )
    assert decision == "review" and said in detail and "amount mismatch" in detail
    assert env.status(payment_id) == "needs_review" and env.sim.calls.count("soft") == 1
    # And a retry with the key charges nothing again
    assert post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="odd-answer").status == 202
    assert env.sim.calls.count("soft") == 1 and env.credits() == before


def test_a_charge_answer_without_a_ccode_names_hyps_id_on_the_payment_in_review(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Hyp's answer carries its transaction Id but no CCode: charged or not, nobody knows
    charged = _answers_rewritten(env, monkeypatch, _field("CCode", None))
    before = env.credits()
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="no-ccode")
    # Then the payment is in review and its row names that Id (a resolve can complete the payment with it), never
    # granted, never charged again
    assert answer.status == 202 and env.credits() == before
    [[status, reason]] = env.rows(
        "SELECT status, review_reason FROM payments WHERE id = :i::uuid", i=answer.json["payment_id"]
    )
    assert status == "needs_review" and f"check Hyp transaction {charged[0]}" in reason
    assert post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="no-ccode").status == 202
    assert env.sim.calls.count("soft") == 1


def test_a_key_rotated_at_hyp_makes_genuine_callbacks_not_yet_once_the_credentials_check_is_seconds_old(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import time as real_time
    from types import SimpleNamespace

    from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_MASOF, redirect_sign
    from payments.adapters import hypay as client
    from payments.domain import hypay as protocol

    payment = buy(env)
    transaction = pay(env, payment)
    # Given a forgery a moment ago: Hyp confirmed our credentials, and that yes is reused for a few seconds only
    assert notify(forge(claim(payment["payment_id"], hyp_id="99900001"), key="0" * 40)).status == 403
    # When the terminal's KEY is rotated in Hyp's portal (our secret still holds the old one), and Hyp's genuine
    # notification, signed with the new KEY, arrives once those seconds are over
    new_key = "f" * 40
    env.sim.terminals[PUBLIC_TEST_TERMINAL_MASOF].key = new_key
    pairs = protocol.split_raw_query(transaction.redirect_query)
    sign = redirect_sign(dict(pairs), new_key)
    genuine = "&".join(f"{k}={sign if k == 'Sign' else v}" for k, v in pairs)
    later = client.CREDENTIALS_CHECK_REUSE_SECONDS + 0.5
    monkeypatch.setattr(client, "time", SimpleNamespace(monotonic=lambda: real_time.monotonic() + later))
    capsys.readouterr()
    answer = notify(genuine)
    # Then it is "not yet" (ours: our KEY is off), kept for reconciliation, and the alarm's metric counted; never
    # taken for a forgery
    assert answer.status == 503, answer.body
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE hypay_id = :i", i=transaction.id) == [[1]]
    totals = metric_totals(capsys.readouterr().out)
    assert totals.get("CallbackNotVerifiable") == 1 and "VerificationFailed" not in totals
    assert env.status(payment["payment_id"]) == "pending"


def test_a_verified_callback_the_database_refuses_to_settle_is_kept_alarmed_and_never_expired(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a grant the database refuses for good (the balance, grown since the sale, would leave the integer range)
    payment = buy(env)
    env.rows("UPDATE profiles SET credits = 2147483600 WHERE id = :u::uuid", u=DEMO_USER_ID)
    transaction = pay(env, payment)
    # When Hyp's genuine notification arrives, again and again
    capsys.readouterr()
    assert [notify(transaction.redirect_query).status for _ in range(3)] == [503, 503, 503]
    # Then nothing is granted, each delivery is counted for the alarm, and the callback is kept as received (the
    # journal's row says why), so that the hourly cleanup leaves the payment Hyp charged alone
    assert metric_totals(capsys.readouterr().out).get("CallbackNotSettled") == 3
    [[decision, detail]] = env.rows(
        "SELECT decision, detail FROM hypay_transactions WHERE hypay_id = :i", i=transaction.id
    )
    assert decision == "unverified" and detail == "verified, but not settled: database error 22003"
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE hypay_id = :i", i=transaction.id) == [[1]]
    hourly_cleanup_long_after(env)
    assert env.status(payment["payment_id"]) == "pending"
    # And once the cause is fixed, the next delivery settles it: granted once
    env.rows("UPDATE profiles SET credits = 0 WHERE id = :u::uuid", u=DEMO_USER_ID)
    assert notify(transaction.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed" and env.credits() == 100


@pytest.mark.parametrize("ccode", [901, 902, 400, 401, 402])
def test_hyp_refusing_our_own_saved_card_request_is_not_yet_and_the_same_key_then_charges_once(
    env: Env, saved_card: str, capsys: pytest.CaptureFixture[str], ccode: int
) -> None:
    # Given Hyp refuses our terminal's permission or credentials for the charge, or finds our request invalid (its
    # validation codes, 400-402). Ours: nothing moved
    before = env.credits()
    env.sim.faults.add("soft", "ccode", ccode=ccode)
    capsys.readouterr()
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="own")
    # Then "not yet" (503, counted for its alarm), never the customer's payment failed: it stays pending with its
    # charge attempt released
    assert answer.status == 503 and answer.headers["retry-after"], answer.body
    assert metric_totals(capsys.readouterr().out).get("GatewayRefusedOurRequest") == 1
    [[status, attempt]] = env.rows("SELECT status, charge_attempt_id FROM payments ORDER BY created_at DESC LIMIT 1")
    assert (status, attempt) == ("pending", None)
    # And once fixed, the same key charges, once
    retried = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="own")
    assert retried.status == 201 and env.credits() == before + 500
    charged = [t for t in env.sim.transactions.values() if t.ccode == 0 and not t.redirect_query]  # by token
    assert env.sim.calls.count("soft") == 2 and len(charged) == 1


@pytest.mark.parametrize("ccode", [902, 400, 401, 402])
def test_hyp_refusing_our_credentials_for_a_payment_page_is_not_yet_and_alarmed(
    env: Env, capsys: pytest.CaptureFixture[str], ccode: int
) -> None:
    from tests.support.payments import STARTER

    # Given Hyp refuses our credentials, or finds our request invalid, when asked to sign a payment page
    env.sim.faults.add("SIGN", "ccode", ccode=ccode)
    capsys.readouterr()
    answer = post({"credit_pack_id": STARTER}, key="page")
    assert answer.status == 503 and answer.headers["retry-after"], answer.body
    assert metric_totals(capsys.readouterr().out).get("GatewayRefusedOurRequest") == 1
    assert post({"credit_pack_id": STARTER}, key="page").status == 201


@contextmanager
def _hyp_settings(monkeypatch: pytest.MonkeyPatch, **values: str | None) -> Iterator[None]:
    """create_payment with these Hyp settings (None: unset), then as before."""
    from payments.settings import hypay_settings

    before = {name: os.environ.get(name) for name in values}

    def use(settings: dict[str, str | None]) -> None:
        for name, value in settings.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        hypay_settings.cache_clear()
        reset_function_state(CREATE)

    use(values)
    try:
        yield
    finally:
        use(before)


def test_a_hyp_configuration_missing_is_not_yet_logged_and_alarmed(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support.payments import STARTER

    # Given the terminal's PassP missing (a secret still holding its placeholder, a rotation half done)
    capsys.readouterr()
    with _hyp_settings(monkeypatch, HYPAY_PASSP=None):
        answer = post({"credit_pack_id": STARTER}, key="unconfigured")
    # Then "not yet" for the caller, and for a human an alarmed count and a log line that names what is missing
    assert answer.status == 503 and answer.headers["retry-after"], answer.body
    out = capsys.readouterr().out
    assert metric_totals(out).get("NotConfigured") == 1
    [line] = [r for r in caplog.records if r.getMessage() == "the service is not configured"]
    assert line.levelname == "ERROR" and "HYPAY_PASSP" in line.reason, line.__dict__  # type: ignore[attr-defined]
    # And once fixed, the same key creates the payment
    assert post({"credit_pack_id": STARTER}, key="unconfigured").status == 201


def test_a_hyp_secret_that_cannot_be_read_for_good_is_not_yet_logged_and_alarmed(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from moto import mock_aws

    from tests.support.payments import STARTER

    # Given the Hyp secret's ARN naming no secret (a typo, another region; the same for a role or a key policy
    # that does not let the function read it)
    nowhere = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/nope-AbCdEf"
    capsys.readouterr()
    with mock_aws(), _hyp_settings(monkeypatch, AWS_DEFAULT_REGION="eu-west-1", HYPAY_SECRET_ARN=nowhere):
        answer = post({"credit_pack_id": STARTER}, key="unreadable")
    # Then "not yet" for the caller, and for a human an alarmed count and a log line naming the secret and the error
    assert answer.status == 503, answer.body
    assert metric_totals(capsys.readouterr().out).get("NotConfigured") == 1
    [line] = [r for r in caplog.records if r.getMessage() == "a secret cannot be read"]
    assert (line.secret, line.error) == ("Hypay", "ResourceNotFoundException"), line.__dict__  # type: ignore[attr-defined]


def _fail_once_at_get_token(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """The next getToken finds the Hyp secret unreadable (its first step reads the credentials); later ones read it."""
    from payments.adapters.hypay import HypayClient

    real = HypayClient.get_token
    failures = [error]

    def get_token(client: HypayClient, transaction_id: str) -> object:
        if not failures:
            return real(client, transaction_id)
        fault = failures.pop()
        working = client._credentials

        def unreadable() -> object:
            raise fault

        client._credentials = unreadable  # type: ignore[method-assign]
        try:
            return real(client, transaction_id)
        finally:
            client._credentials = working  # type: ignore[method-assign]

    monkeypatch.setattr(HypayClient, "get_token", get_token)


@pytest.mark.parametrize(
    "error",
    [
        ConfigurationError("the Hyp secret is not a JSON object"),  # malformed, or a field missing, after a rotation
        SecretUnavailable("Secrets Manager is unavailable"),
    ],
    ids=["malformed", "unavailable"],
)
def test_a_card_not_saved_because_our_hyp_secret_failed_is_saved_by_the_next_delivery(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    # Given a buyer who asked to keep the card pays, and the Hyp secret cannot be read when getToken is asked
    payment = buy(env, key="keep-secret", save_card=True)
    transaction = pay(env, payment)
    _fail_once_at_get_token(monkeypatch, error)
    first = notify(transaction.redirect_query)
    # Then the failure is ours: "not yet" (Hyp sends the notify again), never a final "not saved"
    assert first.status == 503 and first.headers.get("retry-after"), first.body
    assert env.status(payment["payment_id"]) == "completed"
    totals = metric_totals(capsys.readouterr().out)
    assert totals.get("CardNotSavedYet") == 1 and not totals.get("CardNotSaved"), totals
    # And the next delivery keeps the card
    assert notify(transaction.redirect_query).status == 200
    assert env.rows("SELECT count(*) FROM saved_cards WHERE payment_id = :p::uuid", p=payment["payment_id"]) == [[1]]


@pytest.mark.parametrize("sqlstate", ["53100", "53200", "58030"])  # out of disk, out of memory, an I/O error
def test_a_card_not_saved_for_a_database_failure_that_passes_is_saved_by_the_next_delivery(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sqlstate: str
) -> None:
    import pg8000.native
    from pg8000.exceptions import DatabaseError

    # Given a buyer who asked to keep the card pays, and the database fails the card's INSERT with a passing error
    payment = buy(env, key=f"keep-{sqlstate}", save_card=True)
    transaction = pay(env, payment)
    real_run = pg8000.native.Connection.run
    failures = [sqlstate]

    def run(conn: pg8000.native.Connection, sql: str, stream: object = None, types: object = None, **params: object):  # noqa: ANN202
        if failures and "INSERT INTO public.saved_cards" in " ".join(sql.split()):
            raise DatabaseError({"S": "ERROR", "C": failures.pop(), "M": "could not extend file"})
        return real_run(conn, sql, stream=stream, types=types, **params)

    monkeypatch.setattr(pg8000.native.Connection, "run", run)
    first = notify(transaction.redirect_query)
    # Then it is "not yet", and the next delivery keeps the card
    assert first.status == 503 and first.headers.get("retry-after"), first.body
    totals = metric_totals(capsys.readouterr().out)
    assert totals.get("CardNotSavedYet") == 1 and not totals.get("CardNotSaved"), totals
    assert notify(transaction.redirect_query).status == 200
    assert env.rows("SELECT count(*) FROM saved_cards WHERE payment_id = :p::uuid", p=payment["payment_id"]) == [[1]]


def test_a_card_the_database_refuses_for_good_is_given_up_once_not_not_yet_forever(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a buyer who asked to keep the card pays, and Hyp's getToken gives an expiry whose month (13) the
    # saved_cards CHECK refuses (sql/003): the same refusal on every attempt
    payment = buy(env, key="keep-month-13", save_card=True)
    transaction = env.sim.pay(payment["payment_url"], month="13")
    assert transaction.ccode == 0
    # When Hyp delivers its notify, and again, and the buyer's browser comes back
    answers = [notify(transaction.redirect_query) for _ in range(3)]
    back = browser(transaction.redirect_query)
    totals = metric_totals(capsys.readouterr().out)
    # Then the card is given up (counted, CardNotSaved) and every delivery is answered: never "not yet" on each one
    # (Hyp would send it until it gives up; the browser would never see its success)
    assert [a.status for a in answers] == [200, 200, 200], [(a.status, a.body[:120]) for a in answers]
    assert back.status == 302 and location(back)[0] == SUCCESS_PAGE, back.headers
    assert totals.get("CardNotSaved", 0) >= 1 and not totals.get("CardNotSavedYet"), totals
    assert env.status(payment["payment_id"]) == "completed"
    assert env.rows("SELECT count(*) FROM saved_cards") == [[0]]


def test_a_card_a_trigger_refuses_is_given_up_once(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a trigger on saved_cards that refuses every card (RAISE: P0001), and a buyer who asked to keep theirs
    env.rows("""
        CREATE FUNCTION refuse_cards() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'no cards kept here'; END $$;
        CREATE TRIGGER refuse_cards BEFORE INSERT OR UPDATE ON saved_cards FOR EACH ROW EXECUTE FUNCTION refuse_cards();
    """)
    payment = buy(env, key="keep-trigger", save_card=True)
    transaction = pay(env, payment)
    # When Hyp delivers its notify twice / Then the card is given up once, every delivery answered
    assert [notify(transaction.redirect_query).status for _ in range(2)] == [200, 200]
    totals = metric_totals(capsys.readouterr().out)
    assert totals.get("CardNotSaved", 0) >= 1 and not totals.get("CardNotSavedYet"), totals


def test_a_card_not_saved_because_our_grant_is_missing_is_saved_once_it_is_back(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a buyer who asked to keep the card pays, and the backend's role lost its grant on saved_cards (a
    # deployment's mistake: 42501, as a table missing or a read-only server after a failover would be)
    payment = buy(env, key="keep-grant", save_card=True)
    transaction = pay(env, payment)
    env.rows("REVOKE INSERT, UPDATE ON public.saved_cards FROM payments_backend")
    try:
        first = notify(transaction.redirect_query)
    finally:
        env.rows("GRANT INSERT, UPDATE ON public.saved_cards TO payments_backend")
    # Then it is ours: "not yet", never the card given up
    totals = metric_totals(capsys.readouterr().out)
    assert first.status == 503, (first.status, first.body[:200])
    assert totals.get("CardNotSavedYet") == 1 and not totals.get("CardNotSaved"), totals
    # And once the grant is back, the next delivery keeps the card
    assert notify(transaction.redirect_query).status == 200
    assert env.rows("SELECT count(*) FROM saved_cards WHERE payment_id = :p::uuid", p=payment["payment_id"]) == [[1]]


def test_a_token_hyp_answers_unusable_is_given_up_once_not_not_yet_forever(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a buyer who asked to keep the card pays, and Hyp's getToken approves with a token that is not a Hyp token
    # (8 digits), as it answers every time for that transaction
    payment = buy(env, key="keep-bad-token", save_card=True)
    transaction = pay(env, payment)
    env.sim.transactions[transaction.id].token = "12345678"
    # When Hyp delivers its notify, and again, and the browser comes back
    answers = [notify(transaction.redirect_query) for _ in range(3)]
    back = browser(transaction.redirect_query)
    totals = metric_totals(capsys.readouterr().out)
    # Then the card is given up once (CardNotSaved), every delivery answered, the browser shown its success
    assert [a.status for a in answers] == [200, 200, 200], [(a.status, a.body[:120]) for a in answers]
    assert location(back)[0] == SUCCESS_PAGE, back.headers
    assert totals.get("CardNotSaved", 0) >= 1 and not totals.get("CardNotSavedYet"), totals
    assert env.status(payment["payment_id"]) == "completed"

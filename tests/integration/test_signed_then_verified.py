"""Deliveries of one Hyp transaction settled on their Sign alone (VERIFY calling them not genuine: the terminal's
"verify by signature" off, or an unsigned field edited), before or after Hyp's verified delivery, and after a VERIFY
outage: the journal never holds a currency nobody verified, a Sign-only copy raises no contradiction over a field it
never read, an invoice is filled in only where the verified delivery agrees with the grant, and credits, invoices and
saved cards stay one per payment (page payments, a payment paid twice, late payments, a USD payment)."""

from __future__ import annotations

import pytest

from ops.hypay_simulator import Transaction
from payments.domain import hypay as protocol
from tests.integration.test_callback_attacks import use_mode
from tests.integration.test_hypay_callback import browser, buy, forge, location, notify, pay
from tests.integration.test_signed_edited_first import _invoices_on
from tests.support.payments import SUCCESS_PAGE, Env

UNKNOWN_ORDER = "0f0f0f0f-0000-4000-8000-00000000abcd"


def _unknown_usd_transaction(env: Env) -> Transaction:
    """A USD transaction Hyp approved for an Order that is not one of our payments (VERIFY confirms its text)."""
    raw = forge(
        [
            ("Id", "77700001"),
            ("CCode", "0"),
            ("Amount", "49.90"),
            ("ACode", "0012345"),
            ("Order", UNKNOWN_ORDER),
            ("Fild1", ""),
            ("Fild2", ""),
            ("Fild3", ""),
            ("Coin", "2"),
            ("L4digit", "0000"),
            ("Hesh", "0"),
        ]
    )
    t = Transaction(
        id="77700001",
        masof=next(iter(env.sim.terminals)),
        ccode=0,
        amount="49.90",
        coin="2",
        order=UNKNOWN_ORDER,
        card_last4="0000",
        expiry_month="12",
        expiry_year="2030",
        redirect_query=raw,
    )
    env.sim.transactions[t.id] = t
    return t


@pytest.mark.parametrize("sign_only_first", [False, True], ids=["verified-only", "sign-only-first"])
def test_unmatched_usd_transaction_journal_currency(env: Env, sign_only_first: bool) -> None:
    t = _unknown_usd_transaction(env)
    if sign_only_first:
        env.sim.faults.add("VERIFY", "ccode", ccode=902, times=10)  # the terminal's "verify by signature" off
        assert notify(t.redirect_query).status == 404
        env.sim.faults.clear()
    assert notify(t.redirect_query).status == 404
    # Hyp's verified delivery says USD; the journal must never hold a currency nobody verified
    assert env.rows("SELECT decision, verified, currency FROM hypay_transactions") == [["unmatched", True, "USD"]]


def test_unmatched_transaction_in_hmac_mode_journals_no_currency(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hmac` mode reads no Coin, and an Order not ours has no payment to take a currency from: unknown, not ILS."""
    use_mode(monkeypatch, "hmac")
    t = _unknown_usd_transaction(env)
    assert notify(t.redirect_query).status == 404
    assert env.rows("SELECT decision, verified, currency FROM hypay_transactions") == [["unmatched", True, None]]


@pytest.mark.parametrize("sign_only_first", [False, True], ids=["verified-only", "sign-only-first"])
def test_verified_delivery_contradicting_the_sign_only_grant_fills_no_invoice(
    env: Env, monkeypatch: pytest.MonkeyPatch, sign_only_first: bool
) -> None:
    # Given an ILS payment, and Hyp's genuine (VERIFY-confirmed) delivery saying it charged another currency (USD)
    _invoices_on(monkeypatch)
    payment = buy(env)
    paid = pay(env, payment)
    original = paid.redirect_query
    assert "Coin=1" in original and protocol.decode_query(original)["Hesh"] != "0"
    usd = original.replace("Coin=1", "Coin=2")
    paid.coin, paid.redirect_query = "2", usd  # what Hyp reports: VERIFY confirms this text, not `original`
    if sign_only_first:
        # the Coin=1 copy (Sign right, VERIFY says no): settled on its Sign, in the payment's currency
        assert location(browser(original))[0] == SUCCESS_PAGE
    notify(usd)
    rows = env.rows("SELECT status FROM payments WHERE id = :p::uuid", p=payment["payment_id"])
    invoices = env.rows(
        "SELECT invoice_number, amount::text FROM invoices WHERE payment_id = :p::uuid", p=payment["payment_id"]
    )
    journal = env.rows("SELECT decision, currency, contradictions FROM hypay_transactions")
    print(rows, invoices, journal)
    # An invoice for a transaction Hyp's verified delivery contradicts (another currency than the grant's) is never
    # filled in: the verified-only path records none (the payment goes to review)
    assert invoices == []


def test_sign_only_redelivery_of_a_verified_unmatched_usd_transaction_raises_no_contradiction(env: Env) -> None:
    t = _unknown_usd_transaction(env)
    assert notify(t.redirect_query).status == 404  # verified: journaled unmatched, USD
    env.sim.faults.add("VERIFY", "ccode", ccode=902, times=10)
    assert notify(t.redirect_query).status == 404  # the same text, VERIFY now saying no: its Coin not read
    # Nothing the Sign-only copy said differs from the row (Coin was not read): no contradiction
    assert env.rows("SELECT currency, contradictions, last_contradiction FROM hypay_transactions") == [["USD", 0, None]]


def _sign_only(env: Env) -> None:
    env.sim.faults.clear()
    env.sim.faults.add("VERIFY", "ccode", ccode=902, times=50)


def _money_state(env: Env, payment_id: str) -> tuple:
    return (
        env.status(payment_id),
        env.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=payment_id),
        env.rows("SELECT invoice_number, amount::text FROM invoices WHERE payment_id = :p::uuid", p=payment_id),
        env.rows("SELECT last4, payment_id::text FROM saved_cards"),
        env.rows("SELECT hypay_id, decision, verified, currency, previous_status FROM hypay_transactions ORDER BY 1"),
    )


def test_outage_then_sign_only_then_verified_save_card(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _invoices_on(monkeypatch)
    before = env.credits()
    payment = buy(env, save_card=True)
    paid = pay(env, payment)
    hesh = protocol.decode_query(paid.redirect_query)["Hesh"]
    env.sim.faults.add("VERIFY", "http500", times=4)
    assert notify(paid.redirect_query).status == 503
    _sign_only(env)
    assert location(browser(paid.redirect_query))[0] == SUCCESS_PAGE
    assert notify(paid.redirect_query).status == 200
    env.sim.faults.clear()
    assert notify(paid.redirect_query).status == 200
    assert location(browser(paid.redirect_query))[0] == SUCCESS_PAGE
    _sign_only(env)
    assert notify(paid.redirect_query).status == 200
    state = _money_state(env, payment["payment_id"])
    assert env.credits() == before + 100
    assert state[:4] == ("completed", [[1]], [[hesh, "49.90"]], [["5614", payment["payment_id"]]]), state
    assert state[4] == [[paid.id, "granted", True, "ILS", "pending"]]


def test_paid_twice_sign_only_second_charge_then_verified(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _invoices_on(monkeypatch)
    before = env.credits()
    payment = buy(env, save_card=True)
    first = pay(env, payment)
    second = pay(env, payment)
    _sign_only(env)
    assert notify(second.redirect_query).status == 200  # second charge first, Sign-only: grants
    assert notify(first.redirect_query).status == 200  # then the first, Sign-only: second charge
    env.sim.faults.clear()
    assert notify(first.redirect_query).status == 200
    assert notify(second.redirect_query).status == 200
    state = _money_state(env, payment["payment_id"])
    h2 = protocol.decode_query(second.redirect_query)["Hesh"]
    assert env.credits() == before + 100
    assert state[2] == [[h2, "49.90"]], state
    assert state[3] == [["5614", payment["payment_id"]]], state
    assert sorted(r[1] for r in state[4]) == ["granted", "review"], state


@pytest.mark.parametrize("given_up", ["expired", "failed"])
def test_late_sign_only_then_verified(env: Env, monkeypatch: pytest.MonkeyPatch, given_up: str) -> None:
    _invoices_on(monkeypatch)
    before = env.credits()
    payment = buy(env, save_card=True)
    paid = pay(env, payment)
    env.rows("UPDATE payments SET status = :s WHERE id = :p::uuid", s=given_up, p=payment["payment_id"])
    _sign_only(env)
    assert location(browser(paid.redirect_query))[0] == SUCCESS_PAGE
    env.sim.faults.clear()
    assert notify(paid.redirect_query).status == 200
    hesh = protocol.decode_query(paid.redirect_query)["Hesh"]
    state = _money_state(env, payment["payment_id"])
    assert env.credits() == before + 100
    assert state[:4] == ("completed", [[1]], [[hesh, "49.90"]], [["5614", payment["payment_id"]]]), state
    assert state[4] == [[paid.id, "granted", True, "ILS", given_up]]


def test_usd_payment_sign_only_then_verified(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _invoices_on(monkeypatch)
    before = env.credits()
    payment = buy(env, save_card=True)
    paid = pay(env, payment)
    env.rows("UPDATE payments SET currency = 'USD' WHERE id = :p::uuid", p=payment["payment_id"])
    usd = paid.redirect_query.replace("Coin=1", "Coin=2")
    paid.coin, paid.redirect_query = "2", usd
    _sign_only(env)
    assert notify(paid.redirect_query.replace("Coin=2", "Coin=1")).status == 200  # edited Coin, Sign-only
    env.sim.faults.clear()
    assert notify(usd).status == 200
    hesh = protocol.decode_query(usd)["Hesh"]
    state = _money_state(env, payment["payment_id"])
    assert env.credits() == before + 100
    assert state[:4] == ("completed", [[1]], [[hesh, "49.90"]], [["5614", payment["payment_id"]]]), state
    assert state[4] == [[paid.id, "granted", True, "USD", "pending"]]
    assert env.rows("SELECT contradictions FROM hypay_transactions") == [[0]]

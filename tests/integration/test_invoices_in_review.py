"""The invoice Hyp numbered for a transaction that went to review is kept on its journal row, and recorded in
`invoices` when an operator completes the payment with it (an invoice issued with the charge was lost on the way to
review: completing such a payment recorded none)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from payments.domain import hypay as protocol
from tests.integration.test_hypay_callback import browser, buy, pay
from tests.integration.test_money_edges import _answers_rewritten, _field
from tests.integration.test_review import admin, every_item, resolve  # noqa: F401 - `admin` is a fixture
from tests.support.api import reset_function_state
from tests.support.payments import CVV, PRO, Env, post


@pytest.fixture
def invoiced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hyp issues the invoices (HYPAY_SEND_INVOICE)."""
    from payments.settings import api_settings

    monkeypatch.setenv("HYPAY_SEND_INVOICE", "true")
    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")
    yield
    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")


def _invoices(env: Env, payment: str) -> list[list[str]]:
    return env.rows("SELECT invoice_number, amount::text FROM invoices WHERE payment_id = :p::uuid", p=payment)


def test_a_saved_card_charge_sent_to_review_keeps_its_invoice_and_completing_it_records_it(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    invoiced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a saved-card charge Hyp approved and invoiced, its amount unreadable in the answer: in review
    sent: list[str] = []
    real_soft = admin.sim._soft
    monkeypatch.setattr(admin.sim, "_soft", lambda params: sent.append(real := real_soft(params)) or real)
    charged = _answers_rewritten(admin, monkeypatch, _field("Amount", "199%2C00"))
    payment = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="invoice-review").json["payment_id"]
    assert admin.status(payment) == "needs_review" and _invoices(admin, payment) == []
    number = protocol.decode_query(sent[0])["Hesh"]
    assert protocol.INVOICE_NUMBER.fullmatch(number), sent[0]
    # Then its journal row names the invoice, and the queue shows it
    assert admin.rows("SELECT invoice_number FROM hypay_transactions WHERE hypay_id = :i", i=charged[0]) == [[number]]
    [item] = [i for i in every_item() if i["id"] == f"p:{payment}"]
    assert item["hypay_transactions"][0]["invoice_number"] == number
    # When an operator completes the payment with it
    done = resolve(payment, {"action": "complete", "reason": "Hyp shows 199.00"}, key="invoice-complete")
    assert done.status == 200, done.body
    # Then the invoice is recorded, as a callback's grant records it
    assert _invoices(admin, payment) == [[number, "199.00"]]


def test_a_verified_callback_sent_to_review_keeps_its_invoice_and_completing_it_records_it(
    admin: Env,  # noqa: F811 - the fixture
    invoiced: None,
) -> None:
    # Given a paid, invoiced payment whose price the web app changed before Hyp's callback came: in review
    payment = buy(admin, key="invoice-callback")
    admin.rows("UPDATE payments SET amount = 39.90 WHERE id = :p::uuid", p=payment["payment_id"])
    paid = pay(admin, payment)
    number = protocol.decode_query(paid.redirect_query)["Hesh"]
    assert protocol.INVOICE_NUMBER.fullmatch(number), paid.redirect_query
    browser(paid.redirect_query)
    payment = payment["payment_id"]
    assert admin.status(payment) == "needs_review" and _invoices(admin, payment) == []
    assert admin.rows("SELECT invoice_number FROM hypay_transactions WHERE hypay_id = :i", i=paid.id) == [[number]]
    # When an operator completes it
    done = resolve(payment, {"action": "complete", "reason": "the customer was charged the old price"}, key="c-1")
    assert done.status == 200, done.body
    # Then the invoice Hyp issued with the charge is recorded
    assert _invoices(admin, payment) == [[number, "39.90"]]


def test_a_callback_whose_fields_were_not_confirmed_names_no_invoice_on_the_journal(
    env: Env, invoiced: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Hesh` is not signed: a delivery checked by its signature alone puts no number on the journal."""
    from tests.integration.test_hypay_callback import hmac_only

    payment = buy(env, key="invoice-unsigned")
    paid = pay(env, payment)
    hmac_only(monkeypatch)
    fields = ["Hesh=777" if f.startswith("Hesh=") else f for f in paid.redirect_query.split("&")]
    browser("&".join(fields))
    assert env.status(payment["payment_id"]) == "completed"
    assert env.rows("SELECT invoice_number FROM hypay_transactions WHERE hypay_id = :i", i=paid.id) == [[None]]

"""The invoice Hyp numbered for a transaction that went to review is kept on its journal row, and recorded in
`invoices` when an operator completes the payment with it (an invoice issued with the charge was lost on the way to
review: completing such a payment recorded none)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from payments.domain import hypay as protocol
from tests.integration.test_hypay_callback import browser, buy, hmac_only, pay
from tests.integration.test_money_edges import _answers_rewritten, _field
from tests.integration.test_review import admin, every_item, resolve  # noqa: F401 - `admin` is a fixture
from tests.integration.test_unverified_found_forged import verify_down  # noqa: F401 - the fixture
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
    payment = buy(env, key="invoice-unsigned")
    paid = pay(env, payment)
    hmac_only(monkeypatch)
    fields = ["Hesh=777" if f.startswith("Hesh=") else f for f in paid.redirect_query.split("&")]
    browser("&".join(fields))
    assert env.status(payment["payment_id"]) == "completed"
    assert env.rows("SELECT invoice_number FROM hypay_transactions WHERE hypay_id = :i", i=paid.id) == [[None]]


def _journal_invoice(env: Env, hypay_id: str) -> list[list]:
    return env.rows(
        "SELECT payment_id::text, invoice_number FROM hypay_transactions WHERE ltrim(hypay_id, '0') = ltrim(:i, '0')",
        i=hypay_id,
    )


def _settled_on_its_sign_in_review(env: Env, monkeypatch: pytest.MonkeyPatch, key: str) -> tuple[str, Any, str]:
    """A payment paid on Hyp's page whose price the web app changed, settled on its Sign alone (hmac: Hesh not read):
    in review, its journal row verified, approved, naming no invoice. Its id, Hyp's transaction and its invoice."""
    payment = buy(env, key=key)
    env.rows("UPDATE payments SET amount = 39.90 WHERE id = :p::uuid", p=payment["payment_id"])
    paid = pay(env, payment)
    hesh = protocol.decode_query(paid.redirect_query)["Hesh"]
    hmac_only(monkeypatch)
    browser(paid.redirect_query)
    assert env.status(payment["payment_id"]) == "needs_review"
    assert _journal_invoice(env, paid.id) == [[payment["payment_id"], None]]
    return payment["payment_id"], paid, hesh


def test_a_charge_answer_naming_another_payments_transaction_never_gives_that_payment_its_invoice_number(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    invoiced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given payment B settled on its Sign alone and sent to review: its journal row names no invoice
    b, paid_b, hesh_b = _settled_on_its_sign_in_review(admin, monkeypatch, "b-page")

    # When payment A's saved-card charge is answered naming B's transaction (the case create_payment sends to
    # review as "Hyp's answer named transaction ..., which belongs to another payment"), with A's own invoice
    sent: list[str] = []

    def with_b_id(answer: str) -> str:
        sent.append(answer)
        return "&".join(f"Id={paid_b.id}" if p.startswith("Id=") else p for p in answer.split("&"))

    _answers_rewritten(admin, monkeypatch, with_b_id)
    a = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="a-charge")
    hesh_a = protocol.decode_query(sent[0])["Hesh"]
    assert hesh_a != hesh_b

    # Then B's journal row must not take A's invoice number ...
    row = _journal_invoice(admin, paid_b.id)
    # ... and completing B with its own transaction must not record A's invoice as B's
    done = resolve(b, {"action": "complete", "reason": "Hyp shows 49.90"}, key="b-complete")
    assert done.status == 200, done.body
    recorded = _invoices(admin, b)
    assert (row, recorded) == ([[b, None]], []), (
        f"A ({a.json.get('payment_id')}) invoice {hesh_a} landed on B's row / invoices"
    )


def test_an_invoice_a_verified_delivery_brings_after_an_operators_complete_is_recorded(
    admin: Env,  # noqa: F811 - the fixture
    invoiced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from payments.settings import callback_settings
    from tests.support.api import reset_function_state

    # Given a paid payment settled on its Sign alone, sent to review ...
    b, paid, number = _settled_on_its_sign_in_review(admin, monkeypatch, "b2-page")
    # ... and completed by an operator: no number known yet, none recorded
    done = resolve(b, {"action": "complete", "reason": "Hyp shows it"}, key="b2-complete")
    assert done.status == 200, done.body
    assert _invoices(admin, b) == []

    # When Hyp's verified delivery of the same transaction comes (VERIFY back on), naming its invoice
    monkeypatch.setenv("HYPAY_VERIFY_MODE", "both")
    callback_settings.cache_clear()
    reset_function_state("HypayCallbackFunction")
    browser(paid.redirect_query)

    # Then the journal learns the number (sql/019) ...
    assert _journal_invoice(admin, paid.id) == [[b, number]]
    # ... and invoices records it, as it does for a payment a callback granted on its Sign alone
    assert _invoices(admin, b) == [[number, "39.90"]]


def test_a_verified_delivery_over_a_forgers_claim_of_its_id_keeps_its_invoice_on_the_journal(
    verify_down: Env,  # noqa: F811 - the fixture
    invoiced: None,
) -> None:
    from tests.integration.test_callback_attacks import unpaid_claim
    from tests.integration.test_hypay_callback import forge, notify
    from tests.integration.test_unverified_found_forged import WRONG_KEY

    env = verify_down
    # Given payment A paid (its callback not delivered yet), and a forger's claim of A's Id for payment B, kept
    # unverified while Hyp could not be asked: the journal's row names B
    a, b = buy(env, key="a-paid"), buy(env, key="b-claimed")
    paid = pay(env, a)
    number = protocol.decode_query(paid.redirect_query)["Hesh"]
    claim = [(k, paid.id if k == "Id" else v) for k, v in unpaid_claim(b["payment_id"])]
    env.hang_sign()  # type: ignore[attr-defined]
    assert notify(forge(claim, key=WRONG_KEY)).status == 503
    assert _journal_invoice(env, paid.id) == [[b["payment_id"], None]]
    # When A's genuine callback comes
    browser(paid.redirect_query)
    # Then the row is A's, with A's invoice (recorded in invoices too)
    assert env.status(a["payment_id"]) == "completed"
    assert _journal_invoice(env, paid.id) == [[a["payment_id"], number]]
    assert _invoices(env, a["payment_id"]) == [[number, "49.90"]]

"""A credit pack's name (a web-app row) never adds or reprices lines on the invoice Hyp issues: Hyp's invoice lines
are `[code~description~quantity~price]`, and the name goes into the description (an outside review sent SIGN requests
with two lines, one priced 0.01, by naming a pack `Starter~1~0.01][0~Bonus pack`)."""

from __future__ import annotations

import re

import pytest

from payments.domain import hypay as protocol
from tests.support.api import reset_function_state
from tests.support.payments import CVV, PRO, STARTER, Env, post, record_hyp_requests

_LINE = re.compile(r"\[([^\[\]]*)\]")
HOSTILE = ["Starter~1~0.01][0~Bonus pack", "Starter~100~49.90", "Starter] [0~Gift~1~0", "[[~~]]", "~"]


@pytest.mark.parametrize("name", HOSTILE)
def test_an_invoice_line_is_one_line_of_four_fields_at_our_price(name: str) -> None:
    line = protocol.invoice_line(name, "49.90")
    [fields] = [found.split("~") for found in _LINE.findall(line)]
    assert _LINE.fullmatch(line) and fields[0] == "0" and fields[2:] == ["1", "49.90"], line
    assert len(fields) == 4


@pytest.mark.parametrize("name", HOSTILE[:3])
def test_a_pack_name_never_adds_or_reprices_invoice_lines(env: Env, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from payments.settings import api_settings

    # Given invoices issued by Hyp and a pack whose name holds Hyp's separators
    monkeypatch.setenv("HYPAY_SEND_INVOICE", "true")
    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")
    env.rows("UPDATE credit_packs SET name = :n WHERE id = :p::uuid", n=name, p=STARTER)
    sent = record_hyp_requests(monkeypatch)
    # When the payment page is asked for
    page = post({"credit_pack_id": STARTER}, key="invoice-lines")
    assert page.status == 201, page.body
    [sign] = [s for s in sent if s.get("What") == "SIGN" and s.get("Order") == page.json["payment_id"]]
    # Then the invoice has the one line we priced: quantity 1 at the payment's amount
    lines = [line.split("~") for line in _LINE.findall(sign["heshDesc"])]
    assert len(lines) == 1 and len(lines[0]) == 4, sign["heshDesc"]
    assert lines[0][2:] == ["1", sign["Amount"]], sign["heshDesc"]
    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")


def test_a_saved_card_charge_asks_hyp_for_its_invoice_and_records_its_number(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With invoices issued by Hyp, a saved-card charge asks for one as the payment page does (it asked for none: Hyp
    charged every saved-card purchase without an invoice, and none was recorded), one line at the charge's price."""
    from payments.settings import api_settings

    monkeypatch.setenv("HYPAY_SEND_INVOICE", "true")
    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")
    sent = record_hyp_requests(monkeypatch)
    try:
        answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="invoice-saved-card")
        assert answer.status == 201, answer.body
        [soft] = [s for s in sent if s.get("action") == "soft"]
        assert (soft.get("SendHesh"), soft.get("Pritim")) == ("True", "True"), sorted(soft)
        [line] = [found.split("~") for found in _LINE.findall(soft["heshDesc"])]
        assert line[0] == "0" and line[2:] == ["1", soft["Amount"]], soft["heshDesc"]
        [[number, amount]] = env.rows(
            "SELECT invoice_number, amount::text FROM invoices WHERE payment_id = :p::uuid", p=answer.json["payment_id"]
        )
        assert number != "0" and amount == soft["Amount"] == "199.00"
    finally:
        api_settings.cache_clear()
        reset_function_state("CreatePaymentFunction")


@pytest.mark.parametrize("hesh", ["00", "-1", "EZ", "0.0", "1" * 40])
def test_a_saved_card_charge_records_only_an_invoice_number_a_callback_would(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch, hesh: str
) -> None:
    """A charge's `Hesh` that is not an invoice number (`EZ`, `00`, 40 digits) is recorded as none, as a callback's:
    a row for it would stand for an invoice that may not exist, and hold the payment's one invoice row."""
    from payments.settings import api_settings

    monkeypatch.setenv("HYPAY_SEND_INVOICE", "true")
    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")
    real_soft = env.sim._soft
    monkeypatch.setattr(
        env.sim,
        "_soft",
        lambda params: "&".join(f"Hesh={hesh}" if p.startswith("Hesh=") else p for p in real_soft(params).split("&")),
    )
    try:
        answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key=f"hesh-{hesh[:8]}")
        assert answer.status == 201, answer.body
        assert (
            env.rows("SELECT invoice_number FROM invoices WHERE payment_id = :p::uuid", p=answer.json["payment_id"])
            == []
        )
    finally:
        api_settings.cache_clear()
        reset_function_state("CreatePaymentFunction")

"""Hyp's answers never hand our secrets on, and never need the credentials read again once Hyp answered."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from payments.adapters.hypay import Customer, HypayClient, HypayCredentials, PaymentPage, Token
from payments.domain.money import Money
from payments.errors import GatewayUnavailable

CREDS = HypayCredentials("0010131918", "k" * 20, "s3cretPassP")


def _client(answer: bytes, credentials) -> HypayClient:
    return HypayClient(
        credentials,
        url="https://hyp.test/p/",
        timeout_seconds=5,
        budget_seconds=10,
        opener=lambda request, timeout: answer,
    )


class _SecretsManagerBlipsAfterFirstRead:
    """The Secrets Manager provider: the first read succeeds (cached), the next one (the cache's max_age passed while
    Hyp was answering) fails, as read_secret raises GatewayUnavailable."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> HypayCredentials:
        self.reads += 1
        if self.reads > 1:
            raise GatewayUnavailable("could not read the Hypay secret")
        return CREDS


def test_an_approved_saved_card_charge_is_not_lost_to_a_credentials_reread_after_the_call() -> None:
    client = _client(b"Id=87654321&CCode=0&Amount=10.00&ACode=0012345&Coin=1", _SecretsManagerBlipsAfterFirstRead())
    charge = client.charge_token(
        Token("1234567890123456789", expiry_month=12, expiry_year=2030),
        amount=Money.of("10.00", "ILS"),
        order="o",
        description="d",
    )
    assert charge.transaction_id == "87654321"


def test_an_approved_refund_is_not_lost_to_a_credentials_reread_after_the_call() -> None:
    client = _client(b"Id=99999999&CCode=0&ACode=0012345", _SecretsManagerBlipsAfterFirstRead())
    reversal = client.refund("87654321", amount=Money.of("10.00", "ILS"))
    assert reversal.transaction_id == "99999999"


def test_a_sign_answer_holding_our_passp_is_not_the_page_url() -> None:
    # Signed, no field named after a credential, our KEY absent: but our PassP is in the answer's text.
    answer = f"Masof=0010131918&Order=o&Amount=10.00&signature=abc&errMsg={quote('PassP s3cretPassP ok')}".encode()
    client = _client(answer, lambda: CREDS)
    page = PaymentPage(amount=Money.of("10.00", "ILS"), order="o", description="d", customer=Customer())
    try:
        url = client.payment_page_url(page)
    except GatewayUnavailable:
        return
    assert "s3cretPassP" not in url


def test_a_passp_echoed_as_we_sent_it_percent_encoded_is_masked_in_errmsg() -> None:
    # Our request body is urlencoded (quote): a PassP with symbols goes out as p%40ss%23word. Hyp echoing the request
    # it refused in errMsg (itself encoded in its answer) hands back that form.
    creds = HypayCredentials("0010131918", "k" * 20, "p@ss#word")
    echoed = quote("bad request: action=soft&PassP=" + quote("p@ss#word", safe=""), safe="")
    client = _client(f"CCode=6&errMsg={echoed}".encode(), lambda: creds)
    with pytest.raises(Exception) as caught:
        client.charge_token(
            Token("1234567890123456789", expiry_month=12, expiry_year=2030),
            amount=Money.of("10.00", "ILS"),
            order="o",
            description="d",
        )
    said = str(caught.value) + str(getattr(caught.value, "gateway_message", ""))
    assert "p%40ss%23word" not in said, said

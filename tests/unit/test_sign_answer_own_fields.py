"""A SIGN answer's own fields are spared the search for our secrets only as they must be: action=pay, a signature of
64 hex digits; our PassP or KEY in them otherwise is no payment page."""

from __future__ import annotations

from urllib.parse import quote

from payments.adapters.hypay import Customer, HypayClient, HypayCredentials, PaymentPage
from payments.domain.money import Money
from payments.errors import GatewayUnavailable

KEY = "k" * 20
CREDS = HypayCredentials("0010131918", KEY, "s3cretPassP")


def _url(answer: str) -> str | None:
    client = HypayClient(
        lambda: CREDS,
        url="https://hyp.test/p/",
        timeout_seconds=5,
        budget_seconds=10,
        opener=lambda request, timeout: answer.encode(),
    )
    page = PaymentPage(amount=Money.of("10.00", "ILS"), order="o", description="d", customer=Customer())
    try:
        return client.payment_page_url(page)
    except GatewayUnavailable:
        return None


def test_a_signature_that_is_our_passp_is_not_the_page_url() -> None:
    url = _url("Masof=0010131918&Order=o&Amount=10.00&action=pay&signature=s3cretPassP")
    assert url is None or "s3cretPassP" not in url, url


def test_an_action_holding_our_key_is_not_the_page_url() -> None:
    url = _url(f"Masof=0010131918&Order=o&Amount=10.00&action={quote('pay ' + KEY)}&signature=" + "a" * 64)
    assert url is None or KEY not in url, url

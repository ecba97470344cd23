"""A SIGN answer whose `signature` (Hyp's own field) happens to hold our PassP is a payment page, not refused.

The signature is an HMAC of the page's parameters (the same for a payment every time: Order is the payment id), so a
refusal would refuse that payment on every retry of its Idempotency-Key: its customer could never pay."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    HypaySimulator,
    Terminal,
    public_test_terminal,
)
from payments.adapters.hypay import Customer, HypayClient, HypayCredentials, PaymentPage
from payments.domain import hypay as protocol
from payments.domain.money import Money

CUSTOMER = Customer("Dana", "Levi", "dana@example.co.il", "0501234567")
ORDER = "6f1c2b9e-3d4a-4c1e-9a55-0d7b1e2f3a4b"  # a payment id


def _page() -> PaymentPage:
    return PaymentPage(Money.of("49.90"), ORDER, "Starter", CUSTOMER)


def test_a_payment_whose_signature_holds_the_passp_is_never_signed() -> None:
    # The signature does not depend on PassP: read it once with the public terminal.
    sim = HypaySimulator([public_test_terminal()]).start()
    try:
        client = HypayClient(
            lambda: HypayCredentials(PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_KEY, "yaad"), url=sim.url
        )
        signature = protocol.decode_query(urlsplit(client.payment_page_url(_page())).query)["signature"]
    finally:
        sim.stop()
    # A terminal whose (portal-generated) PassP is four characters that happen to occur in this payment's signature
    # (for a 4-digit PassP about 1 payment in 1,000; for a 3-character one about 1 in 65).
    passp = (re.search(r"[0-9]{4}", signature) or re.search(r"[0-9a-f]{4}", signature)).group(0)  # type: ignore[union-attr]
    sim = HypaySimulator([Terminal(PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_KEY, passp)]).start()
    try:
        client = HypayClient(
            lambda: HypayCredentials(PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_KEY, passp), url=sim.url
        )
        for _ in range(3):  # the same payment's retries (same Idempotency-Key, same Order): same signature each time
            url = client.payment_page_url(_page())  # GatewayUnavailable: "the answer repeats our credentials"
            assert urlsplit(url).query
    finally:
        sim.stop()

"""HypayClient against the project's Hypay simulator, speaking the real protocol over HTTP."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

import boto3
import pytest
from moto import mock_aws

from ops.hypay_simulator import (
    APPROVING_CARD,
    DECLINING_CARD,
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from payments.adapters.hypay import (
    DEFAULT_URL,
    Customer,
    HypayClient,
    HypayCredentials,
    HypaySettings,
    PaymentPage,
    Token,
)
from payments.domain import hypay as protocol
from payments.domain.money import Money
from payments.errors import (
    ConfigurationError,
    GatewayAuthenticationError,
    GatewayDeclined,
    GatewayRejected,
    GatewayUnavailable,
)
from tests.support.leaks import holds
from tests.support.payments import CVV

CREDS = HypayCredentials(PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_PASSP)
CUSTOMER = Customer("ישראל", "ישראלי", "israel@example.co.il", "0501234567")


@pytest.fixture
def sim() -> Iterator[HypaySimulator]:
    simulator = HypaySimulator(
        [public_test_terminal(success_url="http://127.0.0.1:9/ok", failure_url="http://127.0.0.1:9/fail")]
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def client(sim: HypaySimulator) -> HypayClient:
    return HypayClient(lambda: CREDS, url=sim.url, timeout_seconds=0.5, budget_seconds=2.0)


def page(amount: str = "49.90", order: str = "order-1", **kwargs: object) -> PaymentPage:
    return PaymentPage(Money.of(amount), order, "חבילת קרדיטים Starter", CUSTOMER, **kwargs)  # type: ignore[arg-type]


def test_sign_returns_a_signed_page_url_that_opens(client: HypayClient, sim: HypaySimulator) -> None:
    url = client.payment_page_url(page())
    assert url.startswith(sim.url + "?")
    fields = protocol.decode_query(urlsplit(url).query)
    assert fields["action"] == "pay" and len(fields["signature"]) == 64
    assert fields["Amount"] == "49.90" and fields["Coin"] == "1" and fields["Order"] == "order-1"
    assert "KEY" not in fields and "PassP" not in fields
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    assert "49.90" in body and "חבילת קרדיטים Starter" in body  # Hebrew made the round trip


def test_calls_are_logged_with_action_and_ccode(client: HypayClient, caplog: pytest.LogCaptureFixture) -> None:
    client.payment_page_url(page())
    [record] = [r for r in caplog.records if r.getMessage() == "hypay call"]
    assert record.hypay_action == "SIGN" and record.ccode is None  # a SIGN answer has no CCode


def test_approved_payment_redirect_verifies_locally_and_with_verify(client: HypayClient, sim: HypaySimulator) -> None:
    transaction = sim.pay(client.payment_page_url(page()), APPROVING_CARD, cvv="125")
    redirect = sim.redirect_url(transaction)
    assert redirect.startswith("http://127.0.0.1:9/ok?")
    raw = urlsplit(redirect).query
    fields = protocol.decode_query(raw)
    assert fields["CCode"] == "0" and fields["Order"] == "order-1" and fields["Amount"] == "49.90"
    assert fields["Fild1"] == "ישראל ישראלי" and fields["Fild2"] == "israel@example.co.il"
    assert fields["L4digit"] == APPROVING_CARD[-4:]
    assert client.verify_redirect_hmac(raw)
    assert client.verify_redirect(raw)


def test_tampered_redirect_fails_both_checks(client: HypayClient, sim: HypaySimulator) -> None:
    transaction = sim.pay(client.payment_page_url(page()), APPROVING_CARD, cvv="125")
    raw = urlsplit(sim.redirect_url(transaction)).query.replace("Amount=49.90", "Amount=0.10")
    assert not client.verify_redirect_hmac(raw)
    assert not client.verify_redirect(raw)
    # An unsigned field changed: the local check cannot see it; VERIFY (as received) does
    unsigned = urlsplit(sim.redirect_url(transaction)).query.replace("Coin=1", "Coin=2")
    assert client.verify_redirect_hmac(unsigned)
    assert not client.verify_redirect(unsigned)


def test_declined_card_goes_to_the_failure_url(client: HypayClient, sim: HypaySimulator) -> None:
    transaction = sim.pay(client.payment_page_url(page(order="order-2")), DECLINING_CARD, cvv="123")
    redirect = sim.redirect_url(transaction)
    assert redirect.startswith("http://127.0.0.1:9/fail?")
    raw = urlsplit(redirect).query
    assert protocol.decode_query(raw)["CCode"] == "4"
    assert client.verify_redirect_hmac(raw) and client.verify_redirect(raw)


def test_wrong_credentials_are_an_authentication_error(sim: HypaySimulator) -> None:
    wrong = HypayClient(lambda: HypayCredentials(PUBLIC_TEST_TERMINAL_MASOF, "f" * 40, "nope"), url=sim.url)
    with pytest.raises(GatewayAuthenticationError) as caught:
        wrong.payment_page_url(page())
    assert caught.value.ccode == 902 and "f" * 40 not in str(caught.value)
    assert not wrong.verify_redirect("Id=1&CCode=0")  # VERIFY with bad credentials: not genuine


def test_token_then_charge_with_cvv(client: HypayClient, sim: HypaySimulator) -> None:
    transaction = sim.pay(
        client.payment_page_url(page(order="order-3")), APPROVING_CARD, cvv="125", month="07", year="2031"
    )
    token = client.get_token(transaction.id)
    assert len(token.value) == 19 and (token.expiry_month, token.expiry_year) == (7, 2031)
    assert token.value not in repr(token)
    charge = client.charge_token(
        token, amount=Money.of("199.00"), order="order-4", description="Pro", customer=CUSTOMER, cvv=CVV
    )
    assert charge.transaction_id and charge.approval_code and charge.amount == Money.of("199.00")


def test_declined_token_charge_has_hyps_code_and_message(client: HypayClient, sim: HypaySimulator) -> None:
    transaction = sim.pay(client.payment_page_url(page(order="order-5")), APPROVING_CARD, cvv="125")
    transaction_declining = sim.pay(client.payment_page_url(page(order="order-6")), DECLINING_CARD, cvv="123")
    with pytest.raises(GatewayRejected):
        client.get_token(transaction_declining.id)  # no token for a declined transaction (Hyp: 400-402)
    token = client.get_token(transaction.id)
    with pytest.raises(GatewayDeclined) as caught:
        client.charge_token(
            Token("4" + "0" * 18, token.expiry_month, token.expiry_year),
            amount=Money.of("10"),
            order="order-7",
            description="x",
            cvv=CVV,
        )
    assert caught.value.ccode == 997 and caught.value.gateway_message == "invalid token"
    assert not holds(str(caught.value), CVV)


def test_timeout_is_retried_once_for_idempotent_calls(client: HypayClient, sim: HypaySimulator) -> None:
    sim.faults.add("SIGN", "hang", seconds=1.5)
    assert client.payment_page_url(page())  # the first attempt timed out, the retry answered
    assert sim.calls.count("SIGN") == 2


def test_persistent_timeout_is_gateway_unavailable(client: HypayClient, sim: HypaySimulator) -> None:
    sim.faults.add("VERIFY", "hang", times=2, seconds=1.5)
    with pytest.raises(GatewayUnavailable) as caught:
        client.verify_redirect("Id=1&CCode=0")
    assert caught.value.retryable and sim.calls.count("VERIFY") == 2


@pytest.mark.parametrize("kind", ["html", "http500"])
def test_error_pages_are_gateway_unavailable(client: HypayClient, sim: HypaySimulator, kind: str) -> None:
    sim.faults.add("getToken", kind, times=2)
    with pytest.raises(GatewayUnavailable):
        client.get_token("12345678")


def test_communication_error_ccode_is_retried(client: HypayClient, sim: HypaySimulator) -> None:
    sim.faults.add("SIGN", "ccode", ccode=999)
    assert client.payment_page_url(page())
    assert sim.calls.count("SIGN") == 2


def test_a_charge_is_never_retried_blindly(client: HypayClient, sim: HypaySimulator) -> None:
    transaction = sim.pay(client.payment_page_url(page(order="order-8")), APPROVING_CARD, cvv="125")
    token = client.get_token(transaction.id)
    sim.faults.add("soft", "hang", seconds=1.5)
    with pytest.raises(GatewayUnavailable):
        client.charge_token(token, amount=Money.of("10"), order="order-9", description="x", cvv=CVV)
    assert sim.calls.count("soft") == 1


def test_unreachable_gateway_is_unavailable() -> None:
    client = HypayClient(lambda: CREDS, url="http://127.0.0.1:9/p/", timeout_seconds=0.5, budget_seconds=2)
    with pytest.raises(GatewayUnavailable):
        client.payment_page_url(page())


def test_credentials_from_a_secrets_manager_secret(sim: HypaySimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = secrets.create_secret(
            Name="payments/hypay",
            SecretString=json.dumps(
                {
                    "Masof": PUBLIC_TEST_TERMINAL_MASOF,
                    "KEY": PUBLIC_TEST_TERMINAL_KEY,
                    "PassP": PUBLIC_TEST_TERMINAL_PASSP,
                }
            ),
        )["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        settings = HypaySettings(HYPAY_SECRET_ARN=arn, HYPAY_URL=sim.url)
        assert HypayClient.from_settings(settings).payment_page_url(page()).startswith(sim.url)
    assert PUBLIC_TEST_TERMINAL_KEY not in repr(settings) and PUBLIC_TEST_TERMINAL_KEY not in repr(CREDS)


def test_missing_credentials_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        HypayClient.from_settings(HypaySettings())
    with pytest.raises(ConfigurationError):
        HypayCredentials.from_mapping({"Masof": "123", "KEY": "k", "PassP": "p"})


@pytest.mark.skipif(os.environ.get("HYPAY_LIVE") != "1", reason="live Hyp test terminal: set HYPAY_LIVE=1 to run")
def test_live_sign_against_hyps_public_test_terminal() -> None:
    live = HypayClient(lambda: CREDS, url=DEFAULT_URL, timeout_seconds=8, budget_seconds=20)
    url = live.payment_page_url(page("10.00", order="live-test"))
    assert url.startswith(DEFAULT_URL + "?") and "signature=" in url


def test_without_utf8out_hyp_answers_in_windows_1255_and_it_still_reads(sim: HypaySimulator) -> None:
    # Given a SIGN request in windows-1255 without UTF8/UTF8out (Hyp's default encoding)
    body = (
        (
            f"action=APISign&What=SIGN&Masof={PUBLIC_TEST_TERMINAL_MASOF}&KEY={PUBLIC_TEST_TERMINAL_KEY}"
            f"&PassP={PUBLIC_TEST_TERMINAL_PASSP}&Sign=True&Amount=10.00&Coin=1&Order=o-1255&"
        ).encode()
        + b"Info="
        + quote("חבילה".encode("cp1255")).encode()
    )
    with urllib.request.urlopen(urllib.request.Request(sim.url, data=body, method="POST"), timeout=5) as resp:
        raw = resp.read()
    # Then the answer's Hebrew is windows-1255 bytes, and the parser decodes it
    assert quote("חבילה".encode("cp1255")).encode() in raw
    assert protocol.parse_answer(raw).fields["Info"] == "חבילה"


def test_redirect_can_be_delivered_twice_or_concurrently(client: HypayClient) -> None:
    # Given a terminal whose success URL is a server that counts hits
    hits: list[str] = []

    class Counter(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/done")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{server.server_address[1]}/hypay/return"
    sim = HypaySimulator([public_test_terminal(success_url=target, failure_url=target)]).start()
    try:
        local = HypayClient(lambda: CREDS, url=sim.url)
        transaction = sim.pay(local.payment_page_url(page(order="order-dup")), APPROVING_CARD, cvv="125")
        # When it is delivered twice, then 10 times at once
        assert sim.deliver(transaction, times=2) == [302, 302]
        assert sim.deliver(transaction, times=10, concurrently=True) == [302] * 10
    finally:
        sim.stop()
        server.shutdown()
    # Then every delivery carried the very same signed query
    assert len(hits) == 12 and len(set(hits)) == 1 and "Sign=" in hits[0]


def test_latency_can_be_injected(client: HypayClient, sim: HypaySimulator) -> None:
    sim.faults.add("SIGN", "latency", seconds=0.2)
    assert client.payment_page_url(page())  # slower, still within the timeout: one call
    assert sim.calls.count("SIGN") == 1


@pytest.mark.parametrize("answer", [b"Id=0&CCode=0&ACode=0012345", b"Id=000&CCode=0", b"CCode=0"])
def test_a_refund_approved_without_a_hyp_id_is_an_unknown_outcome(
    client: HypayClient, monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    # Given Hyp approves a refund but names no transaction (no Id, or an all-zero one)
    monkeypatch.setattr(client, "_send", lambda request, timeout: answer)
    # Then the money may have moved and cannot be named: unavailable (the refund goes to review), never a
    # refund recorded under an Id that names nothing
    with pytest.raises(GatewayUnavailable, match="without a transaction Id"):
        client.refund("12800001", amount=Money.of("10.00"))

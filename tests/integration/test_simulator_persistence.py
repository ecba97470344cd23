"""The Hypay simulator keeps its transactions and saved cards across restarts (`make run`'s .local/ folder)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from payments.adapters.hypay import Customer, HypayClient, HypayCredentials, PaymentPage
from payments.domain.money import Money

CREDS = HypayCredentials(PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_PASSP)


def _simulator(state: Path) -> HypaySimulator:
    terminal = public_test_terminal(success_url="http://127.0.0.1:9/ok", failure_url="http://127.0.0.1:9/fail")
    return HypaySimulator([terminal], state_file=state).start()


def test_transactions_and_tokens_survive_a_restart(private_tmp: Path) -> None:
    state = private_tmp / "hypay-simulator.json"
    customer = Customer("Israel", "Israeli", "israel@example.co.il", "0501234567")
    # Given a simulator keeping its state in a file, and a customer who paid
    first = _simulator(state)
    try:
        client = HypayClient(lambda: CREDS, url=first.url)
        page = PaymentPage(Money.of("10.00"), "order-1", "credits", customer)
        paid = first.pay(client.payment_page_url(page))
        redirect = urlsplit(first.redirect_url(paid)).query
        assert client.verify_redirect(redirect)
    finally:
        first.stop()
    assert json.loads(state.read_text())["transactions"][0]["id"] == paid.id
    # When make run starts again with the same folder
    second = _simulator(state)
    try:
        client = HypayClient(lambda: CREDS, url=second.url)
        # Then reloading the old return URL still verifies as genuine
        assert client.verify_redirect(redirect)
        # And the saved card still works: getToken, then a charge with it, under a new transaction id
        token = client.get_token(paid.id)
        charge = client.charge_token(
            token, amount=Money.of("5.00"), order="order-2", description="credits", customer=customer, cvv="125"
        )
        assert charge.transaction_id != paid.id
    finally:
        second.stop()
    # And a third start still knows both transactions
    third = _simulator(state)
    try:
        assert {paid.id, charge.transaction_id} <= set(third.transactions)
    finally:
        third.stop()


def test_without_a_state_file_nothing_is_kept(private_tmp: Path) -> None:
    sim = HypaySimulator([public_test_terminal()]).start()
    sim.stop()
    assert list(private_tmp.iterdir()) == []


def test_the_control_api_injects_faults_and_lists_transactions() -> None:
    # Given a running simulator (the proof suite drives make run's simulator over HTTP)
    sim = HypaySimulator([public_test_terminal()]).start()
    try:
        control = f"{sim.base_url}/_sim/"

        def call(method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(control + path, data=data, method=method)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()

        # When a VERIFY outage is added over HTTP
        assert call("POST", "faults", {"action": "VERIFY", "kind": "http500", "times": 2})[0] == 204
        # Then the next two VERIFY calls fail as Hyp's outage would, the third is served
        assert sim.faults.take("VERIFY") is not None and sim.faults.take("VERIFY") is not None
        assert sim.faults.take("VERIFY") is None
        # And a malformed fault is a 400, clearing works, unknown controls are 404
        assert call("POST", "faults", {"kind": "http500"})[0] == 400
        call("POST", "faults", {"action": "soft", "kind": "drop"})
        assert call("DELETE", "faults")[0] == 204 and sim.faults.take("soft") is None
        assert call("GET", "nothing")[0] == 404
        # And the transactions are listed without card data
        status, body = call("GET", "transactions")
        assert status == 200 and json.loads(body) == {"transactions": [], "reversals": [], "calls": {}}
    finally:
        sim.stop()

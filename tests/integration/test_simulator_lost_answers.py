"""The simulator's `lost`, `drop`, `cut` and `moved` faults do Hyp's work before losing the answer, for a charge and a
token too (not only for refunds): the proof suite's saved-card flows rely on a lost answer being a real charge."""

from __future__ import annotations

import pytest

from ops.hypay_simulator import APPROVING_CARD, HypaySimulator
from payments.adapters.hypay import HypayClient
from payments.domain.money import Money
from payments.errors import GatewayUnavailable
from tests.integration.test_hypay_client import client, page, sim  # noqa: F401 - fixtures
from tests.support.payments import CVV


@pytest.mark.parametrize("kind", ["lost", "drop", "cut", "moved"])
def test_a_lost_soft_answer_is_still_a_charge(client: HypayClient, sim: HypaySimulator, kind: str) -> None:  # noqa: F811
    # Given a saved card
    paid = sim.pay(client.payment_page_url(page(order="order-a")), APPROVING_CARD, cvv="125")
    token = client.get_token(paid.id)
    # When Hyp charges it and its answer is lost
    sim.faults.add("soft", kind)
    with pytest.raises(GatewayUnavailable):
        client.charge_token(token, amount=Money.of("10"), order="order-b", description="x", cvv=CVV)
    # Then the charge exists at Hyp all the same, once
    charges = [t for t in sim.transactions.values() if t.order == "order-b"]
    assert [(t.ccode, t.amount) for t in charges] == [(0, "10.00")]


@pytest.mark.parametrize("kind", ["lost", "drop", "cut", "moved"])
def test_a_lost_token_answer_still_issued_the_token(client: HypayClient, sim: HypaySimulator, kind: str) -> None:  # noqa: F811
    # Given an approved payment
    paid = sim.pay(client.payment_page_url(page(order="order-c")), APPROVING_CARD, cvv="125")
    # When Hyp issues its token and both answers are lost (getToken is retried once)
    sim.faults.add("getToken", kind, times=2)
    with pytest.raises(GatewayUnavailable):
        client.get_token(paid.id)
    # Then the transaction has its token at Hyp, and the next call gets the same one
    assert sim.transactions[paid.id].token is not None
    assert client.get_token(paid.id).value == sim.transactions[paid.id].token

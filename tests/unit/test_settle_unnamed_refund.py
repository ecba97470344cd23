"""A refund with no Id of its own holds for review only an approved transaction that could be its own (no more than
it): a later payment of more is decided as any payment."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from payments.adapters.journal import Action, HypTransaction, PaymentFacts, Source
from payments.domain.money import Money
from payments.domain.payment import PaymentStatus
from payments.services.settle import decide


def _decided(unnamed_refund: str, paid: str) -> tuple[Action, str | None]:
    """A failed payment of 49.90 with a refund of `unnamed_refund` whose own Id is unknown (its answer lost), and an
    approved transaction of `paid` for it arriving on its page."""
    payment = uuid.uuid4()
    facts = PaymentFacts(
        PaymentStatus.FAILED,
        Money.of("49.90"),
        uuid.uuid4(),
        None,
        False,
        False,
        Decimal(unnamed_refund),
        credits_sold=100,
    )
    txn = HypTransaction("77700009", str(payment), payment, 0, Money.of(paid), Source.NOTIFY, verified=True)
    decision = decide(txn, facts, None)
    return decision.action, decision.detail


def test_a_late_exact_price_payment_is_granted_though_an_earlier_partial_refund_went_unknown() -> None:
    # 49.90 cannot be a 1.00 refund's own transaction: the customer paid the price, late
    assert _decided("1.00", "49.90")[0] == Action.GRANT


@pytest.mark.parametrize("paid", ["49.90", "10.00"])
def test_an_approved_transaction_of_no_more_than_an_unnamed_refund_waits_for_a_human(paid: str) -> None:
    action, detail = _decided("49.90", paid)
    assert action == Action.NONE and "refund" in (detail or ""), detail

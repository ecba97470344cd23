"""A refund with no Id of its own holds for review only an approved transaction that could be its own (no more than
it): a later payment of more is decided as any payment."""

from __future__ import annotations

import uuid
from decimal import Decimal

from payments.adapters.journal import Action, HypTransaction, PaymentFacts, Source
from payments.domain.money import Money
from payments.domain.payment import PaymentStatus
from payments.services.settle import decide


def test_a_late_exact_price_payment_is_granted_though_an_earlier_partial_refund_went_unknown() -> None:
    payment = uuid.uuid4()
    # A failed payment; an earlier refund of 1.00 of a mismatched transaction of it went 'unknown' (months ago)
    facts = PaymentFacts(
        PaymentStatus.FAILED,
        Money.of("49.90"),
        uuid.uuid4(),
        None,
        False,
        False,
        largest_unnamed_refund=Decimal("1.00"),
    )
    # The customer now pays the payment's exact price on its page: 49.90 cannot be a 1.00 refund's own transaction
    late = HypTransaction("77700009", str(payment), payment, 0, Money.of("49.90"), Source.NOTIFY, verified=True)
    decision = decide(late, facts, None)
    assert decision.action == Action.GRANT, (decision.action, decision.detail)


def test_an_approved_transaction_of_no_more_than_an_unnamed_refund_waits_for_a_human() -> None:
    payment = uuid.uuid4()
    facts = PaymentFacts(
        PaymentStatus.FAILED,
        Money.of("49.90"),
        uuid.uuid4(),
        None,
        False,
        False,
        largest_unnamed_refund=Decimal("49.90"),
    )
    maybe_the_refund = HypTransaction(
        "77700010", str(payment), payment, 0, Money.of("49.90"), Source.NOTIFY, verified=True
    )
    decision = decide(maybe_the_refund, facts, None)
    assert decision.action == Action.NONE and "refund" in (decision.detail or ""), decision

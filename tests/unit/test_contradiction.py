"""A verified redelivery that says something else than the journal's decided row: kept, never a new decision."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from payments.adapters.journal import Action, HypTransaction, JournalEntry, PaymentFacts, Source, Verdict
from payments.domain.money import Currency, Money
from payments.domain.payment import PaymentStatus
from payments.services.settle import Result, decide

PAYMENT = uuid4()
FACTS = PaymentFacts(
    PaymentStatus.COMPLETED, Money.of("49.90", Currency.ILS), uuid4(), "70000001", True, False, credits_sold=100
)


def _txn(
    ccode: int = 0, amount: str = "49.90", currency: Currency = Currency.ILS, known: bool = True
) -> HypTransaction:
    return HypTransaction(
        hypay_id="70000001",
        order_ref=str(PAYMENT),
        payment_id=PAYMENT,
        ccode=ccode,
        amount=Money.of(amount, currency),
        source=Source.NOTIFY,
        verified=True,
        currency_known=known,
    )


def _entry(decision: Verdict = Verdict.GRANTED, ccode: int | None = 0, amount: str | None = "49.90") -> JournalEntry:
    return JournalEntry(decision, PAYMENT, True, "redirect", ccode, Decimal(amount) if amount else None, "ILS")


def test_an_agreeing_redelivery_changes_nothing_and_says_nothing() -> None:
    decision = decide(_txn(amount="49.9"), FACTS, _entry())
    assert (decision.action, decision.verdict, decision.result) == (Action.NONE, Verdict.GRANTED, Result.COMPLETED)
    assert decision.contradiction is None and decision.metric is None


@pytest.mark.parametrize(
    ("txn", "said"),
    [
        (_txn(ccode=6), ["CCode 6 (journaled 0)"]),
        (_txn(amount="99.90"), ["amount 99.90 ILS (journaled 49.90 ILS)"]),
        (_txn(ccode=33, amount="1.00"), ["CCode 33 (journaled 0)", "amount 1.00 ILS (journaled 49.90 ILS)"]),
        (_txn(currency=Currency.USD), ["amount 49.90 USD (journaled 49.90 ILS)"]),
    ],
)
def test_a_contradicting_redelivery_is_kept_and_counted_never_decided_again(
    txn: HypTransaction, said: list[str]
) -> None:
    decision = decide(txn, FACTS, _entry())
    assert (decision.action, decision.verdict, decision.result) == (Action.NONE, Verdict.GRANTED, Result.COMPLETED)
    assert decision.metric == "ContradictingDelivery" and not decision.override
    assert decision.contradiction is not None and "70000001" in decision.contradiction
    assert all(part in decision.contradiction for part in said)


def test_rows_that_cannot_be_compared_and_refund_rows_contradict_nothing() -> None:
    assert decide(_txn(ccode=6), FACTS, _entry(ccode=None, amount=None)).contradiction is None
    assert decide(_txn(amount="1.00"), FACTS, _entry(Verdict.REFUNDED, ccode=0, amount="10.00")).contradiction is None


def test_two_refusals_with_other_codes_or_amounts_moved_no_money_and_contradict_nothing() -> None:
    facts = FACTS._replace(status=PaymentStatus.FAILED)
    decision = decide(_txn(ccode=33, amount="1.00"), facts, _entry(Verdict.DECLINED, ccode=6))
    assert (decision.action, decision.result, decision.contradiction) == (Action.NONE, Result.FAILED, None)


def test_a_currency_we_do_not_sell_in_is_not_compared() -> None:
    # Its amount's currency is a stand-in (the journal keeps no currency for it): only the amount counts
    assert decide(_txn(currency=Currency.USD, known=False), FACTS, _entry()).contradiction is None


@pytest.mark.parametrize(
    ("sqlstate", "for_good"),
    [
        ("22003", True),  # a value out of range
        ("23505", True),  # a constraint
        ("42703", True),  # a bug in a statement
        ("P0001", True),  # a trigger's refusal
        ("40001", False),  # a serialization conflict
        ("40P01", False),  # a deadlock
        ("55P03", False),  # a lock timeout
        ("57014", False),  # a statement timeout
        ("57P01", False),  # the server shutting down
        ("53300", False),  # too many connections
        ("08006", False),  # the connection broke
        (None, True),
    ],
)
def test_only_a_refusal_that_will_not_pass_counts_a_callback_as_not_settled(
    sqlstate: str | None, for_good: bool
) -> None:
    from payments.adapters.db import QueryError

    assert QueryError("refused", sqlstate).refused_for_good is for_good

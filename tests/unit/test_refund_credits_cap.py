"""Credits taken back by refunds never exceed what the transaction granted, whatever was refunded (an amount Hyp's
answer gave unreadably is measured against the payment's price, and Hyp may have charged more)."""

from __future__ import annotations

from payments.domain.refund import credits_share, credits_to_take


def test_a_refund_of_more_than_the_basis_takes_back_what_was_granted_and_no_more() -> None:
    assert credits_share(500, 19900, 39800) == 500
    assert credits_to_take(500, 19900, 0, 39800) == 500
    assert credits_to_take(500, 19900, 19900, 100) == 0  # all of it went back already
    assert credits_to_take(500, 19900, 9950, 19900) == 250  # the rest, not 500 more

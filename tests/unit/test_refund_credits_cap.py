"""Credits taken back by refunds never exceed what the transaction granted, whatever was refunded (an amount Hyp's
answer gave unreadably is measured against the payment's price, and Hyp may have charged more)."""

from __future__ import annotations

from payments.domain.refund import credits_share, credits_to_take


def test_a_refund_of_more_than_the_basis_takes_back_what_was_granted_and_no_more() -> None:
    assert credits_share(500, 19900, 39800) == 500
    assert credits_to_take(500, 19900, 0, 39800) == 500
    assert credits_to_take(500, 19900, 19900, 100) == 0  # all of it went back already
    assert credits_to_take(500, 19900, 9950, 19900) == 250  # the rest, not 500 more


def test_what_was_taken_above_the_price_goes_back_first_without_credits() -> None:
    # 100 credits sold at 49.90, Hyp took 74.85: the first 24.95 refunded take none, the price's 49.90 all 100
    assert credits_to_take(100, 4990, 0, 2495, free_minor=2495) == 0
    assert credits_to_take(100, 4990, 2495, 2495, free_minor=2495) == 50
    assert credits_to_take(100, 4990, 4990, 2495, free_minor=2495) == 50
    assert credits_to_take(100, 4990, 0, 7485, free_minor=2495) == 100  # all at once: all of them, never more
    # Without an excess, as before
    assert credits_to_take(100, 4990, 0, 2495) == 50

"""choose_method: a stored time at the ends of what Python holds (an infinity the web app wrote, read as the latest or
earliest datetime) is not today: a refund, never an OverflowError (a 500)."""

from __future__ import annotations

import datetime as dt

import pytest

from payments.domain.money import Money
from payments.domain.refund import Method, choose_method, israel


@pytest.mark.skipif(israel() is None, reason="no time zone database")
@pytest.mark.parametrize("original_at", [dt.datetime.max, dt.datetime.min], ids=["infinity", "-infinity"])
def test_a_time_at_the_ends_of_the_calendar_is_not_today(original_at: dt.datetime) -> None:
    price = Money.of("49.90")
    chosen = choose_method(
        amount=price,
        original=price,
        reserved=Money.of("0"),
        original_at=original_at.replace(tzinfo=dt.UTC),
        now=dt.datetime.now(dt.UTC),
    )
    assert chosen == Method.REFUND

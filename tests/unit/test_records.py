"""payments.records.Record: a frozen dataclass's behaviour, without its cost at import."""

from __future__ import annotations

import copy
import json
from typing import ClassVar

import pytest

from payments.records import Record


class Card(Record):
    _hidden = frozenset({"token"})
    kind: ClassVar[str] = "card"  # not a field
    token: str
    last4: str | None
    expiry_month: int = 12
    expiry_year: int = 2030


def test_fields_in_order_with_their_defaults() -> None:
    assert Card._fields == ("token", "last4", "expiry_month", "expiry_year")
    card = Card("tok", "4580", expiry_year=2031)
    assert (card.token, card.last4, card.expiry_month, card.expiry_year) == ("tok", "4580", 12, 2031)
    with pytest.raises(TypeError):
        Card("tok")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Card("tok", "4580", colour="red")  # type: ignore[call-arg]


def test_frozen_equal_by_value_and_replaced_like_a_dataclass() -> None:
    card = Card("tok", "4580")
    with pytest.raises(AttributeError):
        card.last4 = "0000"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del card.token
    assert card == Card("tok", "4580") != Card("tok", "0000")
    assert card != ("tok", "4580", 12, 2030)  # not a tuple
    assert hash(card) == hash(Card("tok", "4580")) and len({card, Card("tok", "4580")}) == 1
    moved = card._replace(expiry_year=2032)
    assert moved.expiry_year == 2032 and card.expiry_year == 2030 and type(moved) is Card
    with pytest.raises(TypeError):
        card._replace(colour="red")
    assert copy.copy(card) == card == copy.deepcopy(card)


def test_hidden_fields_are_in_no_repr_and_no_json_log_value() -> None:
    card = Card("s3cr3t-token", "4580")
    assert repr(card) == "Card(last4='4580', expiry_month=12, expiry_year=2030)" == str(card)
    assert "s3cr3t" not in json.dumps({"card": card}, default=str)


def test_a_subclass_adds_fields() -> None:
    class Dated(Card):
        day: int = 1

    assert Dated._fields == (*Card._fields, "day")
    assert Dated("tok", None, day=5).day == 5 and "token" not in repr(Dated("tok", None))


def test_post_init_checks_the_fields_once_set() -> None:
    from payments.domain.money import Currency, Money

    assert Money(4990) == Money(4990, Currency.ILS) and str(Money(4990)) == "49.90 ILS"
    for minor in (49.9, True, "4990"):
        with pytest.raises(TypeError):
            Money(minor)  # type: ignore[arg-type]

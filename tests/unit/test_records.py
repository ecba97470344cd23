"""payments.records.Record: a frozen dataclass's behaviour, without its cost at import."""

from __future__ import annotations

import copy
import json
import typing
from typing import ClassVar
from unittest import mock

import pytest

from payments.records import Record

ORDER_ID = "bc000000-0000-4000-8000-000000000001"


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


def test_a_record_matches_a_positional_class_pattern() -> None:
    match Card("tok", "4580"):
        case Card(_, last4):
            assert last4 == "4580"
        case _:
            pytest.fail("no match")


def test_replace_checks_the_copy_as_a_new_record() -> None:
    from payments.domain.money import Money

    with pytest.raises(TypeError):
        Money(4990)._replace(minor=49.9)  # __post_init__ refuses a float
    assert copy.replace(Money(1), minor=2) == Money(2)


def test_uncompared_fields_are_out_of_equality_and_the_hash() -> None:
    from payments.services.handle_callback import Callback

    raw = f"Id=12345678&CCode=0&Amount=49.90&ACode=0012345&Order={ORDER_ID}"
    one, other = Callback.parse(raw), Callback.parse(raw + "&Fild1=x")  # the same callback, its raw text aside
    assert one == other and hash(one) == hash(other)


def test_another_type_has_its_say_in_equality() -> None:
    assert Card("tok", None).__eq__(object()) is NotImplemented
    assert Card("tok", None) == mock.ANY


def test_fields_as_a_dataclass_finds_them() -> None:
    class Base(Record):
        kind: typing.ClassVar[str] = "base"  # a ClassVar, however typing is named
        a: int
        b: int = 1

    class Child(Base):
        b: int = 2  # declared again: keeps its place, takes the new default

    class Odd(Record):
        _d: int  # a name the generated __init__ could have shadowed
        self_: int = 0

    assert Base._fields == ("a", "b") and Child._fields == ("a", "b") and Child(0).b == 2
    assert Odd(5)._d == 5

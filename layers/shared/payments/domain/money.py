"""Money as integer agorot (cents) plus an ISO currency. Never float; compared exactly."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from enum import StrEnum

from payments.errors import InvalidRequest
from payments.records import Record


class Currency(StrEnum):
    ILS = "ILS"
    USD = "USD"
    EUR = "EUR"
    GBP = "GBP"


# Hyp's `Coin` codes.
COIN = {Currency.ILS: "1", Currency.USD: "2", Currency.EUR: "3", Currency.GBP: "4"}
CURRENCY_OF_COIN = {code: currency for currency, code in COIN.items()}


class Money(Record):
    """An amount in the smallest unit (agorot, cents) of `currency`."""

    minor: int
    currency: Currency = Currency.ILS

    def __post_init__(self) -> None:
        if isinstance(self.minor, bool) or not isinstance(self.minor, int):
            raise TypeError("Money.minor must be an int (agorot/cents)")

    @classmethod
    def of(cls, amount: Decimal | str | int, currency: Currency | str = Currency.ILS) -> Money:
        """From a major-unit amount (`Decimal("49.90")`, `"49.90"`); more than 2 decimals is an error."""
        if isinstance(amount, float):
            raise TypeError("money is never a float")
        try:
            value = Decimal(amount)
        except (InvalidOperation, ValueError):
            raise InvalidRequest(f"not an amount: {amount!r}") from None
        minor = value * 100
        if not value.is_finite() or minor != minor.to_integral_value():
            raise InvalidRequest(f"not an amount with at most 2 decimals: {amount!r}")
        return cls(int(minor), Currency(currency))

    @property
    def amount(self) -> Decimal:
        """The major-unit amount, exact (Decimal("49.90"))."""
        return (Decimal(self.minor) / 100).quantize(Decimal("0.01"))

    def hypay_amount(self) -> str:
        """Hyp's `Amount`: shekels with two decimals (`49.90`)."""
        if self.minor <= 0:
            raise InvalidRequest("amount must be positive")
        return f"{self.amount:.2f}"

    @property
    def coin(self) -> str:
        return COIN[self.currency]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

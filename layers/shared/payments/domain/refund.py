"""Refunds, the pure part: which Hyp action reverses a payment, and how many credits a refund takes back."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from functools import cache

from payments.domain.money import Money


@cache
def israel() -> dt.tzinfo | None:
    """Israel's time zone; None without a tz database in the runtime (loaded by the first refund, not at import)."""
    try:
        from zoneinfo import ZoneInfo  # a refund's rare path, off every cold start

        return ZoneInfo("Asia/Jerusalem")
    except Exception:  # noqa: BLE001 - no tz database: never guess the day, always refund
        return None


# Hyp Pay: a transaction can be cancelled "up until 22:00 Israel time on the same business day it was made".
CANCEL_UNTIL_HOUR = 22


class Method(StrEnum):
    CANCEL = "cancel"  # action=CancelTrans: the whole transaction, before it is transmitted; no card fees
    REFUND = "refund"  # action=zikoyAPI: all or part, any time after; a new (credit) transaction at Hyp


class RefundStatus(StrEnum):
    ATTEMPTED = "attempted"  # Hyp asked (or about to be): may have moved money
    SUCCEEDED = "succeeded"
    REFUSED = "refused"  # Hyp said no (or was never asked: `ccode` NULL and a "not sent" message): nothing moved
    UNKNOWN = "unknown"  # the answer was lost: may have moved money, a human confirms


# Statuses whose amount may have left (or will leave) the merchant: they count against what remains.
RESERVING = (RefundStatus.ATTEMPTED, RefundStatus.SUCCEEDED, RefundStatus.UNKNOWN)


def choose_method(
    *,
    amount: Money,
    original: Money,
    reserved: Money,
    original_at: dt.datetime,
    now: dt.datetime,
    cancel_until_hour: int = CANCEL_UNTIL_HOUR,
) -> Method:
    """CancelTrans for the whole of an untouched transaction made today (Israel time) before the cut-off;
    zikoyAPI otherwise. Without a time zone database the day cannot be told: always zikoyAPI."""
    zone = israel()
    if zone is None or amount != original or reserved.minor != 0:
        return Method.REFUND
    try:
        made, today = original_at.astimezone(zone), now.astimezone(zone)
    except OverflowError:  # a stored time at the ends of what Python holds (an infinity the web app wrote): not today
        return Method.REFUND
    if made.date() == today.date() and today.hour < cancel_until_hour:
        return Method.CANCEL
    return Method.REFUND


def credits_share(granted: int, paid_minor: int, refunded_minor: int) -> int:
    """The credits `refunded_minor` of `paid_minor` stands for, rounded half up (a full refund: all of them)."""
    if paid_minor <= 0 or granted <= 0:
        return 0
    refunded_minor = min(refunded_minor, paid_minor)  # never more than granted, whatever was refunded
    return (granted * refunded_minor * 2 + paid_minor) // (2 * paid_minor)


def credits_to_take(granted: int, paid_minor: int, before_minor: int, amount_minor: int, *, free_minor: int = 0) -> int:
    """Credits a refund of `amount_minor` takes back after `before_minor` was refunded already: cumulative, so
    partial refunds that add up to the whole take back exactly what was granted, never a credit more. The first
    `free_minor` refunded take none: money Hyp took above the price the credits were sold for (an overcharge given
    back leaves the customer what they paid for), the credits standing for `paid_minor`, the price."""

    def share(refunded_minor: int) -> int:
        return credits_share(granted, paid_minor, max(0, refunded_minor - free_minor))

    return share(before_minor + amount_minor) - share(before_minor)


# The journal detail of a transaction held because a refund of its payment had no Id of its own yet (its payment left
# as it was; it may be that refund's own transaction): a closed payment may be completed with such a transaction and
# with no other; it is not refunded while that refund is unconfirmed.
HELD_WHILE_A_REFUND_HAS_NO_ID = "approved while a refund of this payment has no Id of its own yet"
# The detail's words for a transaction approved for a payment whose money a refund of another payment sent back (an
# operator named it as that payment's lost saved-card charge), followed by the refund's id; the review queue's reason.
SENT_BACK_BY_ANOTHER = "sent back by refund"


def held_while_a_refund_has_no_id(decision: str | None, detail: str | None) -> bool:
    """Whether a journal row is such a transaction (decided `review` with that detail)."""
    return decision == "review" and HELD_WHILE_A_REFUND_HAS_NO_ID in (detail or "")

"""Whether a name taken from a request (a JSON member's, a query parameter's, a media type) may be repeated in an
answer or a log."""

from __future__ import annotations

import re

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", re.ASCII)  # hyphens: header names (Idempotency-Key)
_DIGITS = re.compile(r"[0-9]{3}")


def repeatable(name: str) -> bool:
    """A plain identifier without three digits in a row: a name a client or Hyp would use, never one that could
    carry a card number or a CVV, whole or glued to a word (`card_4580...`, `pan4580...`)."""
    return _PLAIN.fullmatch(name) is not None and _DIGITS.search(name) is None


def without_digit_runs(text: str) -> bool:
    """No three digits in a row: nothing that could be a card number or a CVV (for a value of a known shape, such as
    a media type, that is checked for its shape apart)."""
    return _DIGITS.search(text) is None

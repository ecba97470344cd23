"""The body of an application/problem+json answer (RFC 9457), for the routes and for the answers services keep."""

from __future__ import annotations

import re
from typing import Any

from payments.domain.cards import CARD_NUMBER

# A run of 13 digits or more, glued to others or not: a card number with its expiry pasted after it is no card number
# standing alone, and no Id or amount an answer names is that long.
_LONG_DIGITS = re.compile("[0-9\uff10-\uff19]{13,}")


def problem_body(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """What reads as a card number in `detail` or in any member's text (in a card's groups, or in a long run of
    digits) is never repeated, whatever put it there (an Id an operator pasted, a message of Hyp's): masked as a
    whole."""
    return {"type": "about:blank", "title": title, "status": status, "detail": _shown(detail), **_shown(extra)}


def _shown(value: Any) -> Any:
    if isinstance(value, str):
        return _LONG_DIGITS.sub("[redacted]", CARD_NUMBER.sub("[redacted]", value))
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return value

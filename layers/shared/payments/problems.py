"""The body of an application/problem+json answer (RFC 9457), for the routes and for the answers services keep."""

from __future__ import annotations

from typing import Any

from payments.domain.cards import CARD_NUMBER


def problem_body(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """What reads as a card number in `detail` is never repeated, whatever put it there (an Id an operator pasted, a
    message of Hyp's): masked as a whole."""
    return {"type": "about:blank", "title": title, "status": status, "detail": CARD_NUMBER.sub("[redacted]", detail),
            **extra}  # fmt: skip

"""Hyp transaction ids an operator names."""

from __future__ import annotations

from payments.adapters.db import Database
from payments.adapters.journal import Journal
from payments.domain import hypay as protocol
from payments.errors import InvalidRequest


def as_named(db: Database, field: str, value: str | None) -> None:
    """An operator's Hyp Id (already a Hyp Id: 1 to 20 digits, not all zeros) with a leading zero is taken only when
    the journal holds it written so (Hyp sent it so); else InvalidRequest naming `field`."""
    if value is not None and value.startswith("0") and not Journal(db).holds(value):
        raise InvalidRequest(f"{field}: {protocol.LEADING_ZERO_PROBLEM}")

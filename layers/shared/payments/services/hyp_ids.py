"""Hyp transaction ids an operator names."""

from __future__ import annotations

from payments.adapters.db import Database
from payments.adapters.journal import Journal
from payments.domain import hypay as protocol
from payments.errors import InvalidRequest


def as_named(db: Database, field: str, value: str | None) -> None:
    """An operator's Hyp Id is a Hyp Id (1 to 20 digits, not all zeros), taken only written as the journal holds it:
    the journal compares Ids as text, so "0123" and "123" would be two transactions, and one Hyp transaction could be
    credited twice. One the journal holds with or without leading zeros must be named so; one it does not hold,
    written with no leading zero, as Hyp writes it. Else InvalidRequest naming `field`."""
    if value is None:
        return
    if protocol.hyp_id(value) is None:
        raise InvalidRequest(f"{field}: {protocol.HYP_ID_PROBLEM}")
    held = Journal(db).spellings(value)
    if held and value not in held:
        raise InvalidRequest(f"{field}: the journal holds this Hyp transaction as {held[0]}: name it so")
    if value.startswith("0") and value not in held:
        raise InvalidRequest(f"{field}: {protocol.LEADING_ZERO_PROBLEM}")

"""Hyp transaction ids an operator names."""

from __future__ import annotations

from typing import overload

from payments.adapters.db import Database
from payments.adapters.journal import Journal
from payments.domain import hypay as protocol
from payments.errors import InvalidRequest


@overload
def as_named(db: Database, field: str, value: str) -> str: ...
@overload
def as_named(db: Database, field: str, value: None) -> None: ...
@overload
def as_named(db: Database, field: str, value: str | None) -> str | None: ...


def as_named(db: Database, field: str, value: str | None) -> str | None:
    """An operator's Hyp Id (1 to 20 digits, not all zeros, else InvalidRequest naming `field`), spelled as the journal
    holds it. The journal compares Ids as text, so "0123" and "123" would be two transactions and one Hyp transaction
    could be credited twice: a number the journal holds, with or without leading zeros, is taken as it holds it (one
    spelling at most: sql/014's unique index on the number); one it does not hold is taken as Hyp writes it, with no
    leading zero."""
    if value is None:
        return None
    if protocol.hyp_id(value) is None:
        raise InvalidRequest(f"{field}: {protocol.HYP_ID_PROBLEM}")
    return Journal(db).as_hyp_writes(value)

"""SQL of the admin audit trail (`admin_audit_log`): append-only, one row per admin action.

The functions' role (`payments_backend`, sql/007) may INSERT and SELECT here, never UPDATE or DELETE, so a
row, once written, stays as written. Write it with the transaction that changes the state it describes
(pass that `Transaction`), so there is no action without its row and no row for an action rolled back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from payments.adapters.db import Rows, bind
from payments.records import Record


class Runner(Protocol):
    def run(self, sql: str) -> Rows: ...


class AuditAction(StrEnum):
    """The table's CHECK: what an admin did."""

    RESOLVE = "resolve"
    REFUND = "refund"
    CLEANUP = "cleanup"
    CLOSE = "close"


class AuditEntry(Record):
    id: UUID
    at: datetime
    admin: str
    action: AuditAction
    payment_id: UUID | None
    idempotency_key: str | None
    request: Any
    before: Any
    after: Any


def _json(value: Mapping[str, Any] | None) -> str | None:
    """jsonb text; Decimal, UUID, datetime and enums as strings (money stays exact)."""

    def default(item: Any) -> Any:
        if isinstance(item, (Decimal, UUID)):
            return str(item)
        if isinstance(item, datetime):
            return item.isoformat()
        raise TypeError(f"{type(item).__name__} is not JSON")

    return None if value is None else json.dumps(value, default=default, sort_keys=True)


# The row's id is chosen here: sent as its own statement (`Database.run`), the INSERT is sent again on a new connection
# when the first one's answer was lost, and the second sending, finding the row the first committed, adds none.
_INSERT = """
INSERT INTO public.admin_audit_log (id, admin, action, payment_id, idempotency_key, request, before_state, after_state)
VALUES (:id::uuid, :admin, :action, :payment::uuid, :key, :request::jsonb, :before::jsonb, :after::jsonb)
ON CONFLICT (id) DO NOTHING"""

_COLUMNS = (
    "id::text, at, admin, action, payment_id::text, idempotency_key, request::text, before_state::text,"
    " after_state::text"
)


def record(
    db_or_tx: Runner,
    *,
    admin: str,
    action: AuditAction | str,
    payment_id: UUID | str | None,
    idempotency_key: str | None,
    request: Mapping[str, Any] | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> UUID:
    """Append one row: who (the admin credential's NAME, never the token), what, to which payment, with which
    Idempotency-Key, the request, the state before and after (JSON). Returns the row's id.

    `db_or_tx` is a `Database` (its own autocommit statement) or the `Transaction` of the change it records.
    """
    if not admin:
        raise ValueError("an audit row needs the admin's name")
    row_id = uuid.uuid4()
    db_or_tx.run(
        bind(
            _INSERT,
            id=str(row_id),
            admin=admin,
            action=str(AuditAction(action)),
            payment=str(payment_id) if payment_id is not None else None,
            key=idempotency_key,
            request=_json(request),
            before=_json(before),
            after=_json(after),
        )
    )
    return row_id


def entries(db: Runner, *, payment_id: UUID | str | None = None, limit: int = 100) -> list[AuditEntry]:
    """The newest rows first (of one payment, when given)."""
    where = "WHERE payment_id = :payment::uuid" if payment_id is not None else ""
    rows = db.run(
        bind(
            f"SELECT {_COLUMNS} FROM public.admin_audit_log {where} ORDER BY at DESC, id LIMIT :limit",
            payment=str(payment_id) if payment_id is not None else None,
            limit=limit,
        )
    )
    return [
        AuditEntry(
            UUID(rid),
            at,
            admin,
            AuditAction(action),
            UUID(pid) if pid else None,
            key,
            json.loads(request) if request else None,
            json.loads(before) if before else None,
            json.loads(after) if after else None,
        )
        for rid, at, admin, action, pid, key, request, before, after in rows
    ]


__all__ = ["AuditAction", "AuditEntry", "entries", "record"]

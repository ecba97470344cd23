"""SQL of closing a journal row by hand: a Hyp transaction that needs a human and that no action of ours settles
(charged for an Order that is not one of our payments; a second charge, or one held for a payment already closed,
refunded through Hyp's portal). See `payments.services.close_transaction` for what may be closed.

The payment the row names, when there is one, is locked first (as the settling and refunding statements lock it
before they read or write its journal rows), then the row itself: a refund or a callback of that payment waits for
the close, or the close for it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from payments.adapters.db import Transaction, bind

_LOCK_PAYMENT = """
SELECT p.id FROM public.payments p
 WHERE p.id = (SELECT t.payment_id FROM public.hypay_transactions t WHERE t.hypay_id = :txn)
   FOR UPDATE"""

_FACTS = """
SELECT t.hypay_id, t.payment_id::text, t.decision, t.verified, t.ccode, t.amount::text, t.currency, t.order_ref,
       t.closed_as, t.closed_by, t.closed_at, t.closed_reason, p.status,
       COALESCE(ltrim(p.hypay_transaction_id, '0') = ltrim(t.hypay_id, '0'), false),  -- any spelling of the number
       EXISTS (SELECT 1 FROM public.refunds r
                WHERE r.original_hypay_id = t.hypay_id AND r.status IN ('attempted', 'unknown')),
       COALESCE((SELECT sum(r.amount) FROM public.refunds r
                  WHERE r.original_hypay_id = t.hypay_id AND r.status = 'succeeded'), 0)::text,
       (SELECT r.id::text FROM public.refunds r WHERE r.hypay_refund_id = t.hypay_id LIMIT 1)
  FROM public.hypay_transactions t
  LEFT JOIN public.payments p ON p.id = t.payment_id
 WHERE t.hypay_id = :txn
   FOR UPDATE OF t"""

_CLOSE = """
UPDATE public.hypay_transactions
   SET closed_as = :closed_as, closed_by = :admin, closed_at = now(), closed_reason = :reason
 WHERE hypay_id = :txn AND closed_as IS NULL
RETURNING closed_at"""


@dataclass(frozen=True)
class Closable:
    """A journal row as closing it needs it, read under its lock (and its payment's)."""

    hypay_id: str
    payment_id: str | None
    decision: str
    verified: bool
    ccode: int | None
    amount: Decimal | None
    currency: str | None
    order_ref: str | None
    closed_as: str | None
    closed_by: str | None
    closed_at: dt.datetime | None
    closed_reason: str | None
    payment_status: str | None  # None: the row names no payment of ours
    paid_it: bool  # it is its payment's paying transaction (payments.hypay_transaction_id): credits stand on it
    refund_unsettled: bool  # a refund of it may be moving money (attempted, or its outcome unknown)
    refunded: Decimal  # what refunds of it through this API took back
    refund_of: str | None  # the refund whose own transaction it is (money that went back), if any

    def as_state(self) -> dict[str, Any]:
        """What the audit trail records as `before` / `after`."""
        return {
            "hypay_id": self.hypay_id,
            "payment_id": self.payment_id,
            "payment_status": self.payment_status,
            "decision": self.decision,
            "amount": None if self.amount is None else f"{self.amount:.2f}",
            "currency": self.currency,
            "refunded": f"{self.refunded:.2f}",
            "closed_as": self.closed_as,
            "closed_by": self.closed_by,
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
        }


class CloseStatements:
    """The statements of one close, inside its transaction."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx

    def lock(self, hypay_id: str) -> Closable | None:
        self.tx.run(bind(_LOCK_PAYMENT, txn=hypay_id))
        rows = self.tx.run(bind(_FACTS, txn=hypay_id))
        if not rows:
            return None
        (txn, payment, decision, verified, ccode, amount, currency, order_ref, closed_as, closed_by, closed_at,
         closed_reason, status, paid_it, unsettled, refunded, refund_of) = rows[0]  # fmt: skip
        return Closable(
            txn,
            payment,
            decision,
            bool(verified),
            ccode,
            None if amount is None else Decimal(amount),
            currency,
            order_ref,
            closed_as,
            closed_by,
            closed_at,
            closed_reason,
            status,
            bool(paid_it),
            bool(unsettled),
            Decimal(refunded),
            refund_of,
        )

    def close(self, row: Closable, *, closed_as: str, admin: str, reason: str) -> Closable | None:
        """Marks the row (locked by `lock`) closed, unless it is already: the row as closed, or None."""
        done = self.tx.run(bind(_CLOSE, txn=row.hypay_id, closed_as=closed_as, admin=admin, reason=reason))
        if not done:
            return None
        return replace(row, closed_as=closed_as, closed_by=admin, closed_at=done[0][0], closed_reason=reason)

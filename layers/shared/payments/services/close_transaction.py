"""An operator closes a Hyp transaction that needs a human and that no action of ours settles, from what Hyp's portal
shows: `POST /admin/transactions/{hypay_id}/close` with `{"outcome": "refunded_in_hyp", "reason": "..."}`.

What may be closed: a journal row in the review queue as a transaction of its own, that is one Hyp charged
(`CCode` 0) and
- `unmatched`: charged for an `Order` that is not one of our payments (no refund of ours can name it), or
- `review` of a payment that is not itself under review (a second charge, one approved after the payment closed, one
  of a payment whose status is from before this backend): refunded through Hyp's portal rather than through
  `POST /admin/payments/{id}/refund`.

Nothing is sent to Hyp and no credits move: such a transaction never granted any. Closed, it leaves the queue, is never
refunded again through this API, and is never taken to complete a payment (a resolve naming it is a 409, as for a
refunded one). Refused (409, nothing written): a row whose payment is under review (resolve the payment first), one not
verified yet (it settles when verified), one Hyp did not charge or that credits were granted for (decided `granted`,
or its payment's paying transaction, as a payment completed before this backend's is), one a refund of ours
is still moving money for (settle that refund first), and one refunded in full through this API already.

Repeating the request is safe: a row closed already as asked is answered as it is (no second audit row); the audit
trail (`admin_audit_log`, action `close`) has the one that closed it, written in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit

from payments.adapters import audit
from payments.adapters.closing_store import Closable, CloseStatements
from payments.adapters.db import Database, Transaction
from payments.domain import hypay as protocol
from payments.errors import Conflict, InvalidRequest, NotFound
from payments.observability import logger, metrics
from payments.services.hyp_ids import as_named

Outcome = Literal["refunded_in_hyp"]


@dataclass(frozen=True)
class Closed:
    status: int
    body: dict[str, Any]


def close_refusal(row: Closable) -> str | None:
    """Why this journal row may not be closed by hand, or None."""
    if row.refund_of is not None:
        return f"Hyp transaction {row.hypay_id} is refund {row.refund_of}'s own: money that went back, nothing to close"
    if row.decision == "unverified":
        return (
            f"Hyp transaction {row.hypay_id} is not verified yet: it is settled when Hyp's callback is verified, or"
            " its payment failed once the callbacks kept for it are found forged (docs/operations.md)"
        )
    if row.decision not in ("unmatched", "review"):
        return f"Hyp transaction {row.hypay_id} needs no human ({row.decision}): there is nothing to close"
    if row.paid_it:
        # Its payment's credits stand on it (a payment the web app completed before this backend, say): closed, they
        # would stay with the customer for money refunded in the portal. A refund through the API takes them back.
        return (
            f"Hyp transaction {row.hypay_id} paid payment {row.payment_id}, whose credits stand on it: refund it"
            " through the API (POST /admin/payments/{id}/refund), which takes them back"
        )
    if row.ccode != 0:
        return f"Hyp did not charge transaction {row.hypay_id} (CCode {row.ccode}): there is nothing to close"
    if row.decision == "review" and row.payment_status == "needs_review":
        return (
            f"payment {row.payment_id} is under review: resolve it first (POST /admin/payments/{{id}}/resolve); money"
            " Hyp took that it does not keep stays in the queue to refund or close"
        )
    if row.refund_unsettled:
        return (
            f"a refund of Hyp transaction {row.hypay_id} may be moving money: settle it first"
            " (POST /admin/refunds/{refund_id}/outcome)"
        )
    if row.amount is not None and row.refunded >= row.amount:
        return f"Hyp transaction {row.hypay_id} was refunded in full through this API: there is nothing to close"
    return None


class CloseTransaction:
    """`CloseTransaction(db)(hypay_id=..., outcome=..., reason=..., admin=..., idempotency_key=...)`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, *, hypay_id: str, outcome: Outcome, reason: str, admin: str, idempotency_key: str) -> Closed:
        reason = (reason or "").strip()
        if not 1 <= len(reason) <= 500:
            raise InvalidRequest("reason: 1 to 500 characters saying what Hyp's portal shows")
        if not admin:
            raise InvalidRequest("the admin's name is required")
        if protocol.hyp_id(hypay_id) is None:
            raise NotFound("no such Hyp transaction in the journal")
        txn = as_named(self.db, "hypay_id", hypay_id)

        def work(tx: Transaction) -> tuple[Closed, bool]:
            statements = CloseStatements(tx)
            row = statements.lock(txn)
            if row is None:
                raise NotFound("no such Hyp transaction in the journal")
            if row.closed_as is not None:
                return self._as_it_is(row, outcome), False
            refusal = close_refusal(row)
            if refusal is not None:
                raise Conflict(refusal)
            after = statements.close(row, closed_as=outcome, admin=admin, reason=reason)
            if after is None:
                raise Conflict(f"Hyp transaction {txn} changed while it was being closed; look again")
            audit.record(
                tx,
                admin=admin,
                action=audit.AuditAction.CLOSE,
                payment_id=row.payment_id,
                idempotency_key=idempotency_key,
                request={"hypay_id": txn, "outcome": outcome, "reason": reason},
                before=row.as_state(),
                after=after.as_state(),
            )
            return self._as_it_is(after, outcome), True

        closed, now = self.db.atomic(work, read_committed=True)
        if now:
            metrics.add_metric(name="TransactionClosed", unit=MetricUnit.Count, value=1)
            logger.info(
                "hyp transaction closed by an operator",
                extra={"hypay_transaction_id": txn, "payment_id": closed.body["payment_id"], "admin": admin},
            )
        return closed

    @staticmethod
    def _as_it_is(row: Closable, outcome: Outcome) -> Closed:
        """The answer for a closed row; 409 when it was closed as something else (a finding never overwrites one)."""
        if row.closed_as != outcome:
            raise Conflict(
                f"Hyp transaction {row.hypay_id} was closed as {row.closed_as} by {row.closed_by}: a finding never"
                " overwrites one"
            )
        return Closed(
            200,
            {
                "hypay_id": row.hypay_id,
                "payment_id": row.payment_id,
                "decision": row.decision,
                "amount": None if row.amount is None else f"{row.amount:.2f}",
                "currency": row.currency,
                "closed_as": row.closed_as,
                "closed_by": row.closed_by,
                "closed_at": row.closed_at.isoformat() if row.closed_at else None,
                "reason": row.closed_reason,
            },
        )

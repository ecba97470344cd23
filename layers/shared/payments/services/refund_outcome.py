"""An operator settles a refund whose outcome is unknown (Hyp's answer was lost), from what Hyp's portal shows.

`POST /admin/refunds/{refund_id}/outcome` with `{"outcome": "refunded", "hypay_refund_id": "...", "reason": "..."}`
or `{"outcome": "not_refunded", "reason": "..."}`. Refunded: stored as Hyp's answer would have been (the credits taken
back, the journal row of Hyp's refund transaction, the audit row), in one transaction. Not refunded: the row is
refused and its amount free to be refunded again (with a new Idempotency-Key). Either way nothing is sent to Hyp.

An attempt younger than `SETTLE_SECONDS` (by the database's clock, which wrote it) may still be asking Hyp: 409 with
Retry-After. A refund already settled is answered as it is when the finding agrees, else 409 (a human's finding never
overwrites Hyp's answer). Repeating the request is safe: each outcome is a conditional change of the row under its
payment's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit

from payments.adapters import audit
from payments.adapters.db import Transaction
from payments.adapters.refunds_store import NotRefundable, RefundRow, RefundsStore, StillAsking
from payments.domain import hypay as protocol
from payments.domain.refund import Method, RefundStatus
from payments.errors import Conflict, InvalidRequest, NotFound, RequestInProgress
from payments.observability import logger, metrics
from payments.services.hyp_ids import as_named

# How long an attempt may still be asking Hyp: well past the admin function's timeout (29 s).
SETTLE_SECONDS = 300

Outcome = Literal["refunded", "not_refunded"]


@dataclass(frozen=True)
class Settled:
    status: int
    body: dict[str, Any]


class RefundOutcome:
    """`RefundOutcome(store)(refund_id=..., outcome=..., hypay_refund_id=..., reason=..., admin=..., key=...)`."""

    def __init__(self, store: RefundsStore) -> None:
        self.store = store

    def __call__(
        self,
        *,
        refund_id: UUID,
        outcome: Outcome,
        hypay_refund_id: str | None,
        reason: str,
        admin: str,
        idempotency_key: str,
    ) -> Settled:
        reason = (reason or "").strip()
        if not 1 <= len(reason) <= 500:
            raise InvalidRequest("reason: 1 to 500 characters saying what Hyp's portal shows")
        hypay_refund_id = as_named(self.store.db, "hypay_refund_id", hypay_refund_id)
        row = self.store.get(refund_id)
        if row is None:
            raise NotFound("no such refund")
        if outcome == "refunded":
            self._check_refund_id(row, hypay_refund_id)
        elif hypay_refund_id is not None:
            raise InvalidRequest("hypay_refund_id: only with the outcome refunded")
        settled = self._as_it_is(row, outcome, hypay_refund_id)
        if settled is not None:
            return settled
        # Whether an attempt may still be asking Hyp is the database's to say (its clock wrote the row's updated_at; a
        # Lambda's may run ahead of it), in the transaction that stores the finding.
        write = self._audit(row, outcome, hypay_refund_id, reason, admin, idempotency_key)
        if outcome == "refunded":
            try:
                finished = self.store.succeeded(
                    refund_id,
                    hypay_refund_id=hypay_refund_id,
                    approval_code=None,
                    audit=write,
                    found_by_operator=True,
                    settle_seconds=SETTLE_SECONDS,
                )
            except NotRefundable as exc:
                raise Conflict(f"hypay_refund_id: {exc}") from None
            except StillAsking:
                raise _still_asking() from None
            row = finished.row
        else:
            message = f"not refunded at Hyp, found by {admin}: {reason}"
            stored = self.store.not_refunded(refund_id, message=message, settle_seconds=SETTLE_SECONDS, audit=write)
            row = stored if stored is not None else self._current(refund_id)
            if stored is None and row.status == RefundStatus.ATTEMPTED:
                raise _still_asking()  # not older than SETTLE_SECONDS by the database's clock
        settled = self._as_it_is(row, outcome, hypay_refund_id)
        if settled is None:
            raise Conflict(f"refund {row.id} is {row.status} meanwhile: {row.message or 'see the refund'}")
        metrics.add_metric(name="RefundOutcomeSettled", unit=MetricUnit.Count, value=1)
        logger.info(
            "refund outcome settled by an operator",
            extra={"refund_id": str(row.id), "payment_id": str(row.payment_id), "admin": admin, "outcome": outcome},
        )
        return settled

    @staticmethod
    def _check_refund_id(row: RefundRow, hypay_refund_id: str | None) -> None:
        """What the refund itself refuses of a well-formed finding: 409 (the document's 400 is a malformed body)."""
        if row.method == Method.CANCEL and hypay_refund_id is not None:
            raise Conflict("hypay_refund_id: a cancellation (CancelTrans) makes no transaction of its own")
        if row.method == Method.REFUND and hypay_refund_id is None:
            raise Conflict("hypay_refund_id: required, the Id of Hyp's refund transaction (zikoyAPI)")
        if protocol.same_hyp_id(hypay_refund_id, row.original_hypay_id):
            raise Conflict("hypay_refund_id: that is the refunded transaction's own Id, not the refund's")

    @staticmethod
    def _as_it_is(row: RefundRow, outcome: Outcome, hypay_refund_id: str | None) -> Settled | None:
        """The answer when the row is settled already as found (None while unsettled); 409 when otherwise."""
        if row.status in (RefundStatus.ATTEMPTED, RefundStatus.UNKNOWN):
            return None
        agrees = (
            outcome == "refunded"
            and row.status == RefundStatus.SUCCEEDED
            and (row.hypay_refund_id == hypay_refund_id or protocol.same_hyp_id(row.hypay_refund_id, hypay_refund_id))
        ) or (outcome == "not_refunded" and row.status == RefundStatus.REFUSED)
        if not agrees:
            raise Conflict(
                f"refund {row.id} is {row.status}"
                + (f" (Hyp's refund {row.hypay_refund_id})" if row.hypay_refund_id else "")
                + ": a finding never overwrites an outcome stored"
            )
        return Settled(
            200,
            {
                "refund_id": str(row.id),
                "payment_id": str(row.payment_id),
                "hypay_transaction_id": row.original_hypay_id,
                "method": str(row.method),
                "amount": f"{row.amount.amount:.2f}",
                "currency": str(row.amount.currency),
                "status": str(row.status),
                "hypay_refund_id": row.hypay_refund_id,
                "credits_taken": row.credits_taken,
                "detail": row.message,
            },
        )

    def _current(self, refund_id: UUID) -> RefundRow:
        row = self.store.get(refund_id)
        if row is None:
            raise NotFound("no such refund")
        return row

    @staticmethod
    def _audit(row: RefundRow, outcome: Outcome, hypay_refund_id: str | None, reason: str, admin: str, key: str) -> Any:
        def write(tx: Transaction, before: dict[str, Any], after: dict[str, Any]) -> None:
            audit.record(
                tx,
                admin=admin,
                action=audit.AuditAction.REFUND,
                payment_id=row.payment_id,
                idempotency_key=key,
                request={
                    "refund_id": str(row.id),
                    "outcome": outcome,
                    "hypay_refund_id": hypay_refund_id,
                    "reason": reason,
                },
                before=before,
                after=after,
            )

        return write


def _still_asking() -> RequestInProgress:
    waiting = RequestInProgress("the refund may still be asking Hyp: settle it once its outcome is unknown")
    waiting.retry_after = SETTLE_SECONDS
    return waiting

"""Settling a Hyp transaction against its payment: the one code path that grants credits.

Callbacks (redirect, notify) and saved-card charges all end here. In ONE database transaction the
payment is locked, the decision is taken on what is locked (`decide`, pure), the payment is changed
as decided and the journal row (`hypay_transactions`) is written with the decision, so there is no
decision without its row and no paid transaction only in a log. Settling the same transaction again
(a redelivery, a retry after a lost answer) finds the journal row and changes nothing else.

| approved transaction on a payment that is | decision |
|---|---|
| pending / failed / expired, exact amount and currency | granted (a late payment records the status it had) |
| pending / failed / expired, another amount or currency | review (the payment goes to needs_review) |
| completed by this transaction | granted (already) |
| completed by another transaction (paid twice) | review (the payment stays completed) |
| needs_review | review |
| unknown | unmatched |
| any, while another payment holds this Hyp Id | duplicate |
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit

from payments.adapters.db import Database, QueryError, Transaction
from payments.adapters.journal import (
    Action,
    HypTransaction,
    Journal,
    JournalEntry,
    PaymentFacts,
    Source,
    Verdict,
)
from payments.domain import hypay as protocol
from payments.domain.money import Money
from payments.domain.payment import CREDITS_NOT_KNOWN, PaymentStatus
from payments.domain.refund import HELD_WHILE_A_REFUND_HAS_NO_ID, SENT_BACK_BY_ANOTHER
from payments.observability import logger, metrics
from payments.records import Record

UNIQUE_VIOLATION = "23505"


class Result(StrEnum):
    """What the caller (browser page, notify answer, API) is told."""

    COMPLETED = "completed"  # paid; credits granted (now or earlier)
    FAILED = "failed"  # Hyp did not charge
    REVIEW = "review"  # charged, but a human must look (the money is in the journal)
    DUPLICATE = "duplicate"  # the Hyp Id already belongs to another payment
    UNKNOWN_PAYMENT = "unknown_payment"  # Order is not one of our payments


class Decision(Record):
    action: Action
    verdict: Verdict
    result: Result
    detail: str | None = None
    metric: str | None = None  # counted with the delivery it was decided on (first or again, as it says)
    override: bool = False  # replaces a verified journal row (an approval after a decline of the same Id)
    contradiction: str | None = None  # what a verified redelivery said against the decided row (kept on it)


class Settlement(Record):
    result: Result
    verdict: Verdict
    payment_id: UUID | None
    user_id: UUID | None = None
    credits_granted: int = 0
    save_card: bool = False
    first_decision: bool = True  # False when the journal already held a verified decision


def _result_of(verdict: Verdict, facts: PaymentFacts | None) -> Result:
    if verdict == Verdict.DECLINED:
        if facts is not None and facts.status == PaymentStatus.COMPLETED:
            return Result.COMPLETED
        return Result.REVIEW if facts is not None and facts.status == PaymentStatus.NEEDS_REVIEW else Result.FAILED
    return {
        Verdict.GRANTED: Result.COMPLETED,
        Verdict.REVIEW: Result.REVIEW,
        Verdict.DUPLICATE: Result.DUPLICATE,
        Verdict.REFUNDED: Result.DUPLICATE,  # a refund's own Id arriving as a charge: nothing to settle
        Verdict.UNMATCHED: Result.UNKNOWN_PAYMENT,
    }.get(verdict, Result.REVIEW)


def resolve_amount(txn: HypTransaction, facts: PaymentFacts | None, *, currency_trusted: bool) -> HypTransaction:
    """When the currency was not verified (HMAC only: `Coin` is unsigned), it is the one the payment asked."""
    if currency_trusted or txn.amount is None or facts is None:
        return txn
    return txn._replace(amount=Money(txn.amount.minor, facts.amount.currency), currency_known=True)


def _contradiction(txn: HypTransaction, entry: JournalEntry) -> str | None:
    """What a verified delivery says against the journal's verified row for the same payment, or None when it
    agrees on the money: approved where the row says not (or the other way round), or approved for another amount
    or currency. Two refusals with different codes moved no money either way: not a contradiction."""
    if entry.decision == Verdict.REFUNDED or entry.ccode is None:
        return None  # a refund's own row (its code and amount are the refund's), or a row that cannot be compared
    approved_then, approved_now = entry.ccode == protocol.APPROVED, txn.ccode == protocol.APPROVED
    said = []
    if approved_then != approved_now:
        said.append(f"CCode {txn.ccode} (journaled {entry.ccode})")
    amount = txn.amount
    if (
        amount is not None
        and (approved_then or approved_now)
        and (
            (entry.amount is not None and amount.amount != entry.amount)
            or (entry.currency is not None and txn.currency_known and str(amount.currency) != entry.currency)
        )
    ):
        said.append(f"amount {amount} (journaled {entry.amount} {entry.currency})")
    if not said:
        return None
    return f"a verified {txn.source} delivery of Hyp transaction {txn.hypay_id} said " + ", ".join(said)


def _as_journaled(txn: HypTransaction, entry: JournalEntry | None) -> HypTransaction:
    """The transaction as the journal spells its number (a delivery may spell it with more or fewer leading zeros):
    the same transaction, its one row, decided and written so."""
    return txn if entry is None or entry.hypay_id in (None, txn.hypay_id) else txn._replace(hypay_id=entry.hypay_id)


def contradiction_kept(journal: Journal, txn: HypTransaction) -> str | None:
    """What a verified callback that is kept instead of settled (the database did not take it, or another delivery
    held it) says against the journal's verified row for its payment, as a settled redelivery would say it
    (`_contradiction`). The journal's row alone is read (the payment, which may be what the database could not take,
    is not): the caller locks the payment first. Kept on the row and counted, it reaches what reads a contradiction
    (the alarm, the refund's choice of method), as a settled one does."""
    entry = journal.entry(txn)
    if entry is None or not entry.verified or entry.payment_id != txn.payment_id:
        return None
    return _contradiction(_as_journaled(txn, entry), entry)


def decide(txn: HypTransaction, facts: PaymentFacts | None, entry: JournalEntry | None) -> Decision:
    """The decision on a verified transaction, from the locked payment and the journal's row. Pure."""
    if entry is not None and entry.verified:
        if entry.payment_id == txn.payment_id and entry.decision == Verdict.DECLINED and txn.ccode == protocol.APPROVED:
            # Hyp declined this Id, and now says it approved it: never silently either way.
            return Decision(
                Action.REVIEW,
                Verdict.REVIEW,
                Result.REVIEW,
                f"Hyp transaction {txn.hypay_id} approved after it was declined",
                "PaidNotPending",
                override=True,
            )
        if entry.payment_id == txn.payment_id:  # decided before: a redelivery changes nothing
            # ... but one that says something else is kept on the journal's row and counted (the alarm sends a
            # human: Hyp now reports another code or amount for money that already moved as first decided).
            contradiction = _contradiction(txn, entry)
            return Decision(
                Action.NONE,
                entry.decision,
                _result_of(entry.decision, facts),
                metric="ContradictingDelivery" if contradiction else None,
                contradiction=contradiction,
            )
        if (
            entry.source == Source.TOKEN_CHARGE
            and txn.source != Source.TOKEN_CHARGE
            and txn.ccode == protocol.APPROVED
            and facts is not None
            and facts.status in (PaymentStatus.PENDING, PaymentStatus.FAILED, PaymentStatus.EXPIRED)
        ):
            # Hyp's page approved this Id for this payment's Order, yet the journal holds it as another payment's
            # saved-card charge, which no page callback ever confirmed (an operator named it there, say): this
            # payment may have been paid. It goes to a human; the journal's row and the other payment stay as they
            # are. (An Id a page callback already settled for another payment stays a refused duplicate.)
            return Decision(
                Action.REVIEW,
                entry.decision,
                Result.REVIEW,
                f"Hyp transaction {txn.hypay_id} approved for this payment, journaled for payment {entry.payment_id}",
                "DuplicateTransaction",
            )
        return Decision(Action.NONE, entry.decision, Result.DUPLICATE, metric="DuplicateTransaction")
    if facts is None:
        return Decision(
            Action.NONE,
            Verdict.UNMATCHED,
            Result.UNKNOWN_PAYMENT,
            "Order is not one of our payments",
            "UnmatchedTransaction" if txn.ccode == protocol.APPROVED else None,
        )
    if facts.transaction_used_elsewhere:
        return Decision(
            Action.NONE,
            Verdict.DUPLICATE,
            Result.DUPLICATE,
            "this Hyp transaction already paid another payment",
            "DuplicateTransaction",
        )
    status = facts.status
    if txn.ccode != protocol.APPROVED:
        meaning = protocol.ccode_message(txn.ccode)
        detail = f"{meaning}: {txn.message}" if txn.message else meaning
        if status == PaymentStatus.PENDING:
            return Decision(Action.FAIL, Verdict.DECLINED, Result.FAILED, detail, "PaymentsFailed")
        return Decision(
            Action.NONE, Verdict.DECLINED, _result_of(Verdict.DECLINED, facts), f"{detail} (while {status})"
        )
    if status == PaymentStatus.COMPLETED and protocol.same_hyp_id(facts.hypay_transaction_id, txn.hypay_id):
        return Decision(Action.NONE, Verdict.GRANTED, Result.COMPLETED, "granted before the journal recorded it")
    if entry is not None and entry.closed_as is not None:
        # Its money went back through Hyp's portal: an operator closed the transaction, unverified, for a payment (one
        # it was named for as a lost saved-card charge). No credits for it; a human settles this payment.
        return Decision(
            Action.REVIEW,
            Verdict.REVIEW,
            Result.REVIEW,
            f"Hyp transaction {txn.hypay_id} approved for this payment, {SENT_BACK_BY_ANOTHER} in Hyp's portal for"
            f" payment {entry.payment_id} (closed as {entry.closed_as})",
            "DuplicateTransaction",
        )
    if facts.refunded_by_another is not None:
        # Hyp approved this transaction for this payment, and a refund of another payment sent its money back (an
        # operator named it there as that payment's lost saved-card charge): granting would give credits for money
        # that went back. A human settles both.
        return Decision(
            Action.REVIEW,
            Verdict.REVIEW,
            Result.REVIEW,
            f"Hyp transaction {txn.hypay_id} approved for this payment, {SENT_BACK_BY_ANOTHER}"
            f" {facts.refunded_by_another} of another payment (named there as that payment's charge)",
            "DuplicateTransaction",
        )
    unnamed = facts.largest_unnamed_refund
    if (
        unnamed is not None
        and (entry is None or not entry.verified)
        and (txn.amount is None or txn.amount.amount <= unnamed)
    ):
        # Money Hyp reports for this payment while one of its refunds, of as much or more, has no Id of its own yet
        # (being asked, its answer lost, or given without an Id): it may be that refund's own transaction. Granting
        # it would give the credits for money going back; a human compares (storing the refund's answer makes the
        # row the refund's). More than any such refund cannot be one: decided as any payment.
        return Decision(
            Action.NONE,
            Verdict.REVIEW,
            Result.REVIEW,
            f"Hyp transaction {txn.hypay_id} {HELD_WHILE_A_REFUND_HAS_NO_ID}:"
            " it may be that refund's transaction (compare with Hyp's refunds)",
            "PaidNotPending",
        )
    if status == PaymentStatus.COMPLETED:
        return Decision(
            Action.NONE,
            Verdict.REVIEW,
            Result.REVIEW,
            f"second charge: the payment was already completed by Hyp transaction {facts.hypay_transaction_id}",
            "SecondCharge",
        )
    if status == PaymentStatus.NEEDS_REVIEW:
        return Decision(Action.NONE, Verdict.REVIEW, Result.REVIEW, "paid while under review", "PaidNotPending")
    if status == PaymentStatus.LEGACY:
        reason = "paid while the payment holds a status from before this backend"
        return Decision(Action.NONE, Verdict.REVIEW, Result.REVIEW, reason, "PaidNotPending")
    if not txn.currency_known or txn.amount != facts.amount:
        return Decision(
            Action.REVIEW,
            Verdict.REVIEW,
            Result.REVIEW,
            f"amount mismatch: Hyp transaction {txn.hypay_id} paid"
            f" {txn.amount if txn.amount is not None else 'an amount that could not be read'}, expected {facts.amount}"
            f" (payment was {status})",
            "AmountMismatch",
        )
    if facts.granted_before:
        return Decision(
            Action.REVIEW,
            Verdict.REVIEW,
            Result.REVIEW,
            "a purchase was already granted for this payment",
            "PaidNotPending",
        )
    if not facts.credits_known:
        # A payment the web app wrote without its credits, whose pack the catalogue no longer sells at its price (or
        # that sells no credits): what the customer paid for is not known here, and today's catalogue is not it.
        return Decision(
            Action.REVIEW,
            Verdict.REVIEW,
            Result.REVIEW,
            f"{CREDITS_NOT_KNOWN}: it records none, and its pack no longer sells credits at its price",
            "PaidNotPending",
        )
    late = status != PaymentStatus.PENDING
    return Decision(
        Action.GRANT,
        Verdict.GRANTED,
        Result.COMPLETED,
        f"completed late: the payment was {status}" if late else None,
        "LatePaymentCompleted" if late else None,
    )


class _JournalChanged(QueryError):
    """Another transaction journaled this Hyp Id between our read and our write: decide again."""

    def __init__(self) -> None:
        super().__init__("the journal changed under the decision", "40001")


def settle(db: Database, txn: HypTransaction, *, currency_trusted: bool = True) -> Settlement:
    """Decide on a verified Hyp transaction and record it, atomically. Safe to call any number of times."""

    def work(tx: Transaction) -> tuple[Decision, Settlement]:
        journal = Journal(tx)
        facts, entry = journal.facts(txn)
        spelled = _as_journaled(txn, entry)
        resolved = resolve_amount(spelled, facts, currency_trusted=currency_trusted)
        decision = decide(resolved, facts, entry)
        if not currency_trusted and decision.contradiction is not None and entry is not None:
            decision = decision._replace(contradiction=_contradiction(spelled, entry))
            if decision.contradiction is None:
                decision = decision._replace(metric=None)
        applied = journal.apply(
            resolved,
            action=decision.action,
            verdict=decision.verdict,
            detail=decision.detail,
            previous_status=facts.status if facts else None,
            override=decision.override,
            contradiction=decision.contradiction,
            seen=entry.version if entry is not None else None,
            credits=facts.credits_sold if facts else None,  # read under the payment's lock, with the decision
        )
        first = entry is None or not entry.verified or decision.override
        if first and applied.journaled != decision.verdict:
            raise _JournalChanged()
        if entry is None and applied.existed:
            # Another delivery journaled this Id after our read (we waited on the payment's lock while it
            # committed): decide again on its row, so a disagreement between the two is kept, not lost.
            raise _JournalChanged()
        return decision, Settlement(
            decision.result,
            decision.verdict,
            txn.payment_id if decision.result != Result.DUPLICATE else None,
            applied.user_id or (facts.user_id if facts else None),
            applied.credits_granted,
            applied.save_card,
            first,
        )

    decision, settlement = db.atomic(work, retry_on=(UNIQUE_VIOLATION,), read_committed=True)
    _report(txn, decision, settlement)
    return settlement


class OperatorGrantRefused(QueryError):
    """The grant statement changed nothing (the payment was not in the status the operator saw): roll back."""

    def __init__(self) -> None:
        super().__init__("the payment changed under the operator's decision", "40001")


def settle_by_operator(
    tx: Transaction,
    txn: HypTransaction,
    *,
    previous_status: PaymentStatus,
    detail: str,
    credits: int | None,
    granted_before: bool = False,
) -> Settlement:
    """An operator completes a payment with a Hyp transaction they confirmed: the SAME grant statement a
    callback uses (payment completed, one purchase row, the balance raised, the journal row decided `granted`),
    inside the caller's transaction (which holds the payment's lock and writes the audit row with it).

    The caller has checked what a callback's `decide` checks (the payment's status, no purchase row yet, the
    Hyp Id held by no other payment); the unique indexes stop a second grant whatever happens. The journal
    row is overwritten (`override`): its earlier `review` decision is history in the audit trail.

    `credits`: what the payment sold, as the caller read it under the payment's lock (SOLD_CREDITS).
    `granted_before`: the payment's credits were granted already (a purchase row the web app wrote while it was
    pending): it is completed by the transaction without a second grant (`Action.BIND`), its credits standing on it.
    """
    applied = Journal(tx).apply(
        txn,
        action=Action.BIND if granted_before else Action.GRANT,
        verdict=Verdict.GRANTED,
        detail=detail,
        previous_status=previous_status,
        override=True,
        credits=credits,
    )
    if applied.journaled != Verdict.GRANTED or applied.user_id is None:
        raise OperatorGrantRefused()
    settlement = Settlement(
        Result.COMPLETED,
        Verdict.GRANTED,
        txn.payment_id,
        applied.user_id,
        applied.credits_granted,
        applied.save_card,
        True,
    )
    return settlement


def report_operator_grant(txn: HypTransaction, settlement: Settlement, *, admin: str) -> None:
    """Metrics and the money event of an operator's grant, once committed."""
    metrics.add_metric(name="PaymentsCompleted", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="CreditsGranted", unit=MetricUnit.Count, value=settlement.credits_granted)
    metrics.add_metric(name="OperatorResolved", unit=MetricUnit.Count, value=1)
    logger.info(
        "payment completed by an operator",
        extra={
            "payment_id": str(txn.payment_id),
            "hypay_transaction_id": txn.hypay_id,
            "credits": settlement.credits_granted,
            "admin": admin,
        },
    )


def _report(txn: HypTransaction, decision: Decision, settlement: Settlement) -> None:
    """Metrics and the money event, once the decision is committed."""
    keys = {
        "payment_id": str(txn.payment_id) if txn.payment_id else None,
        "hypay_transaction_id": txn.hypay_id,
        "source": str(txn.source),
        "ccode": txn.ccode,
        "amount": str(txn.amount) if txn.amount else None,
        "decision": str(decision.verdict),
        "result": str(decision.result),
    }
    if decision.metric:
        metrics.add_metric(name=decision.metric, unit=MetricUnit.Count, value=1)
    if not settlement.first_decision:
        if decision.contradiction:
            logger.warning(
                "hyp transaction delivered again with other facts", extra={**keys, "detail": decision.contradiction}
            )
        else:
            logger.info("hyp transaction seen again", extra=keys)
        return
    if decision.verdict == Verdict.GRANTED and decision.action == Action.GRANT:
        metrics.add_metric(name="PaymentsCompleted", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="CreditsGranted", unit=MetricUnit.Count, value=settlement.credits_granted)
        logger.info(
            "payment completed", extra={**keys, "credits": settlement.credits_granted, "detail": decision.detail}
        )
    elif decision.verdict == Verdict.DECLINED:
        logger.info("payment failed", extra={**keys, "detail": decision.detail})
    elif decision.verdict in (Verdict.REVIEW, Verdict.UNMATCHED, Verdict.DUPLICATE) and (
        txn.ccode == protocol.APPROVED
    ):
        logger.info("payment needs review", extra={**keys, "detail": decision.detail})
    else:
        logger.info("hyp transaction recorded", extra={**keys, "detail": decision.detail})


__all__ = [
    "Decision",
    "OperatorGrantRefused",
    "Result",
    "Settlement",
    "contradiction_kept",
    "decide",
    "report_operator_grant",
    "resolve_amount",
    "settle",
    "settle_by_operator",
]

"""Refunding a payment through Hyp (an admin action): idempotent on (payment, Idempotency-Key), never twice.

The saved-card charge's discipline, for money going back: under the payment's row lock what remains of the
Hyp transaction is computed (what it paid minus its refunds that moved or may have moved money) and a
refund larger than that is refused (422) before Hyp is called; otherwise the `refunds` row is inserted
`attempted` and committed. Only then is Hyp asked, once, never retried blindly. Its answer is stored in one
transaction: succeeded (the row, a journal row keyed on Hyp's refund Id, the credits taken back in
proportion and never below a zero balance, the audit row), refused (typed, in words: nothing moved), or
unknown (the answer was lost: `RefundOutcomeUnknown`, a human confirms at Hyp). A retry with the same key
finds the row and never asks Hyp again. If storing the answer fails, the Powertools record stays in
progress (`OutcomeUnconfirmed`), so no retry runs until the row shows what happened.

Which Hyp action: `CancelTrans` for the whole of an untouched transaction made today (Israel time, before
Hyp's 22:00 cut-off): no card fees, the charge disappears from the statement. `zikoyAPI` otherwise (partial,
or an older transaction). When Hyp refuses the cancellation (CCode 920: already transmitted), nothing moved,
so the same attempt goes on as a zikoyAPI refund: one money movement at most.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit

from payments.adapters import audit
from payments.adapters.db import Transaction
from payments.adapters.hypay import HypayClient, Reversal
from payments.adapters.refunds_store import (
    NOT_SENT,
    Began,
    Finished,
    NoSuchPayment,
    NotRefundable,
    Planned,
    RefundRow,
    RefundsStore,
    Target,
)
from payments.domain import hypay as protocol
from payments.domain.money import Money
from payments.domain.refund import CANCEL_UNTIL_HOUR, Method, RefundStatus, choose_method
from payments.errors import (
    DatabaseUnavailable,
    GatewayAuthenticationError,
    GatewayDeclined,
    GatewayError,
    GatewayNotAsked,
    GatewayRejected,
    IdempotencyKeyReused,
    InvalidRequest,
    OutcomeUnconfirmed,
    PaymentError,
)
from payments.idempotency import PostgresPersistenceLayer
from payments.observability import logger, metrics
from payments.problems import problem_body
from payments.services.answers import store_answer, time_for_the_fallback
from payments.services.hyp_ids import as_named
from payments.services.keyed import Answer, Keyed

CANNOT_CANCEL = 920  # CancelTrans: already transmitted, or no such transaction (Hyp's cancellation page)
NOT_PERMITTED = 901  # the terminal has no permission for this action (here: CancelTrans)
DUPLICATE_TRANSACTION = 425

# Hyp's refusals of a refund or cancellation, in words for the operator.
REFUSALS = {
    33: "the amount is more than what remains of the original transaction at Hyp",
    CANNOT_CANCEL: "the transaction can no longer be cancelled (already transmitted to the card company, or unknown)",
    4: "declined by the card issuer",
    15: "the card has expired",
    400: "Hyp found the request invalid",
    401: "Hyp found the request invalid",
    402: "Hyp does not know this transaction",
    997: "the card token is not valid",
    998: "cancelled at Hyp",
}

_UNKNOWN = (
    "Hyp's answer was lost: the refund may have happened. It is being confirmed at Hyp; do not retry with a new"
    " Idempotency-Key (that could refund twice)"
)
# Hyp answered, and storing its answer failed (the database): the same, said as it is.
_UNSTORED = (
    "Hyp answered, but its answer could not be stored: the refund may have happened. It is being confirmed at Hyp;"
    " do not retry with a new Idempotency-Key (that could refund twice)"
)

# On an attempt `_still_cancel` switched: why it went out as a refund.
_CONTRADICTED_SINCE = (
    "refunded, not cancelled: a verified delivery contradicted the transaction's money after the attempt was planned"
)


AuditWriter = Callable[[Transaction, dict[str, Any], dict[str, Any]], None]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class RefundsDeps:
    store: RefundsStore
    gateway: HypayClient
    clock: Callable[[], dt.datetime] = field(default=_utcnow)
    cancel_until_hour: int = CANCEL_UNTIL_HOUR  # Israel time; the same-day cancellation's cut-off


class _Refused(PaymentError):
    """Refused before Hyp was asked (422, 404, 409): answered, never stored, nothing written."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.body = _problem(status, title, detail, **extra)


_problem = problem_body


def refusal_words(ccode: int | None, gateway_message: str | None = None) -> str:
    """What Hyp's refusal means, for the operator."""
    if ccode is None:
        return gateway_message or "refused"
    return REFUSALS.get(ccode) or gateway_message or protocol.ccode_message(ccode)


class Refunds:
    """`Refunds(deps, persistence)(payment_id=..., amount=..., reason=..., admin=..., idempotency_key=...)`."""

    def __init__(
        self, deps: RefundsDeps, persistence: PostgresPersistenceLayer, *, expires_after_seconds: int = 7 * 86400
    ) -> None:
        self.deps = deps
        self._keyed = Keyed(
            self._refund,
            persistence=persistence,
            key="[payment_id, key]",
            validate="request",
            prefix="refund",
            expires_after_seconds=expires_after_seconds,
            what="refund request",
        )

    def __call__(
        self,
        *,
        payment_id: UUID,
        amount: Money | None,
        reason: str,
        admin: str,
        idempotency_key: str,
        hypay_id: str | None = None,
        original: Money | None = None,
        context: Any = None,
    ) -> Answer:
        """Refund `amount` (all that remains when None) of the payment's paying Hyp transaction, or of the
        approved transaction `hypay_id` of this payment (a second charge is refunded by its own Id).

        201 refunded, 202 outcome unknown (being confirmed), 502 Hyp refused (in words, final), 422 more than
        remains (Hyp not called), 404 no such payment, 409 nothing refundable. Raises (not stored, retry with
        the same key): `GatewayNotAsked` / `GatewayAuthenticationError` (nothing moved), `DatabaseUnavailable`,
        `RequestInProgress`, `IdempotencyKeyReused`, `OutcomeUnconfirmed` (202: being confirmed)."""
        if not idempotency_key or not idempotency_key.strip():
            raise InvalidRequest("an Idempotency-Key is required for a refund")
        reason = (reason or "").strip()
        if not 1 <= len(reason) <= 500:
            raise InvalidRequest("reason: 1 to 500 characters saying why the payment is refunded")
        if not admin:
            raise InvalidRequest("the admin's name is required")
        if amount is not None and amount.minor <= 0:
            raise InvalidRequest("amount: must be positive")
        if original is not None and original.minor <= 0:
            raise InvalidRequest("original_amount: must be positive")
        hypay_id = as_named(self.deps.store.db, "hypay_id", hypay_id)
        scope = {
            "payment_id": str(payment_id),
            "key": idempotency_key,
            "request": {
                "amount": f"{amount.amount:.2f}" if amount is not None else None,
                "currency": str(amount.currency) if amount is not None else None,
                "reason": reason,
                "hypay_id": hypay_id,
                **(
                    {"original": f"{original.amount:.2f}", "original_currency": str(original.currency)}
                    if original is not None
                    else {}
                ),
            },
        }
        try:
            return self._keyed(context, scope=scope, admin=admin)  # the admin beside the scope: another may retry
        except _Refused as refused:
            return Answer(refused.status, refused.body)

    # -- the work, run at most once per (payment, key) -------------------------------------------

    def _refund(self, scope: dict[str, Any], admin: str) -> dict[str, Any]:
        payment_id = UUID(scope["payment_id"])
        request = scope["request"]
        amount = Money.of(request["amount"], request["currency"]) if request["amount"] else None
        original = Money.of(request["original"], request["original_currency"]) if request.get("original") else None

        def plan(target: Target) -> Planned:
            return self._plan(target, amount, request["reason"], admin, original)

        try:
            began = self.deps.store.begin(
                payment_id=payment_id,
                hypay_id=request["hypay_id"],
                key=f"refund:{payment_id}:{scope['key']}",
                plan=plan,
                request=request,
            )
        except NoSuchPayment:
            raise _Refused(404, "Not Found", "no such payment") from None
        except NotRefundable as exc:
            raise _Refused(409, "Conflict", str(exc)) from None
        if not began.created:
            asked = began.row.request
            if asked is not None and asked != request:
                # The key's idempotency record (which compares requests) expired or was purged; its refund's row
                # did not: it answers only the request it was made for, never another (which would be told of a
                # refund that was not made for it).
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used for another refund request of this payment; use a new key"
                )
            return self._earlier_attempt(began, scope)
        return self._ask_hyp(began, scope)

    def _plan(
        self, target: Target, amount: Money | None, reason: str, admin: str, original: Money | None = None
    ) -> Planned:
        correcting = target.original_named and original is not None and target.reserved.minor == 0
        if target.original is None or correcting:
            # Hyp's answer gave this transaction's amount unreadably: the operator reads it from Hyp (and may correct
            # it while no refund of it moved or may have moved money). It then caps refunds and counts in the review
            # queue; refunds of it stay zikoyAPI (Hyp caps them) and credits count against the payment's price.
            if original is None:
                why = (
                    f"Hyp transaction {target.original_hypay_id} is a saved-card charge whose answer was lost"
                    if target.unjournaled
                    else f"Hyp's answer gave the amount of Hyp transaction {target.original_hypay_id} unreadably"
                )
                raise _Refused(
                    422,
                    "Unprocessable Content",
                    f"{why}: name original_amount (and currency), what Hyp's transactions show it paid",
                    hypay_id=target.original_hypay_id,
                )
            named = dataclasses.replace(
                target,
                original=original,
                original_named=True,
                reserved=Money(target.reserved.minor, original.currency),
                refunded=Money(target.refunded.minor, original.currency),
            )
            return dataclasses.replace(self._plan(named, amount, reason, admin), learned_original=original)
        if original is not None and original != target.original:
            raise _Refused(
                422,
                "Unprocessable Content",
                f"Hyp transaction {target.original_hypay_id} paid {target.original}, not {original}",
                hypay_id=target.original_hypay_id,
            )
        remaining = target.remaining
        assert remaining is not None  # noqa: S101 - known with the original
        facts = {
            "paid": f"{target.original.amount:.2f}",
            "refunded_or_pending": f"{target.reserved.amount:.2f}",
            "remaining": f"{max(remaining.minor, 0) / 100:.2f}",
            "currency": str(target.original.currency),
            "hypay_id": target.original_hypay_id,
        }
        if amount is not None and amount.currency != target.original.currency:
            raise _Refused(
                422,
                "Unprocessable Content",
                f"the transaction was paid in {target.original.currency}, not {amount.currency}",
                **facts,
            )
        if remaining.minor <= 0:
            raise _Refused(
                422, "Unprocessable Content", "nothing remains to refund: it was refunded (or is being)", **facts
            )
        wanted = amount or remaining
        if wanted.minor > remaining.minor:
            raise _Refused(
                422,
                "Unprocessable Content",
                f"a refund of {wanted} is more than what remains of Hyp transaction {target.original_hypay_id}"
                f" ({remaining} of {target.original})",
                **facts,
            )
        method = (
            Method.REFUND
            if target.original_named or target.contradicted
            else choose_method(  # a named amount, or one Hyp's own may differ from: Hyp must cap it
                amount=wanted,
                original=target.original,
                reserved=target.reserved,
                original_at=target.original_at,
                now=self.deps.clock(),
                cancel_until_hour=self.deps.cancel_until_hour,
            )
        )
        return Planned(wanted, method, reason, admin)

    def _earlier_attempt(self, began: Began, scope: dict[str, Any]) -> dict[str, Any]:
        """This key's refund exists: its stored outcome, never a second call to Hyp."""
        row = began.row
        match row.status:
            case RefundStatus.SUCCEEDED:
                return _succeeded_answer(row, None, began.target.refunded, began.target.remaining)
            case RefundStatus.REFUSED:
                return _refused_answer(row)
            case RefundStatus.UNKNOWN:
                return _unknown_answer(row)
            case _:
                # Attempted, and the invocation that asked Hyp is over (Powertools let this one in only after
                # its in-progress expiry): nobody knows whether Hyp refunded.
                interrupted = "interrupted after Hyp was asked: check Hyp's transactions"
                stored = self.deps.store.not_moved_or_unknown(
                    row.id,
                    status=RefundStatus.UNKNOWN,
                    ccode=None,
                    # Hyp's answer noted on the row (note_answer) stays: the one place its refund Id may be
                    message=f"{row.message}; {interrupted}" if row.message else interrupted,
                    audit=self._audit(row, scope),
                )
                self._outcome_unknown(row, "refund interrupted before its outcome was stored")
                return _unknown_answer(stored)

    def _ask_hyp(self, began: Began, scope: dict[str, Any]) -> dict[str, Any]:
        row = began.row
        store = self.deps.store
        try:
            reversal = self._reverse(row)
        except (GatewayNotAsked, GatewayAuthenticationError) as exc:
            # Nothing sent, or our terminal refused: nothing moved. Released, raised: 503, retry with the key.
            store.not_moved_or_unknown(
                row.id, status=RefundStatus.REFUSED, ccode=None, message=f"{NOT_SENT}{exc.message}", audit=None
            )
            raise
        except GatewayError as exc:
            refusal = exc
            return self._after_answer(row, lambda: self._not_refunded(row, refusal, scope), refusal=refusal)
        except Exception as exc:
            # A bug (or the database) while Hyp was being asked: the refund may exist. Never run again.
            self._outcome_unknown(row, f"failed while Hyp was asked ({type(exc).__name__})")
            raise OutcomeUnconfirmed(_UNKNOWN, payment_id=str(row.payment_id)) from exc
        return self._after_answer(row, lambda: self._succeeded(row, reversal, scope), reversal)

    def _reverse(self, row: RefundRow) -> Reversal:
        gateway = self.deps.gateway
        if row.method == Method.CANCEL and self._still_cancel(row):
            try:
                return gateway.cancel(row.original_hypay_id)
            except (GatewayRejected, GatewayAuthenticationError) as exc:
                # Not cancellable (transmitted: 920), or this terminal may not cancel (901, a permission Hyp grants
                # per terminal; otherwise every same-day full refund would wait for the next day): nothing moved.
                # The same attempt becomes a refund, recorded first. 902 (our credentials) is raised: not yet.
                if exc.ccode not in (CANNOT_CANCEL, NOT_PERMITTED):
                    raise
                # Hyp's refusal stored (again, when the database did not pass it this time).
                note = f"CancelTrans refused (CCode {exc.ccode}); refunded"
                switched = store_answer(lambda: self.deps.store.switch_to_refund(row.id, note))
                if switched is None:
                    raise RuntimeError("the refund row changed under the attempt") from None
                logger.info("cancel refused, refunding", extra={"refund_id": str(row.id), "ccode": exc.ccode})
        return gateway.refund(row.original_hypay_id, amount=row.amount)

    def _still_cancel(self, row: RefundRow) -> bool:
        """Asked again right before CancelTrans goes out: a verified delivery that contradicted the transaction's
        money after the attempt was planned switches it to a zikoyAPI refund, recorded first (CancelTrans would send
        back Hyp's whole charge, whatever the row says). Unanswered (the switch may even have committed), nothing is
        sent: not yet (`GatewayNotAsked`: the attempt is released, and a retry with its key plans it again)."""
        try:
            method = self.deps.store.method_to_send(row.id, _CONTRADICTED_SINCE)
        except PaymentError as exc:
            raise GatewayNotAsked(f"the attempt could not be checked before Hyp was asked ({exc.code})") from exc
        if method != Method.CANCEL:
            logger.warning(
                "cancellation switched to a refund: its transaction was contradicted since it was planned",
                extra={"refund_id": str(row.id), "payment_id": str(row.payment_id)},
            )
        return method == Method.CANCEL

    def _after_answer(
        self,
        row: RefundRow,
        store_it: Callable[[], dict[str, Any]],
        reversal: Reversal | None = None,
        *,
        refusal: GatewayError | None = None,
    ) -> dict[str, Any]:
        try:
            return store_answer(store_it)
        except Exception as exc:
            # Hyp answered and the answer could not be stored: the row stays attempted (the review queue and
            # the next retry after the in-progress expiry show it as unknown); this line names it, and Hyp's
            # refund Id when Hyp gave one (the one thing a human would otherwise search Hyp's portal for).
            metrics.add_metric(name="RefundOutcomeUnknown", unit=MetricUnit.Count, value=1)
            logger.error(
                "refund answered but not stored",
                extra={
                    "refund_id": str(row.id),
                    "payment_id": str(row.payment_id),
                    "hypay_refund_id": reversal.transaction_id if reversal else None,
                    "method": str(row.method),
                    "error": type(exc).__name__,
                },
            )
            self._note_answer(row, reversal, refusal, exc)
            raise OutcomeUnconfirmed(_UNSTORED, payment_id=str(row.payment_id)) from exc

    def _note_answer(
        self, row: RefundRow, reversal: Reversal | None, refusal: GatewayError | None, exc: Exception
    ) -> None:
        """Best effort: what Hyp answered, in words on the refund's row (not only in a log line), in one statement
        that takes no lock of the payment's or the balance's. Not while the database is unreachable, nor without
        time for another statement."""
        if isinstance(exc, DatabaseUnavailable) or not time_for_the_fallback():
            return
        error = exc.code if isinstance(exc, PaymentError) else type(exc).__name__
        if reversal is not None:
            said = f"Hyp refunded it (refund Id {reversal.transaction_id or 'none: a cancellation'})"
        elif refusal is not None and _refused(refusal):
            said = f"Hyp refused it (CCode {refusal.ccode})"
        else:
            said = "its outcome is unknown (Hyp's answer was lost or unclear): check Hyp's transactions"
        try:
            self.deps.store.note_answer(row.id, f"{said}; its answer could not be stored ({error}): settle it so")
        except PaymentError as exc2:
            logger.error("refund answer not noted", extra={"refund_id": str(row.id), "code": exc2.code})

    def _audit(
        self, row: RefundRow, scope: dict[str, Any]
    ) -> Callable[[Transaction, dict[str, Any], dict[str, Any]], None]:
        def write(tx: Transaction, before: dict[str, Any], after: dict[str, Any]) -> None:
            audit.record(
                tx,
                admin=row.admin,
                action=audit.AuditAction.REFUND,
                payment_id=row.payment_id,
                idempotency_key=scope["key"],
                request={**scope["request"], "refund_id": str(row.id), "method": str(row.method)},
                before=before,
                after=after,
            )

        return write

    def _succeeded(self, row: RefundRow, reversal: Reversal, scope: dict[str, Any]) -> dict[str, Any]:
        finished = self.deps.store.succeeded(
            row.id,
            hypay_refund_id=reversal.transaction_id,
            approval_code=reversal.approval_code,
            audit=self._audit(row, scope),
        )
        if finished.row.status == RefundStatus.REFUSED:  # another writer's outcome, stored first: answered as it is
            return _refused_answer(finished.row)
        metrics.add_metric(name="RefundsSucceeded", unit=MetricUnit.Count, value=1)
        if finished.credits_shortfall:
            metrics.add_metric(name="RefundCreditsShortfall", unit=MetricUnit.Count, value=finished.credits_shortfall)
        if finished.journal_conflict:
            # Hyp's refund transaction is another decision's in the journal (an operator named it for a payment): the
            # refund stands as Hyp answered, and a human compares the two (its row's message says what the journal
            # holds).
            metrics.add_metric(name="DuplicateTransaction", unit=MetricUnit.Count, value=1)
            logger.error(
                "hyp's refund transaction is journaled as another decision",
                extra={
                    "refund_id": str(row.id),
                    "payment_id": str(row.payment_id),
                    "hypay_refund_id": reversal.transaction_id,
                    "detail": finished.journal_conflict,
                },
            )
        logger.info(
            "payment refunded",
            extra={
                "refund_id": str(row.id),
                "payment_id": str(row.payment_id),
                "method": str(finished.row.method),
                "amount": str(row.amount),
                "hypay_transaction_id": row.original_hypay_id,
                "hypay_refund_id": reversal.transaction_id,
                "credits_taken": finished.row.credits_taken,
                "credits_shortfall": finished.credits_shortfall,
            },
        )
        return _succeeded_answer(finished.row, finished, finished.refunded, finished.remaining)

    def _not_refunded(self, row: RefundRow, exc: GatewayError, scope: dict[str, Any]) -> dict[str, Any]:
        store = self.deps.store
        if _refused(exc):
            words = refusal_words(exc.ccode, exc.gateway_message)
            stored = store.not_moved_or_unknown(
                row.id,
                status=RefundStatus.REFUSED,
                ccode=exc.ccode,
                message=words,
                audit=self._audit(row, scope),
            )
            metrics.add_metric(name="RefundFailed", unit=MetricUnit.Count, value=1)
            logger.info("refund refused", extra={"refund_id": str(row.id), "ccode": exc.ccode})
            return _refused_answer(stored)
        # Timed out, an error page, connection reset, Hyp's 999, "duplicate": it may have happened.
        reason = f"{exc.message} (CCode {exc.ccode})" if exc.ccode is not None else exc.message
        stored = store.not_moved_or_unknown(
            row.id, status=RefundStatus.UNKNOWN, ccode=exc.ccode, message=reason, audit=self._audit(row, scope)
        )
        self._outcome_unknown(row, reason)
        return _unknown_answer(stored)

    @staticmethod
    def _outcome_unknown(row: RefundRow, reason: str) -> None:
        metrics.add_metric(name="RefundOutcomeUnknown", unit=MetricUnit.Count, value=1)
        logger.error(
            "refund outcome unknown",
            extra={
                "refund_id": str(row.id),
                "payment_id": str(row.payment_id),
                "hypay_transaction_id": row.original_hypay_id,
                "reason": reason,
            },
        )


def _refused(exc: GatewayError | None) -> bool:
    """Hyp said no (nothing moved): declined or rejected, but not "duplicate" (it may have happened)."""
    return isinstance(exc, (GatewayDeclined, GatewayRejected)) and exc.ccode != DUPLICATE_TRANSACTION


def _view(row: RefundRow) -> dict[str, Any]:
    return {
        "refund_id": str(row.id),
        "payment_id": str(row.payment_id),
        "method": str(row.method),
        "amount": f"{row.amount.amount:.2f}",
        "currency": str(row.amount.currency),
        "hypay_transaction_id": row.original_hypay_id,
    }


def _succeeded_answer(
    row: RefundRow, finished: Finished | None, refunded: Money, remaining: Money | None
) -> dict[str, Any]:
    shortfall = finished.credits_shortfall if finished else _shortfall_of(row)
    body = {
        **_view(row),
        "status": str(RefundStatus.SUCCEEDED),
        "hypay_refund_id": row.hypay_refund_id,
        "credits_taken": row.credits_taken,
        "credits_shortfall": shortfall,
        "refunded": f"{refunded.amount:.2f}",
        "remaining": f"{max(remaining.minor, 0) / 100:.2f}" if remaining is not None else None,  # None: unknown
    }
    if shortfall:
        body["detail"] = row.message
    return {"status": 201, "body": body}


def _shortfall_of(row: RefundRow) -> int:
    """The shortfall kept in the row's message ("N of M credits not taken back ...")."""
    head = (row.message or "").split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def _refused_answer(row: RefundRow) -> dict[str, Any]:
    words = row.message or refusal_words(row.ccode)
    return {
        "status": 502,
        "body": _problem(
            502,
            "Bad Gateway",
            f"Hyp refused the refund: {words}",
            **_view(row),
            refund_status=str(RefundStatus.REFUSED),
            ccode=row.ccode,
            gateway_message=words,
        ),
    }


def _unknown_answer(row: RefundRow) -> dict[str, Any]:
    return {"status": 202, "body": {**_view(row), "status": str(RefundStatus.UNKNOWN), "detail": _UNKNOWN}}


__all__ = ["REFUSALS", "Answer", "Refunds", "RefundsDeps", "refusal_words"]

"""The review queue (everything that needs a human) and resolving a payment by hand.

Queue: payments in `needs_review` (with their journal rows) and journal rows decided `review`, `unmatched`
or `unverified` (not verified since), oldest first, each with a stable `reason` (`classify`, pure), keyset
paginated with an opaque cursor, filterable by reason.

Resolving (`ResolvePayment`): `complete` grants the credits through the same statement a callback uses
(`settle.settle_by_operator`), exactly once (the payment's row lock, then the unique indexes); `fail` closes
the payment without credits. Only a payment in `needs_review`, or `pending` with a saved-card charge whose
outcome never came back (and is past the settle window), can be resolved; anything else is a `Conflict`
saying why. Every resolve needs an Idempotency-Key (Powertools idempotency on the Postgres store) and writes
one audit row in the same transaction as the change.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from payments.adapters import audit
from payments.adapters.db import Database, Transaction
from payments.adapters.journal import HypTransaction, Source
from payments.adapters.review_store import (
    JournalRow,
    LockedPayment,
    QueueRow,
    ResolveStatements,
    ReviewStore,
    SentBack,
)
from payments.domain import hypay as protocol
from payments.domain.cards import CARD_NUMBER, CARD_NUMBER_PATTERN
from payments.domain.ids import CANONICAL_UUID
from payments.domain.payment import CREDITS_NOT_KNOWN, PaymentStatus
from payments.domain.refund import SENT_BACK_BY_ANOTHER, held_while_a_refund_has_no_id
from payments.errors import (
    Conflict,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
)
from payments.observability import logger, metrics
from payments.services.hyp_ids import as_named
from payments.services.settle import UNIQUE_VIOLATION, Settlement, report_operator_grant, settle_by_operator

if TYPE_CHECKING:
    from payments.idempotency import PostgresPersistenceLayer
    from payments.services.keyed import Answer

# -- the queue -------------------------------------------------------------------------------------


class Reason(StrEnum):
    """Why an item needs a human: a stable category (the free text is in `detail` / `review_reason`)."""

    AMOUNT_MISMATCH = "amount_mismatch"  # Hyp charged another amount or currency than the payment asked
    SECOND_CHARGE = "second_charge"  # a completed payment paid again: refund the second transaction
    CHARGE_OUTCOME_UNKNOWN = "charge_outcome_unknown"  # a saved-card charge whose answer never came back
    PAID_UNDER_REVIEW = "paid_under_review"  # paid while under review, approved after a decline, granted before
    UNMATCHED = "unmatched"  # charged for an Order that is not ours
    UNVERIFIED = "unverified"  # a callback we could not verify yet (our side): it waits for verification
    LEGACY = "legacy"  # paid while the payment holds a status from before this backend
    REFUND_OUTCOME_UNKNOWN = "refund_outcome_unknown"  # a refund whose answer was lost: it may have moved money
    # Hyp's page approved a transaction for this payment that the journal holds as another payment's saved-card
    # charge (an operator named it there by mistake)
    TRANSACTION_OF_ANOTHER_PAYMENT = "transaction_of_another_payment"
    # Hyp's page approved a transaction for this payment whose money a refund of another payment sent back (an
    # operator named it as that payment's lost saved-card charge)
    REFUNDED_THROUGH_ANOTHER_PAYMENT = "refunded_through_another_payment"
    # Paid, but what it sold is not known: the web app wrote it without its credits, and its pack no longer sells
    # credits at its price
    CREDITS_NOT_KNOWN = "credits_not_known"
    OTHER = "other"


_TEXT_REASONS: tuple[tuple[str, Reason], ...] = (
    ("second charge", Reason.SECOND_CHARGE),
    ("amount mismatch", Reason.AMOUNT_MISMATCH),
    ("status from before this backend", Reason.LEGACY),
    ("saved-card charge", Reason.CHARGE_OUTCOME_UNKNOWN),
    ("charge outcome", Reason.CHARGE_OUTCOME_UNKNOWN),
    ("while under review", Reason.PAID_UNDER_REVIEW),
    ("approved after it was declined", Reason.PAID_UNDER_REVIEW),
    ("already granted", Reason.PAID_UNDER_REVIEW),
    ("journaled for payment", Reason.TRANSACTION_OF_ANOTHER_PAYMENT),  # settle's detail of that decision
    (SENT_BACK_BY_ANOTHER, Reason.REFUNDED_THROUGH_ANOTHER_PAYMENT),
    (CREDITS_NOT_KNOWN, Reason.CREDITS_NOT_KNOWN),
)


def classify(
    *, kind: str, decision: str | None, detail: str | None, review_reason: str | None, charge_attempted: bool
) -> Reason:
    """The reason category of a queue item, from what settling and the saved-card flow wrote. Pure."""
    if kind == "refund":
        return Reason.REFUND_OUTCOME_UNKNOWN
    if kind == "journal":
        if decision == "unverified":
            return Reason.UNVERIFIED
        if decision == "unmatched":
            return Reason.UNMATCHED
        text = (detail or "").lower()
    else:
        text = (review_reason or "").lower()
    for needle, reason in _TEXT_REASONS:
        if needle in text:
            return reason
    if kind == "payment" and charge_attempted:
        return Reason.CHARGE_OUTCOME_UNKNOWN
    return Reason.OTHER


# Whole strings of ASCII digits only (fullmatch): `\d` and `$` would let other digits and a new line through
# to the database, which would fail on them instead of this API refusing them.
_SINCE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_KEY = re.compile(rf"p:{_UUID}|r:{_UUID}|j:[0-9]{{1,20}}")
DEFAULT_PAGE = 50


def encode_cursor(since: str, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([since, key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (since, key) an opaque `after` cursor stands for; InvalidRequest when it is not one of ours."""
    if len(cursor) > 200:  # ours are about 90 characters
        raise InvalidRequest("after: not a cursor this API returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        since, key = json.loads(raw)
        if not (isinstance(since, str) and isinstance(key, str) and _SINCE.fullmatch(since) and _KEY.fullmatch(key)):
            raise ValueError("not ours")
        dt.datetime.strptime(since, "%Y-%m-%dT%H:%M:%S.%fZ")  # a real instant, not only its shape
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise InvalidRequest("after: not a cursor this API returned") from None
    return since, key


_PLAIN = r"[^\u0000-\u0008\u000b-\u001f\u007f]"
_SAID = r"[^\u0000-\u0020\u007f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# A card number (domain.cards): a UUID written 8-4-4-4-12 is no card number (the document's pattern, which cannot say
# that, refuses the rare UUID whose digit groups read as a card's: stricter, never looser, than the code). An
# operator's reason is kept for good (the audit trail, which nobody may change; the refund's and the journal's rows): a
# card number pasted into it would be stored in clear, so it is refused, and the operator writes the reason again
# without it (a Hyp Id or the payment's id names what is meant).
_CARD_LENGTH_NUMBER = CARD_NUMBER_PATTERN
_CARD_LENGTH = CARD_NUMBER
# What `operator_reason` accepts, for the OpenAPI document: plain text with something besides white space, and nothing
# that reads as a card number.
OPERATOR_REASON_SCHEMA: JsonDict = {
    "pattern": f"^{_PLAIN}*{_SAID}{_PLAIN}*$",
    "not": {"type": "string", "pattern": _CARD_LENGTH_NUMBER},
}


def operator_reason(value: str) -> str:
    """An operator's `reason`: said, plain text (no control characters but new lines and tabs), and nothing that reads
    as a card number (never repeated in the error)."""
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in value) or "\x7f" in value:
        raise ValueError("reason must be plain text (no control characters)")
    if not value.strip():
        raise ValueError("reason must say why")
    if _CARD_LENGTH.search(CANONICAL_UUID.sub("#", value)):  # a payment's id is no card number, however its digits fall
        raise ValueError(
            "reason holds what reads as a card number (13 to 19 digits, in a row or in a card's groups): write no"
            " card number; a Hyp Id or the payment's id names what is meant"
        )
    return value.strip()


@dataclass(frozen=True)
class QueueQuery:
    reason: Reason | None = None
    limit: int = DEFAULT_PAGE
    after: tuple[str, str] | None = None

    @classmethod
    def parse(cls, *, reason: str | None, limit: str | None, after: str | None, page_max: int) -> QueueQuery:
        """From the query string; InvalidRequest naming the parameter that is wrong."""
        chosen = None
        if reason is not None:  # `reason=` too: no reason is one of them
            try:
                chosen = Reason(reason)
            except ValueError:
                raise InvalidRequest(f"reason: one of {', '.join(r.value for r in Reason)}") from None
        size = DEFAULT_PAGE if page_max >= DEFAULT_PAGE else page_max
        if limit is not None:
            # Its length first: int() refuses numbers past 4,300 digits with a ValueError (a 500).
            if not (
                len(limit) <= len(str(page_max)) and limit.isascii() and limit.isdigit() and 1 <= int(limit) <= page_max
            ):
                raise InvalidRequest(f"limit: a whole number from 1 to {page_max}")
            size = int(limit)
        return cls(chosen, size, decode_cursor(after) if after else None)


def _tried(row: QueueRow, journal: list[JournalRow]) -> list[str]:
    """What the system already did about it, in words."""
    done = []
    if row.charge_attempted_at is not None:
        answered = any(entry.source == "token_charge" for entry in journal)
        done.append(
            f"saved-card charge asked of Hyp at {row.charge_attempted_at.isoformat()}; "
            + ("Hyp's answer is journaled below" if answered else "its outcome never came back")
        )
    if row.hypay_ccode is not None and row.kind == "payment":
        done.append(f"Hyp answered CCode {row.hypay_ccode}" + (f": {row.hypay_message}" if row.hypay_message else ""))
    for entry in journal:
        done.append(
            f"Hyp transaction {entry.hypay_id} ({entry.source}) decided {entry.decision}: {entry.detail or '-'}"
        )
    if row.kind == "journal" and row.deliveries:
        done.append(
            f"delivered {row.deliveries} time(s), last at {row.last_seen.isoformat() if row.last_seen else '-'}"
        )
    if row.review_reason and row.kind == "payment":
        done.append(f"payment flagged for review: {row.review_reason}")
    return done


def _journal_view(entry: JournalRow) -> dict[str, Any]:
    return {
        "hypay_id": entry.hypay_id,
        "decision": entry.decision,
        "detail": entry.detail,
        "ccode": entry.ccode,
        "amount": f"{entry.amount.amount:.2f}" if entry.amount else None,
        "currency": str(entry.amount.currency) if entry.amount and entry.currency_known else None,
        "source": entry.source,
        "verified": entry.verified,
        "first_seen": entry.first_seen.isoformat() if entry.first_seen else None,
        "invoice_number": entry.invoice_number,
    }


_NEXT_STEP = {
    Reason.AMOUNT_MISMATCH: "refund, or resolve: complete (grant the credits) / fail (no credits; refund the money)",
    Reason.SECOND_CHARGE: "refund this second transaction; the payment keeps its credits",
    Reason.CHARGE_OUTCOME_UNKNOWN: "look up Order <payment_id> in Hyp: charged -> resolve complete with hypay_id, or"
    " refund it (hypay_id and original_amount) and resolve fail; not charged -> resolve fail",
    Reason.PAID_UNDER_REVIEW: "resolve complete (grant) or fail and refund",
    Reason.UNMATCHED: "find the customer in Hyp's portal (order_ref) and refund there, then close it:"
    " POST /admin/transactions/{hypay_id}/close (refunded_in_hyp)",
    Reason.UNVERIFIED: "fix the Hyp credentials or configuration; its next delivery is verified, or POST its raw"
    " callback to /hypay/notify: genuine -> processed, forged -> marked so (docs/operations.md)",
    Reason.LEGACY: "decide in the web app (a status from before this backend), then refund or credit by hand",
    Reason.REFUND_OUTCOME_UNKNOWN: "look up the refund of the Hyp transaction in Hyp's portal and settle it as found:"
    " POST /admin/refunds/{refund_id}/outcome (a retry with the same Idempotency-Key never refunds twice)",
    Reason.TRANSACTION_OF_ANOTHER_PAYMENT: "refund the transaction through the payment the detail names"
    " (POST /admin/payments/{that payment}/refund with the hypay_id: its credits are taken back), then resolve this"
    " one fail; settle that payment's own lost charge as its runbook says (docs/operations.md, DuplicateTransaction)",
    Reason.REFUNDED_THROUGH_ANOTHER_PAYMENT: "compare what the refunds naming its transaction did (Hyp's refunds):"
    " all of it went back -> resolve this one fail; nothing -> resolve it complete with that hypay_id; part -> refund"
    " the rest through this payment, then resolve it fail (docs/operations.md, DuplicateTransaction)",
    Reason.CREDITS_NOT_KNOWN: "find what the customer bought in the web app: once payments.credits holds it, resolve"
    " complete; else refund the transaction (no credits were granted) and resolve fail",
    Reason.OTHER: "read the detail",
}


def _sent_back_step(journal: list[JournalRow], sent_back: dict[str, SentBack]) -> str | None:
    """A payment whose transaction another payment's refund (or a close) named: what to do as that money stands now
    (a refund found not refunded since, or only part of it refunded, changes it). None when it cannot be told."""
    sent = [e for e in journal if SENT_BACK_BY_ANOTHER in (e.detail or "")]
    facts = sent_back.get(sent[-1].hypay_id) if sent else None
    if facts is None:
        return None
    txn, paid = sent[-1].hypay_id, sent[-1].amount
    tail = "; the other payment's lost charge still has its own transaction to find"
    if facts.unsettled:
        return (
            f"a refund naming {txn} is not settled yet (refund {', '.join(facts.unsettled)}): settle it as Hyp's"
            " refunds show it (POST /admin/refunds/{refund_id}/outcome), then this payment"
        )
    if facts.closed_as is not None:
        return f"{txn} went back through Hyp's portal (closed as {facts.closed_as}): resolve this one fail{tail}"
    if facts.succeeded <= 0:
        return (
            f"nothing of {txn} went back (the refunds naming it were refused, or found not refunded): resolve this one"
            f" complete with hypay_id {txn}"
        )
    if paid is not None and facts.succeeded < paid.amount:
        return (
            f"{facts.succeeded} of {paid} went back through another payment's refund: refund the rest"
            f" ({paid.amount - facts.succeeded}) through this payment (POST /admin/payments/{{id}}/refund with hypay_id"
            f" {txn} and that amount), then resolve it fail{tail}"
        )
    return f"{txn} went back in full through another payment's refund: resolve this one fail (nothing to close){tail}"


def _next_step(
    reason: Reason, row: QueueRow, journal: list[JournalRow], sent_back: dict[str, SentBack] | None = None
) -> str:
    """What to do, for this item as it stands: a transaction of a payment that resolving cannot change any more
    (completed, or closed) is refunded, not resolved; a transaction held while a refund of its payment had no Id of its
    own yet is compared with Hyp's refunds first; a payment whose transaction another payment's refund named, as
    that money stands."""
    if reason == Reason.REFUNDED_THROUGH_ANOTHER_PAYMENT:
        step = _sent_back_step(journal, sent_back or {})
        if step is not None:
            return step
    if row.kind != "payment" and held_while_a_refund_has_no_id(row.decision, row.detail):
        return (
            "compare with Hyp's refunds of this payment: the refund's own transaction -> settle that refund"
            " (POST /admin/refunds/{refund_id}/outcome); a payment -> resolve complete with hypay_id if the payment is"
            " closed, else refund it once that refund is confirmed"
        )
    closed = row.status in (PaymentStatus.COMPLETED, PaymentStatus.FAILED, PaymentStatus.EXPIRED)
    if row.kind != "payment" and closed and reason in (Reason.AMOUNT_MISMATCH, Reason.PAID_UNDER_REVIEW):
        return f"refund this transaction (the payment is {row.status}: nothing to resolve)"
    return _NEXT_STEP[reason]


def queue_item(
    row: QueueRow,
    journal: list[JournalRow],
    unverified: dict[str, Any] | None,
    sent_back: dict[str, SentBack] | None = None,
) -> dict[str, Any]:
    """One queue item as the API answers it."""
    reason = classify(
        kind=row.kind,
        decision=row.decision,
        detail=row.detail,
        review_reason=row.review_reason,
        charge_attempted=row.charge_attempted_at is not None,
    )
    payment = (
        {
            "id": str(row.payment_id),
            "status": row.status,
            "amount": row.payment_amount,
            "currency": row.payment_currency,
            "credits": row.credits,
            "user_id": str(row.user_id) if row.user_id else None,
            "review_reason": row.review_reason,
            "charge_attempted_at": row.charge_attempted_at.isoformat() if row.charge_attempted_at else None,
            "paid_by_hypay_id": row.paid_by,
        }
        if row.status is not None
        else None
    )
    item: dict[str, Any] = {
        "id": row.key,
        "kind": {"payment": "payment", "refund": "refund"}.get(row.kind, "transaction"),
        "reason": str(reason),
        "since": row.since,
        "age_seconds": row.age_seconds,
        "amount": row.amount,
        "currency": row.currency,
        "user_id": str(row.user_id) if row.user_id else None,
        "payment": payment,
        "hypay_ids": [e.hypay_id for e in journal] if row.kind == "payment" else [row.hypay_id],
        "tried": _tried(row, journal),
        "next_step": _next_step(reason, row, journal, sent_back),
    }
    if row.kind == "payment":
        item["hypay_transactions"] = [_journal_view(e) for e in journal]
    else:
        item["transaction"] = {
            "hypay_id": row.hypay_id,
            "decision": row.decision,
            "detail": row.detail,
            "ccode": row.ccode,
            "amount": row.amount,
            "currency": row.currency,
            "source": row.source,
            "order_ref": row.order_ref,
            "deliveries": row.deliveries,
            "last_seen": row.last_seen.isoformat() if row.last_seen else None,
        }
        if unverified is not None:
            item["unverified_callbacks"] = unverified
            if unverified["count"] and unverified.get("found_forged") == unverified["count"]:
                item["next_step"] = (
                    _FOUND_FORGED_OPEN_STEP
                    if row.status in (PaymentStatus.COMPLETED, PaymentStatus.NEEDS_REVIEW)
                    else _FOUND_FORGED_STEP
                )
    return item


_FOUND_FORGED_STEP = (
    "every callback kept for this Id was found forged by a later check (one check is no proof): if Hyp's portal shows"
    " no such transaction, resolve its payment fail (it then leaves this queue); if it does, POST the raw callback"
    " to /hypay/notify once verification works"
)


_FOUND_FORGED_OPEN_STEP = (
    "every callback kept for this Id was found forged by a later check (one check is no proof), and its payment is"
    " completed or under review: if Hyp's portal shows the transaction, refund it or POST the raw callback to"
    " /hypay/notify; if not, nothing to do yet (no action dismisses an Id; docs/operations.md)"
)


def review_queue(store: ReviewStore, query: QueueQuery) -> dict[str, Any]:
    """One page of the queue: `{"items": [...], "next": <cursor or null>}`. Reasons are derived here, so a
    filtered page reads on in batches until it has `limit` items or the queue ends."""
    wanted = query.limit + 1  # one more than asked: whether there is a next page
    found: list[QueueRow] = []
    after = query.after
    batch = max(100, 2 * wanted)
    while len(found) < wanted:
        rows = store.page(after=after, limit=batch)
        for row in rows:
            charge = row.charge_attempted_at is not None
            kind = classify(
                kind=row.kind,
                decision=row.decision,
                detail=row.detail,
                review_reason=row.review_reason,
                charge_attempted=charge,
            )
            if query.reason is None or kind == query.reason:
                found.append(row)
                if len(found) == wanted:
                    break
        if len(rows) < batch:
            break
        after = (rows[-1].since, rows[-1].key)
    page, more = found[: query.limit], len(found) > query.limit
    journals = store.journal_of([r.payment_id for r in page if r.kind == "payment" and r.payment_id])
    unverified = store.unverified_of([r.hypay_id for r in page if r.decision == "unverified" and r.hypay_id])
    named_elsewhere = [
        e.hypay_id
        for r in page
        if r.kind == "payment" and r.payment_id and SENT_BACK_BY_ANOTHER in (r.review_reason or "")
        for e in journals.get(r.payment_id, [])
    ]
    sent_back = store.sent_back_of(named_elsewhere)
    items = []
    for row in page:
        summary = unverified.get(row.hypay_id or "")
        items.append(
            queue_item(
                row,
                journals.get(row.payment_id, []) if row.kind == "payment" and row.payment_id else [],
                {
                    "count": summary.callbacks,
                    "deliveries": summary.deliveries,
                    "reasons": summary.reasons,
                    "sources": summary.sources,
                    "found_forged": summary.found_forged,
                    "payment_ids": list(summary.payment_ids),
                }
                if summary
                else None,
                sent_back,
            )
        )
    return {"items": items, "next": encode_cursor(page[-1].since, page[-1].key) if more and page else None}


# -- resolving -------------------------------------------------------------------------------------


class OperatorBody(BaseModel):
    """What every admin action's body has: the operator's `reason`, kept in the audit trail (`operator_reason`)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    reason: str = Field(
        min_length=1,
        max_length=500,
        description="Why: kept in the audit trail (plain text, no card number).",
        json_schema_extra=OPERATOR_REASON_SCHEMA,
    )

    @field_validator("reason")
    @classmethod
    def _said_plainly(cls, value: str) -> str:
        return operator_reason(value)


class ResolveRequest(OperatorBody):
    """`POST /admin/payments/{id}/resolve` body."""

    action: Literal["complete", "fail"]
    hypay_id: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,20}$",
        json_schema_extra={"not": {"type": "string", "pattern": "^0+$"}},  # an all-zero Id names nothing
        description="complete: the Hyp transaction that paid, when the journal knows none (or several).",
    )

    @field_validator("hypay_id")
    @classmethod
    def _a_hyp_id(cls, value: str | None) -> str | None:
        if value is not None and protocol.hyp_id(value) is None:
            raise ValueError(protocol.HYP_ID_PROBLEM)
        return value


@dataclass(frozen=True)
class Plan:
    action: Literal["complete", "fail"]
    txn: HypTransaction | None = None  # complete: the transaction that paid


def _not_resolvable(payment: LockedPayment, journal: list[JournalRow]) -> str | None:
    """Why this payment cannot be resolved by hand now (None: it can)."""
    pid = payment.id
    match payment.status:
        case PaymentStatus.NEEDS_REVIEW:
            return None
        case PaymentStatus.PENDING if payment.charge_attempted and payment.charge_settled:
            return None
        case PaymentStatus.PENDING if _held_by_kept(payment, journal):
            # Held pending (the cleanup never expires a payment with a callback kept unverified) by callbacks nobody
            # could verify since, found forged by a later check or not (one check of a public text is no proof): a
            # human who finds no such transaction in Hyp's portal fails it (its Ids stay in the queue until all are
            # found forged; a genuine one arriving later still completes the payment); nothing else closes it.
            return None
        case PaymentStatus.PENDING if payment.charge_attempted:
            return (
                f"payment {pid} is pending with a saved-card charge started at "
                f"{payment.charge_attempted_at.isoformat() if payment.charge_attempted_at else '?'} that may still be "
                "running; retry in a few minutes"
            )
        case PaymentStatus.PENDING:
            return f"payment {pid} is pending: waiting for Hyp (its page may still be open); the cleanup expires it"
        case PaymentStatus.COMPLETED:
            return (
                f"payment {pid} is completed (credits granted for Hyp transaction {payment.paid_by}): nothing to"
                " resolve; a second charge on it is refunded, not completed"
            )
        case PaymentStatus.FAILED if (
            payment.charge_attempted and not _decided(journal) and payment.declined_code is None
        ):
            # Failed by an operator after a saved-card charge whose answer was never known (Hyp sends no callback
            # for those): if Hyp did charge it after all, naming the transaction completes it (then it can be
            # refunded); nothing else can. Not one Hyp's own answer closed (declined, refused): nothing was charged.
            return None
        case PaymentStatus.FAILED if (
            payment.declined_code is not None and not _decided(journal) and not payment.kept_found_forged
        ):
            return (
                f"payment {pid} is failed: Hyp's answer to its charge was CCode {payment.declined_code} (not charged);"
                " nothing to resolve"
            )
        case PaymentStatus.FAILED | PaymentStatus.EXPIRED if _held(payment, journal):
            # Closed, then Hyp reported money for it that settling held for a human rather than completing it by
            # itself (approved while a refund of the payment had no Id of its own yet: it may have been that refund).
            # A human who finds it a genuine payment completes the payment with it; nothing else could.
            return None
        case PaymentStatus.FAILED | PaymentStatus.EXPIRED if payment.kept_found_forged:
            # Closed, and callbacks kept for it were all found forged by a later check: an operator who finds no such
            # transaction in Hyp's portal confirms it (resolve fail, audited; an expired one becomes failed), and the
            # queue lets their Id go.
            return None
        case PaymentStatus.FAILED:
            return (
                f"payment {pid} is failed: closed without credits (a genuine late payment completes it by itself;"
                " money taken for it is refunded)"
            )
        case PaymentStatus.EXPIRED if not journal:
            return (
                f"payment {pid} is expired and the journal holds no Hyp transaction for it: nothing was paid as far"
                " as the backend knows"
            )
        case PaymentStatus.EXPIRED:
            return (
                f"payment {pid} is expired; its Hyp transactions ({', '.join(e.hypay_id for e in journal)}) are"
                " not under review"
            )
        case _:
            return (
                f"payment {pid} holds a status from before this backend ({payment.stored_status!r}): resolve it in"
                " the web app"
            )


def _decided(journal: list[JournalRow]) -> list[JournalRow]:
    """The journal's rows that say what Hyp did (all but callbacks kept unverified and not verified since)."""
    return [e for e in journal if e.verified or e.decision != "unverified"]


def _held_by_kept(payment: LockedPayment, journal: list[JournalRow]) -> bool:
    """A page payment whose every journal row is a callback kept unverified (not verified since)."""
    return not payment.charge_attempted and bool(journal) and not _decided(journal)


def _held(payment: LockedPayment, journal: list[JournalRow]) -> bool:
    """Whether Hyp reported money for the payment after it was closed that settling held for a human instead of
    completing the payment (approved while a refund of the payment had no Id of its own yet), the payment closed as it
    was then. Only that hold: a transaction that sent the payment to review (an amount mismatch, say) and that an
    operator then failed, or a payment an operator failed after the hold, stays closed."""
    return any(
        held_while_a_refund_has_no_id(e.decision, e.detail)
        and e.ccode == protocol.APPROVED
        and e.previous_status == payment.status
        for e in journal
    )


def plan_resolution(
    payment: LockedPayment,
    journal: list[JournalRow],
    request: ResolveRequest,
    *,
    named: JournalRow | None,
    paid_elsewhere: bool,
) -> Plan:
    """What resolving does, from the locked payment, its journal rows, and (with `hypay_id`) the journal's row
    for that Id wherever it belongs. Raises Conflict (409) saying why not: the body was well formed (400 is the
    document's malformed body), the payment's state refuses it. Pure."""
    why_not = _not_resolvable(payment, journal)
    if why_not:
        raise Conflict(why_not)
    if payment.granted_before and request.action == "fail":
        raise Conflict(
            f"credits were already granted for payment {payment.id} (a purchase row exists): failing would hide the"
            " grant; complete it with the transaction that paid (no second grant: the credits then stand on it), and"
            " refund that transaction if the money must go back"
        )
    if request.action == "complete" and not payment.credits_known:
        raise Conflict(
            f"the credits payment {payment.id} sold are not known (it records none, and its pack no longer sells"
            " credits at its price): completing would grant none, or today's catalogue; record them in"
            " payments.credits first, or refund the transaction and resolve fail"
        )
    if payment.granted_before and not payment.granted_in_full:
        raise Conflict(
            f"the ledger does not hold payment {payment.id}'s {payment.credits_sold} credits in full (the web app"
            " wrote a purchase of another amount, or reversed it): completing would leave them so and failing would"
            " hide them; settle the credits in the web app, or refund the transaction"
        )
    if request.action == "fail":
        if payment.status == PaymentStatus.FAILED and not payment.kept_found_forged:
            raise Conflict(f"payment {payment.id} is failed already")
        return Plan("fail")  # a failed one: the operator's word on the callbacks found forged, audited
    if (
        payment.status in (PaymentStatus.FAILED, PaymentStatus.EXPIRED)
        and payment.kept_found_forged
        and not payment.charge_attempted
        and not _held(payment, journal)
    ):
        raise Conflict(
            f"payment {payment.id} is {payment.status}; callbacks kept for it were found forged: confirm with resolve"
            " fail once Hyp's portal shows no such transaction"
        )
    if payment.status == PaymentStatus.PENDING and _held_by_kept(payment, journal):
        forged = "found forged by a later check" if payment.kept_found_forged else "not verified yet"
        raise Conflict(
            f"payment {payment.id} is held only by callbacks {forged}: fail it if Hyp's portal shows no such"
            " transaction; if it does, POST the raw callback to /hypay/notify (a genuine one completes the payment)"
        )
    if request.hypay_id is None:
        flagged = [e for e in journal if e.decision == "review" and e.ccode == protocol.APPROVED and e.verified]
        if not flagged:
            raise Conflict(
                f"no Hyp transaction is known to have paid payment {payment.id}: name the one that did (hypay_id,"
                f" from Hyp's transactions for Order {payment.id}), or fail it"
            )
        if len(flagged) > 1:
            raise Conflict(
                f"several Hyp transactions paid payment {payment.id} ({', '.join(e.hypay_id for e in flagged)}):"
                " name the one to complete it with (hypay_id); refund the others"
            )
        return Plan("complete", _transaction(payment, flagged[0]))
    hypay_id = request.hypay_id
    if paid_elsewhere:
        raise Conflict(f"Hyp transaction {hypay_id} already paid another payment")
    if named is None:
        if not payment.charge_attempted or payment.declined_code is not None:
            raise Conflict(
                f"Hyp transaction {hypay_id} is not in the journal: only a saved-card charge whose answer was lost"
                " can be completed with a transaction the backend never saw (a page payment's callback is"
                " delivered again, or POST its raw callback to /hypay/notify)"
            )
        return Plan("complete", _lost_charge(payment, hypay_id))
    if named.payment_id != payment.id:
        owner = f"payment {named.payment_id}" if named.payment_id else f"Order {named.order_ref!r}, not ours"
        raise Conflict(f"Hyp transaction {hypay_id} belongs to {owner}")
    named_for_a_refund = named.source == Source.TOKEN_CHARGE and named.decision == "review" and not named.verified
    if named_for_a_refund and payment.charge_attempted:
        # An Id an operator named for the refund of this payment's saved-card charge whose answer was lost (no
        # callback ever verifies those): completing with it is the same word as naming an Id never journaled.
        return Plan("complete", _lost_charge(payment, hypay_id))
    if named.decision == "unverified" or not named.verified:
        raise Conflict(
            f"Hyp transaction {hypay_id} is not verified (it may be forged): let it be verified first"
            " (its next delivery, or POST its raw callback to /hypay/notify)"
        )
    if named.decision != "review" or named.ccode != protocol.APPROVED:
        raise Conflict(
            f"Hyp transaction {hypay_id} was decided {named.decision!r} (CCode {named.ccode}): it did not pay"
        )
    return Plan("complete", _transaction(payment, named))


def _lost_charge(payment: LockedPayment, hypay_id: str) -> HypTransaction:
    """The saved-card charge whose answer was lost, by the Id an operator read from Hyp's transactions for its Order:
    it charged the payment's amount (what was asked)."""
    return HypTransaction(
        hypay_id=hypay_id,
        order_ref=str(payment.id),
        payment_id=payment.id,
        ccode=protocol.APPROVED,
        amount=payment.amount,
        source=Source.TOKEN_CHARGE,
        verified=True,
    )


def _transaction(payment: LockedPayment, entry: JournalRow) -> HypTransaction:
    """The journal's row as the transaction that paid: its own amount, currency and source are kept."""
    try:
        source = Source(entry.source)
    except ValueError:
        raise Conflict(f"Hyp transaction {entry.hypay_id} is a {entry.source!r}, not a payment") from None
    return HypTransaction(
        hypay_id=entry.hypay_id,
        order_ref=entry.order_ref or str(payment.id),
        payment_id=payment.id,
        ccode=protocol.APPROVED,
        # An amount Hyp's answer did not give readably stays unknown in the journal (the operator looked it up;
        # the credits are the payment's), never recorded as the payment's price.
        amount=entry.amount,
        source=source,
        verified=True,
        approval_code=entry.approval_code,
        invoice_number=entry.invoice_number,  # the invoice Hyp numbered for it: recorded with the grant
        currency_known=entry.currency_known,
    )


class ResolvePayment:
    """`ResolvePayment(db, persistence)(admin=..., payment_id=..., idempotency_key=..., request=..., context=...)`."""

    def __init__(
        self,
        db: Database,
        persistence: PostgresPersistenceLayer,
        *,
        expires_after_seconds: int = 86400,
        charge_settle_seconds: int = 120,
    ) -> None:
        # Imported here, not with the module: the queue (admin's GET, the cleanup's metric) needs no idempotency
        # layer, and Powertools' idempotency utility imports boto3.
        from payments.services.keyed import Keyed

        self.db = db
        self.charge_settle_seconds = charge_settle_seconds
        self._keyed = Keyed(
            self._resolve,
            persistence=persistence,
            key="[admin, key]",
            validate="[payment_id, request]",
            prefix="admin_resolve",
            expires_after_seconds=expires_after_seconds,
        )

    def __call__(
        self, *, admin: str, payment_id: UUID, idempotency_key: str, request: ResolveRequest, context: Any = None
    ) -> Answer:
        scope = {
            "admin": admin,
            "key": idempotency_key,
            "payment_id": str(payment_id),
            "request": request.model_dump(mode="json"),
        }
        return self._keyed(context, scope=scope)

    def _resolve(self, scope: dict[str, Any]) -> dict[str, Any]:
        admin, key = scope["admin"], scope["key"]
        payment_id = UUID(scope["payment_id"])
        request = ResolveRequest.model_validate(scope["request"])
        request = request.model_copy(update={"hypay_id": as_named(self.db, "hypay_id", request.hypay_id)})

        def work(tx: Transaction) -> tuple[dict[str, Any], HypTransaction | None, Settlement | None, bool]:
            statements = ResolveStatements(tx)
            payment = statements.lock(payment_id, settle_seconds=self.charge_settle_seconds)
            if payment is None:
                raise NotFound(f"no payment {payment_id}")
            asked = {"action": request.action, "reason": request.reason, "hypay_id": request.hypay_id}
            done = statements.own_resolution(payment_id, admin, key)
            if done is not None and done[2] != asked:
                # The key resolved this payment with another request, and its idempotency record has expired since
                # (or was purged): that resolution's answer is not this request's, and this one is not carried out.
                raise IdempotencyKeyReused(
                    "this Idempotency-Key already resolved this payment with another request; use a new key"
                )
            if done is not None:
                # Committed already (this run repeats it: the commit's answer was lost): its answer, nothing again
                done_id, done_state, _ = done
                status, paid_by = done_state.get("status"), done_state.get("hypay_id")
                granted = done_state.get("credits_granted_now", 0)
                return _resolved(payment_id, request, status, paid_by, granted, done_id, admin), None, None, False
            journal = statements.journal_of(payment_id)
            named = statements.journal_row(request.hypay_id) if request.hypay_id else None
            elsewhere = statements.paid_another_payment(request.hypay_id, payment_id) if request.hypay_id else False
            plan = plan_resolution(payment, journal, request, named=named, paid_elsewhere=elsewhere)
            settlement = None
            paying = plan.txn.hypay_id if plan.action == "complete" and plan.txn is not None else None
            if paying is not None and statements.refunded(paying):
                # Credits for money that went back (or may have) would be free credits. This payment's own refunds
                # take its lock, so no race with them; another payment's refund cannot begin on a transaction the
                # journal holds for this one, and one begun before is seen here or makes the grant's journal write
                # answer `duplicate` (journal.py).
                raise Conflict(
                    f"Hyp transaction {paying} was refunded (or its refund is being confirmed, or it was closed as"
                    " refunded in Hyp's portal): fail the payment instead"
                )
            if plan.action == "complete" and plan.txn is not None:
                settlement = settle_by_operator(
                    tx,
                    plan.txn,
                    previous_status=payment.status,
                    detail=_operator_detail(journal, plan.txn.hypay_id, admin, request.reason),
                    granted_before=payment.granted_before,
                    credits=payment.credits_sold,
                )
            elif not statements.fail(payment_id, payment.stored_status):
                raise Conflict(f"payment {payment_id} changed while it was being resolved; look again")
            after = statements.lock(payment_id, settle_seconds=self.charge_settle_seconds)
            assert after is not None  # locked by this transaction: it cannot have gone
            audit_id = audit.record(
                tx,
                admin=admin,
                action=audit.AuditAction.RESOLVE,
                payment_id=payment_id,
                idempotency_key=key,
                request=asked,
                before={**payment.as_state(), "hypay_transactions": [_journal_view(e) for e in journal]},
                after={
                    **after.as_state(),
                    "hypay_id": plan.txn.hypay_id if plan.txn else None,
                    "credits_granted_now": settlement.credits_granted if settlement else 0,
                },
            )
            body = _resolved(
                payment_id,
                request,
                after.stored_status,
                plan.txn.hypay_id if plan.txn else None,
                settlement.credits_granted if settlement else 0,
                str(audit_id),
                admin,
            )
            return body, plan.txn, settlement, True

        # Another resolve naming the same Hyp Id committing meanwhile trips the journal's unique key: run again, it
        # reads that payment's row and answers 409 (already paid another payment), not a 5xx.
        body, txn, settlement, fresh = self.db.atomic(work, retry_on=(UNIQUE_VIOLATION,), read_committed=True)
        if fresh and txn is not None and settlement is not None:
            report_operator_grant(txn, settlement, admin=admin)
        elif fresh:
            metrics.add_metric(name="OperatorResolved", unit="Count", value=1)
            logger.info("payment failed by an operator", extra={"payment_id": str(payment_id), "admin": admin})
        return {"status": 200, "body": body}


def _resolved(
    payment_id: UUID,
    request: ResolveRequest,
    status: str | None,
    hypay_id: str | None,
    credits_granted: int,
    audit_id: str,
    admin: str,
) -> dict[str, Any]:
    return {
        "payment_id": str(payment_id),
        "action": request.action,
        "status": status,
        "hypay_id": hypay_id,
        "credits_granted": credits_granted,
        "audit_id": audit_id,
        "resolved_by": admin,
    }


def _operator_detail(journal: list[JournalRow], hypay_id: str, admin: str, reason: str) -> str:
    earlier = next((e.detail for e in journal if protocol.same_hyp_id(e.hypay_id, hypay_id) and e.detail), None)
    note = f"completed by {admin}: {reason}"
    return f"{earlier} - {note}" if earlier else note


__all__ = [
    "Plan",
    "QueueQuery",
    "Reason",
    "ResolvePayment",
    "ResolveRequest",
    "classify",
    "decode_cursor",
    "encode_cursor",
    "plan_resolution",
    "queue_item",
    "review_queue",
]

"""SQL of the review queue (what needs a human) and of resolving a payment by hand.

The queue is one keyset-paginated statement over two sources, oldest first:
- payments in `needs_review` (their journal rows come with them, folded in);
- journal rows (`hypay_transactions`) decided `review`, `unmatched` or `unverified` (not verified since),
  except `review` rows of a payment that is itself in the queue.
Resolving locks the payment (`FOR UPDATE`) and reads what the decision needs in the same transaction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from payments.adapters.db import Rows, bind, stored_money
from payments.adapters.journal import GRANTED_IN_FULL, SOLD_CREDITS, SPELLINGS
from payments.domain.money import Currency, Money
from payments.domain.payment import PaymentStatus
from payments.errors import InvalidRequest


class Runner(Protocol):
    def run(self, sql: str) -> Rows: ...


@dataclass(frozen=True)
class QueueRow:
    """One item of the queue as stored: a payment (`kind = payment`) or a journal row (`kind = journal`)."""

    kind: str
    key: str  # p:<payment id> / j:<hyp id>: unique, the keyset's tie-breaker
    since: str  # when it started needing a human (UTC, ISO 8601 with microseconds: the cursor's other half)
    age_seconds: int
    payment_id: UUID | None
    hypay_id: str | None
    decision: str | None
    detail: str | None
    amount: str | None  # the journal's (what Hyp charged), or the payment's
    currency: str | None
    source: str | None
    ccode: int | None
    order_ref: str | None
    deliveries: int | None
    last_seen: datetime | None
    # The payment's side (None for an unmatched transaction)
    status: str | None
    review_reason: str | None
    payment_amount: str | None
    payment_currency: str | None
    user_id: UUID | None
    credits: int | None
    charge_attempted_at: datetime | None
    paid_by: str | None  # payments.hypay_transaction_id
    hypay_ccode: int | None
    hypay_message: str | None


@dataclass(frozen=True)
class JournalRow:
    hypay_id: str
    payment_id: UUID | None
    decision: str
    detail: str | None
    ccode: int | None
    amount: Money | None
    currency_known: bool
    source: str
    verified: bool
    order_ref: str | None
    approval_code: str | None
    first_seen: datetime | None
    previous_status: str | None = None  # the payment's status when the transaction was decided
    invoice_number: str | None = None  # the invoice Hyp numbered for it (sql/019), when a trusted answer gave one


@dataclass(frozen=True)
class SentBack:
    """What became of a transaction's money, whichever payment's refunds or close moved it: refunds confirmed (their
    sum), refunds not settled (being asked, or their outcome unknown: their ids), and an operator's close."""

    succeeded: Decimal
    unsettled: list[str]
    closed_as: str | None


@dataclass(frozen=True)
class UnverifiedSummary:
    hypay_id: str
    callbacks: int
    deliveries: int
    reasons: list[str]
    sources: list[str]
    found_forged: int = 0  # how many of them a later check found forged
    payment_ids: tuple[str, ...] = ()  # the payments their Order names (the journal's row names one of them)


@dataclass(frozen=True)
class LockedPayment:
    """A payment, locked for the rest of the transaction, as resolving needs it."""

    id: UUID
    status: PaymentStatus
    stored_status: str
    review_reason: str | None
    amount: Money
    user_id: UUID
    credits: int | None
    paid_by: str | None
    charge_attempted: bool
    charge_attempted_at: datetime | None
    charge_settled: bool  # the attempt is older than the settle window: no invocation can still be charging
    granted_before: bool
    completed_at: datetime | None
    balance: int | None
    declined_code: int | None = None  # Hyp's CCode when Hyp's own answer closed it (a decline or refusal), else None
    # Callbacks naming it were kept unverified, a later check found every one of them forged, and no operator failed it
    # since the last of those checks (confirming there is no such transaction)
    kept_found_forged: bool = False
    # The ledger holds its credits in full (GRANTED_IN_FULL): what completing one granted before needs
    granted_in_full: bool = False
    # The credits it sold (SOLD_CREDITS), read under its lock: what completing it grants (passed to the grant, never
    # read again). None when not known.
    credits_sold: int | None = None

    @property
    def credits_known(self) -> bool:
        """What it sold is known, and is some credits."""
        return self.credits_sold is not None and self.credits_sold > 0

    def as_state(self) -> dict[str, Any]:
        """What the audit trail records as `before` / `after`."""
        return {
            "status": self.stored_status,
            "review_reason": self.review_reason,
            "amount": str(self.amount.amount),
            "currency": str(self.amount.currency),
            "credits": self.credits,
            "hypay_transaction_id": self.paid_by,
            "charge_attempted_at": self.charge_attempted_at.isoformat() if self.charge_attempted_at else None,
            "credits_granted": self.granted_before,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "user_id": str(self.user_id),
            "user_balance": self.balance,
        }


_QUEUE = """
WITH items AS (
    SELECT 'payment'::text AS kind, 'p:' || p.id::text AS key, {since(p.created_at)} AS since, p.id AS payment_id,
           NULL::text AS hypay_id, NULL::text AS decision, NULL::text AS detail, p.amount::text AS amount,
           p.currency AS currency, NULL::text AS source, NULL::integer AS ccode, NULL::text AS order_ref,
           NULL::integer AS deliveries, NULL::timestamptz AS last_seen
      FROM public.payments p
     WHERE p.status = 'needs_review'
    UNION ALL
    SELECT 'journal', 'j:' || t.hypay_id, {since(t.first_seen)}, t.payment_id, t.hypay_id, t.decision, t.detail,
           t.amount::text, t.currency, t.source, t.ccode, t.order_ref, t.deliveries, t.last_seen
      FROM public.hypay_transactions t
      LEFT JOIN public.payments p ON p.id = t.payment_id
     WHERE t.decision IN ('review', 'unmatched', 'unverified')
       AND t.closed_at IS NULL  -- closed by an operator from what Hyp's portal shows (services.close_transaction)
       AND NOT (t.decision = 'unverified' AND t.verified)
       -- every callback kept for the Id found forged by a check, and its payment failed by an operator after the
       -- last of those checks (who confirmed with Hyp's portal): no money of Hyp's behind it
       AND NOT (t.decision = 'unverified' AND COALESCE(p.status, '') = 'failed'
                AND NOT EXISTS (SELECT 1 FROM public.hypay_unverified_callbacks u
                                 WHERE u.hypay_id = t.hypay_id AND u.found_forged_at IS NULL)
                AND EXISTS (SELECT 1 FROM public.admin_audit_log a
                             WHERE a.payment_id = p.id AND a.action = 'resolve'
                               AND a.after_state ->> 'status' = 'failed'
                               AND a.at >= (SELECT max(u.found_forged_at) FROM public.hypay_unverified_callbacks u
                                             WHERE u.hypay_id = t.hypay_id)))
       -- every callback kept for the Id found forged by a check, and no payment of ours named (an Order that is none of
       -- ours: junk sent while Hyp could not be asked): no payment to fail, no money of ours behind it, and nothing an
       -- operator could do would take it out (its journal row and kept copies stay)
       AND NOT (t.decision = 'unverified' AND p.id IS NULL
                AND EXISTS (SELECT 1 FROM public.hypay_unverified_callbacks u WHERE u.hypay_id = t.hypay_id)
                AND NOT EXISTS (SELECT 1 FROM public.hypay_unverified_callbacks u
                                 WHERE u.hypay_id = t.hypay_id AND u.found_forged_at IS NULL))
       AND NOT (t.decision = 'review' AND COALESCE(p.status, '') = 'needs_review')
       -- a legacy item the web app settled: the payment (of a status from before this backend when it was paid) since
       -- completed with this very transaction, for the amount it asked, its credits in the ledger in full
       AND NOT COALESCE(t.decision = 'review' AND p.status = 'completed'
                AND ltrim(p.hypay_transaction_id, '0') = ltrim(t.hypay_id, '0')
                AND t.previous_status NOT IN ('pending', 'completed', 'failed', 'expired', 'needs_review')
                AND t.amount = p.amount AND t.currency = p.currency AND {granted_in_full}, false)
       -- a refund's own transaction, held before that refund's Id was known (confirmed since): money that went back
       AND NOT EXISTS (SELECT 1 FROM public.refunds r WHERE r.hypay_refund_id = t.hypay_id AND r.status = 'succeeded')
       -- money taken back in full: nothing left to do
       AND COALESCE((SELECT sum(r.amount) FROM public.refunds r
                      WHERE r.original_hypay_id = t.hypay_id AND r.status = 'succeeded'), 0) < COALESCE(t.amount, 1)
    UNION ALL
    -- a refund whose answer was lost (or never stored): it may have moved money
    SELECT 'refund', 'r:' || r.id::text, {since(r.created_at)}, r.payment_id, r.original_hypay_id, r.status,
           'refund outcome unknown: ' || COALESCE(r.message, 'no answer stored'), r.amount::text, r.currency,
           r.method, r.ccode, NULL, NULL, NULL
      FROM public.refunds r
     WHERE r.status = 'unknown' OR (r.status = 'attempted' AND r.created_at < now() - interval '5 minutes')
)
SELECT i.kind, i.key, to_char(i.since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       GREATEST(0, extract(epoch FROM now() - i.since))::bigint,
       i.payment_id::text, i.hypay_id, i.decision, i.detail, i.amount, i.currency, i.source, i.ccode, i.order_ref,
       i.deliveries, i.last_seen,
       p.status, p.review_reason, p.amount::text, p.currency, p.user_id::text, p.credits, p.charge_attempted_at,
       p.hypay_transaction_id, p.hypay_ccode, p.hypay_message
  FROM items i
  LEFT JOIN public.payments p ON p.id = i.payment_id
 WHERE :after_since::timestamptz IS NULL OR (i.since, i.key) > (:after_since::timestamptz, :after_key::text)
 ORDER BY i.since, i.key
 LIMIT :limit""".replace("{granted_in_full}", GRANTED_IN_FULL)
# An item's `since` within what a timestamp and its age in seconds can be (the web app's columns may hold an infinity):
# the earliest as the Unix epoch (its age then alarms), the latest as the last instant of year 9999 (its age 0). Fixed
# bounds, never now(): the pages' cursor is the item's `since`, which must be the same from one statement to the next.
_QUEUE = re.sub(
    r"\{since\(([a-z_.]+)\)\}",
    r"LEAST(GREATEST(\1, 'epoch'::timestamptz), '9999-12-31 23:59:59.999999+00'::timestamptz)",
    _QUEUE,
)

_JOURNAL_COLUMNS = (
    "hypay_id, payment_id::text, decision, detail, ccode, amount::text, currency, source, verified, order_ref,"
    " approval_code, first_seen, previous_status, invoice_number"
)

_LOCK = """
SELECT p.id::text, p.status, p.review_reason, p.amount::text, p.currency, p.user_id::text, p.credits,
       p.hypay_transaction_id, p.charge_attempt_id IS NOT NULL, p.charge_attempted_at,
       COALESCE(p.charge_attempted_at < now() - make_interval(secs => :settle), false),
       EXISTS (SELECT 1 FROM public.credit_transactions c WHERE c.payment_id = p.id AND c.type = 'purchase'),
       p.completed_at,
       (SELECT u.credits FROM public.profiles u WHERE u.id = p.user_id), p.hypay_ccode,
       EXISTS (SELECT 1 FROM public.hypay_unverified_callbacks u WHERE u.payment_id = p.id)
       AND NOT EXISTS (SELECT 1 FROM public.hypay_unverified_callbacks u
                        WHERE u.payment_id = p.id AND u.found_forged_at IS NULL)
       -- not confirmed yet: no operator's fail since the last mark
       AND (SELECT max(u.found_forged_at) FROM public.hypay_unverified_callbacks u WHERE u.payment_id = p.id)
           > COALESCE((SELECT max(a.at) FROM public.admin_audit_log a
                        WHERE a.payment_id = p.id AND a.action = 'resolve' AND a.after_state ->> 'status' = 'failed'),
                      '-infinity'::timestamptz),
       COALESCE({granted_in_full}, false), {sold}
  FROM public.payments p WHERE p.id = :id::uuid FOR UPDATE""".replace("{granted_in_full}", GRANTED_IN_FULL).replace(
    "{sold}", SOLD_CREDITS
)

_FAIL = """
UPDATE public.payments SET status = 'failed', updated_at = now()
 WHERE id = :id::uuid AND status = :previous_status
RETURNING 1"""


def _money(amount: str | None, currency: str | None) -> tuple[Money | None, bool]:
    """A journal row's or queue item's amount, for showing: None when it is no amount of money (the web app's data; an
    item is listed whatever it holds), its currency unknown (False) when not one we sell in."""
    if amount is None:
        return None, True
    try:
        return Money.of(Decimal(amount), Currency(currency or "ILS")), currency is not None
    except ValueError:
        pass
    try:
        return Money.of(Decimal(amount)), False
    except (InvalidRequest, ArithmeticError, ValueError):
        return None, False


def _journal_row(row: list[Any]) -> JournalRow:
    (
        hypay_id,
        pid,
        decision,
        detail,
        ccode,
        amount,
        currency,
        source,
        verified,
        order_ref,
        acode,
        first,
        before,
        hesh,
    ) = row
    money, known = _money(amount, currency)
    return JournalRow(
        hypay_id,
        UUID(pid) if pid else None,
        decision,
        detail,
        ccode,
        money,
        known,
        source,
        bool(verified),
        order_ref,
        acode,
        first,
        before,
        hesh,
    )


def _ids(values: list[str]) -> str:
    return ",".join(values)


class ReviewStore:
    """The queue's reads (autocommit statements on a `Database`)."""

    def __init__(self, db: Runner) -> None:
        self.db = db

    def page(self, *, after: tuple[str, str] | None, limit: int) -> list[QueueRow]:
        """Up to `limit` items after the cursor (since, key), oldest first."""
        rows = self.db.run(
            bind(
                _QUEUE,
                after_since=after[0] if after else None,
                after_key=after[1] if after else None,
                limit=limit,
            )
        )
        items = []
        for row in rows:
            (kind, key, since, age, pid, hypay_id, decision, detail, amount, currency, source, ccode, order_ref,
             deliveries, last_seen, status, review_reason, p_amount, p_currency, user, credits, attempted, paid_by,
             hypay_ccode, hypay_message) = row  # fmt: skip
            items.append(
                QueueRow(
                    kind,
                    key,
                    since,
                    int(age),
                    UUID(pid) if pid else None,
                    hypay_id,
                    decision,
                    detail,
                    amount,
                    currency,
                    source,
                    ccode,
                    order_ref,
                    deliveries,
                    last_seen,
                    status,
                    review_reason,
                    p_amount,
                    p_currency,
                    UUID(user) if user else None,
                    credits,
                    attempted,
                    paid_by,
                    hypay_ccode,
                    hypay_message,
                )  # fmt: skip
            )
        return items

    def journal_of(self, payment_ids: list[UUID]) -> dict[UUID, list[JournalRow]]:
        """Every journal row of these payments, oldest first."""
        if not payment_ids:
            return {}
        rows = self.db.run(
            bind(
                f"SELECT {_JOURNAL_COLUMNS} FROM public.hypay_transactions"
                " WHERE payment_id = ANY (string_to_array(:ids, ',')::uuid[]) ORDER BY first_seen, hypay_id",
                ids=_ids([str(p) for p in payment_ids]),
            )
        )
        found: dict[UUID, list[JournalRow]] = {}
        for row in rows:
            entry = _journal_row(row)
            if entry.payment_id is not None:
                found.setdefault(entry.payment_id, []).append(entry)
        return found

    def sent_back_of(self, hypay_ids: list[str]) -> dict[str, SentBack]:
        """For these journaled transactions, what refunds of them (by their number, whichever payment's) and a close
        did with their money."""
        if not hypay_ids:
            return {}
        rows = self.db.run(
            bind(
                "SELECT t.hypay_id,"
                " (SELECT COALESCE(sum(r.amount), 0)::text FROM public.refunds r"
                "   WHERE ltrim(r.original_hypay_id, '0') = ltrim(t.hypay_id, '0') AND r.status = 'succeeded'),"
                " ARRAY(SELECT r.id::text FROM public.refunds r"
                "   WHERE ltrim(r.original_hypay_id, '0') = ltrim(t.hypay_id, '0')"
                "     AND r.status IN ('attempted', 'unknown') ORDER BY r.created_at),"
                " t.closed_as"
                " FROM public.hypay_transactions t WHERE t.hypay_id = ANY (string_to_array(:ids, ','))",
                ids=_ids(hypay_ids),
            )
        )
        return {hid: SentBack(Decimal(done), list(open_ or []), closed) for hid, done, open_, closed in rows}

    def unverified_of(self, hypay_ids: list[str]) -> dict[str, UnverifiedSummary]:
        """The callbacks kept for these Hyp Ids while they could not be verified."""
        if not hypay_ids:
            return {}
        rows = self.db.run(
            bind(
                "SELECT hypay_id, count(*)::int, sum(deliveries)::int,"
                " array_agg(DISTINCT COALESCE(reason, '')), array_agg(DISTINCT source),"
                " count(*) FILTER (WHERE found_forged_at IS NOT NULL)::int,"
                " array_agg(DISTINCT payment_id::text) FILTER (WHERE payment_id IS NOT NULL)"
                " FROM public.hypay_unverified_callbacks WHERE hypay_id = ANY (string_to_array(:ids, ','))"
                " GROUP BY hypay_id",
                ids=_ids(hypay_ids),
            )
        )
        return {
            r[0]: UnverifiedSummary(
                r[0], int(r[1]), int(r[2]), [x for x in r[3] if x], list(r[4]), int(r[5]), tuple(r[6] or ())
            )
            for r in rows
        }


class ResolveStatements:
    """Resolving one payment, inside the caller's transaction."""

    def __init__(self, tx: Runner) -> None:
        self.tx = tx

    def lock(self, payment_id: UUID, *, settle_seconds: int) -> LockedPayment | None:
        """The payment, locked until the transaction ends; None when there is no such payment."""
        rows = self.tx.run(bind(_LOCK, id=str(payment_id), settle=settle_seconds))
        if not rows:
            return None
        (pid, status, reason, amount, currency, user, credits, paid_by, attempted, attempted_at, settled, granted,
         completed_at, balance, declined_code, kept_found_forged, in_full, sold) = rows[0]  # fmt: skip
        return LockedPayment(
            UUID(pid),
            PaymentStatus.from_db(status),
            status,
            reason,
            stored_money(amount, currency),
            UUID(user),
            credits,
            paid_by,
            bool(attempted),
            attempted_at,
            bool(settled),
            bool(granted),
            completed_at,
            balance,
            declined_code,
            bool(kept_found_forged),
            bool(in_full),
            int(sold) if sold is not None else None,
        )

    def journal_of(self, payment_id: UUID) -> list[JournalRow]:
        rows = self.tx.run(
            bind(
                f"SELECT {_JOURNAL_COLUMNS} FROM public.hypay_transactions WHERE payment_id = :id::uuid"
                " ORDER BY first_seen, hypay_id",
                id=str(payment_id),
            )
        )
        return [_journal_row(r) for r in rows]

    def journal_row(self, hypay_id: str) -> JournalRow | None:
        rows = self.tx.run(
            bind(f"SELECT {_JOURNAL_COLUMNS} FROM public.hypay_transactions WHERE hypay_id = :txn", txn=hypay_id)
        )
        return _journal_row(rows[0]) if rows else None

    def paid_another_payment(self, hypay_id: str, payment_id: UUID) -> bool:
        """Another payment already holds this Hyp transaction, in any spelling of its number."""
        rows = self.tx.run(
            bind(
                f"SELECT EXISTS (SELECT 1 FROM public.payments WHERE hypay_transaction_id IN {SPELLINGS}"
                " AND id <> :id::uuid)",
                txn=hypay_id,
                id=str(payment_id),
            )
        )
        return bool(rows[0][0])

    def refunded(self, hypay_id: str) -> bool:
        """A refund of this transaction moved, or may have moved, money (attempted, succeeded, unknown), whichever
        payment's refund it is (an operator may have named it as another payment's lost charge), or an operator closed
        it as refunded through Hyp's portal (a row of its number, in any spelling)."""
        rows = self.tx.run(
            bind(
                "SELECT EXISTS (SELECT 1 FROM public.refunds WHERE ltrim(original_hypay_id, '0') = ltrim(:txn, '0')"
                " AND status IN ('attempted', 'succeeded', 'unknown'))"
                f" OR EXISTS (SELECT 1 FROM public.hypay_transactions WHERE hypay_id IN {SPELLINGS}"
                " AND closed_as IS NOT NULL)",
                txn=hypay_id,
            )
        )
        return bool(rows[0][0])

    def own_resolution(
        self, payment_id: UUID, admin: str, idempotency_key: str
    ) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        """This admin's resolution of this payment under this key, already committed (its audit row's id, `after`
        state and request): the same request run again after its commit's answer was lost, or the key used again for
        another request once its idempotency record expired (the caller compares the requests)."""
        rows = self.tx.run(
            bind(
                "SELECT id::text, after_state, request FROM public.admin_audit_log WHERE action = 'resolve'"
                " AND payment_id = :id::uuid AND admin = :admin AND idempotency_key = :key ORDER BY at LIMIT 1",
                id=str(payment_id),
                admin=admin,
                key=idempotency_key,
            )
        )
        if not rows:
            return None
        audit_id, after, asked = rows[0]
        return (
            audit_id,
            after if isinstance(after, dict) else json.loads(after),
            asked if isinstance(asked, dict) else json.loads(asked or "{}"),
        )

    def fail(self, payment_id: UUID, previous_status: str) -> bool:
        """needs_review / pending -> failed, no credits; False when its status was not `previous_status`."""
        return bool(self.tx.run(bind(_FAIL, id=str(payment_id), previous_status=previous_status)))


__all__ = ["JournalRow", "LockedPayment", "QueueRow", "ResolveStatements", "ReviewStore", "UnverifiedSummary"]

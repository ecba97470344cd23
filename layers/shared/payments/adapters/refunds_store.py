"""SQL of refunds: the `refunds` rows, and what a succeeded refund changes (journal, ledger, balance, audit).

A refund is begun in one transaction that locks the payment (`FOR UPDATE`), reads what was paid and what
is already refunded or being refunded, and inserts the `attempted` row (its `idempotency_key` unique):
two refunds of one payment serialize on that lock, so together they never exceed what was paid. Hyp is
asked only after that commit. Its answer is stored in a second transaction under the same lock; each
outcome is a conditional update from `attempted`, so a late or repeated writer changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from payments.adapters.db import Database, Transaction, bind, stored_money
from payments.adapters.journal import SPELLINGS, Journal
from payments.domain import hypay as protocol
from payments.domain.money import Currency, Money
from payments.domain.refund import Method, RefundStatus, credits_to_take, held_while_a_refund_has_no_id
from payments.errors import IdempotencyKeyReused

UNIQUE_VIOLATION = "23505"
NOT_SENT = "not sent: "  # message prefix of a row released because Hyp was never asked (ccode NULL, refused)


@dataclass(frozen=True)
class RefundRow:
    id: UUID
    payment_id: UUID
    original_hypay_id: str
    method: Method
    amount: Money
    status: RefundStatus
    hypay_refund_id: str | None
    ccode: int | None
    message: str | None
    credits_taken: int
    reason: str
    admin: str
    created_at: dt.datetime
    updated_at: dt.datetime  # for an attempted row: when its attempt started (inserted, or taken up again)
    # The request the row was made for, or last taken up again for (None: a row written before 017)
    request: dict[str, Any] | None = None

    @property
    def released(self) -> bool:
        """Hyp was never asked for it: nothing moved, the same key may try again."""
        return self.status == RefundStatus.REFUSED and self.ccode is None and (self.message or "").startswith(NOT_SENT)


@dataclass(frozen=True)
class Target:
    """The locked payment and the Hyp transaction a refund reverses."""

    payment_id: UUID
    user_id: UUID
    payment_status: str
    original_hypay_id: str
    # What that transaction paid; None when Hyp's answer gave its amount unreadably and no operator has named it yet
    # (a refund then needs `original_amount`, see `Refunds._plan`).
    original: Money | None
    original_at: dt.datetime  # when we learned of it (the journal's first_seen, else the payment's completion)
    reserved: Money  # refunds of it that moved or may have moved money (attempted, succeeded, unknown)
    refunded: Money  # refunds of it that succeeded
    pays_the_payment: bool  # the payment's own paying transaction (its credits were granted for it)
    price: Money  # what the payment asked: what the credits were granted for
    # `original` is what an operator read from Hyp (Hyp's answer gave it unreadably), not Hyp's own figure: refunds
    # of it are zikoyAPI only (Hyp caps them) and their credits are counted against `price`.
    original_named: bool = False
    # A saved-card charge's transaction the journal does not hold yet (its answer was lost), named for this refund:
    # journaled when the refund's attempt is (`RefundsStore.begin`).
    unjournaled: bool = False
    # The journal holds that transaction for this payment unverified (named for an earlier refund of a lost charge, or
    # a callback not verified yet): a page callback may prove it another payment's at any moment.
    journaled_unverified: bool = False
    # A verified delivery of that transaction contradicted the journal (approved where it was declined or the reverse,
    # another amount or currency): what Hyp holds may not be `original`, so CancelTrans (the whole transaction,
    # whatever it is) is never chosen for it.
    contradicted: bool = False

    @property
    def credits_basis(self) -> Money:
        """What the credits granted for this transaction stand for: the price they were sold at (an amount unknown,
        or named by an operator, is never taken for it), or what Hyp took when that was less."""
        if self.original is None or self.original_named:
            return self.price
        if self.original.currency == self.price.currency and self.original.minor > self.price.minor:
            return self.price
        return self.original

    @property
    def credits_free(self) -> int:
        """Minor units that a refund gives back first without taking credits: what Hyp took above the price (an
        overcharge, completed by an operator: the customer keeps the credits they paid for). The basis is the price
        only then (or for an amount unknown or named, which frees nothing)."""
        if self.original is None or self.original_named:
            return 0
        return self.original.minor - self.credits_basis.minor

    @property
    def remaining(self) -> Money | None:
        if self.original is None:
            return None
        return Money(self.original.minor - self.reserved.minor, self.original.currency)


@dataclass(frozen=True)
class Planned:
    amount: Money
    method: Method
    reason: str
    admin: str
    # The refunded transaction's amount as the operator read it from Hyp, for one journaled without an amount: kept
    # on its journal row with the refund's attempt (every later cap, queue and credit reads it there).
    learned_original: Money | None = None


@dataclass(frozen=True)
class Began:
    row: RefundRow
    target: Target
    created: bool  # False: the key's row existed (a retry); Hyp must not be asked again


@dataclass(frozen=True)
class Finished:
    row: RefundRow
    credits_shortfall: int  # credits the refund stood for that the balance no longer held
    balance: int | None
    refunded: Money  # succeeded refunds of the original, this one included
    remaining: Money | None  # None: the original's amount is unknown
    # Hyp answered with a refund transaction the journal holds as something else (another payment's, say, where an
    # operator named it): the refund is stored as Hyp answered, and this says what the journal holds instead.
    journal_conflict: str | None = None


class NoSuchPayment(LookupError):
    pass


class NotRefundable(LookupError):
    """The payment has no paying transaction, or `hypay_id` is not an approved transaction of it."""


class StillAsking(LookupError):
    """An operator's finding on a refund attempted too recently, by the database's clock: it may still be asking Hyp,
    whose answer must win."""


_COLUMNS = (
    "id::text, payment_id::text, original_hypay_id, method, amount::text, currency, status, hypay_refund_id, ccode,"
    " message, credits_taken, reason, admin, created_at, updated_at, request"
)

# The payment, locked, with the transaction that granted its credits (one at most: one purchase per payment).
_LOCK_PAYMENT = """
SELECT p.status, p.user_id::text, p.amount::text, p.currency, p.hypay_transaction_id,
       COALESCE(p.completed_at, p.updated_at), p.charge_attempted_at, p.hypay_ccode,
       (SELECT j.hypay_id FROM public.hypay_transactions j WHERE j.payment_id = p.id AND j.decision = 'granted'
         ORDER BY j.first_seen LIMIT 1)
  FROM public.payments p WHERE p.id = :id::uuid FOR UPDATE"""

# Whether an operator may name Hyp Id `txn` as the transaction of payment `id`'s saved-card charge whose answer was
# lost: the Id is known nowhere (journaled for no payment, paying none), and the payment has no charge known to Hyp's
# answers (a verified token_charge row) nor an Id named before whose refund moved or may have moved money (a typo
# whose refund Hyp refused may be corrected).
_NAMEABLE = f"""
SELECT NOT EXISTS (SELECT 1 FROM public.hypay_transactions WHERE hypay_id = :txn)
   AND NOT EXISTS (SELECT 1 FROM public.payments WHERE hypay_transaction_id IN {SPELLINGS})  -- in any spelling
   AND NOT EXISTS (SELECT 1 FROM public.hypay_transactions j
                    WHERE j.payment_id = :id::uuid AND j.source = 'token_charge'
                      AND (j.verified OR EXISTS (SELECT 1 FROM public.refunds r
                                                  WHERE r.original_hypay_id = j.hypay_id
                                                    AND r.status IN ('attempted', 'succeeded', 'unknown'))))"""

# The transaction of a saved-card charge whose answer was lost, named by an operator from Hyp's transactions for a
# refund: journaled for its payment, held for review, not verified (no answer of Hyp's says it charged: it never
# completes a payment), its amount as the operator names it (`_LEARN_ORIGINAL`).
_JOURNAL_NAMED_CHARGE = """
INSERT INTO public.hypay_transactions
    (hypay_id, payment_id, order_ref, ccode, amount, currency, source, verified, decision, detail, previous_status)
VALUES (:txn, :id::uuid, :id, 0, NULL, NULL, 'token_charge', false, 'review', :detail, :status)
ON CONFLICT (hypay_id) DO NOTHING
RETURNING 1"""

# A refund's attempt on a transaction the journal holds for its payment unverified: written with it (see `begin`).
_TOUCH_UNVERIFIED = """
UPDATE public.hypay_transactions SET last_seen = now()
 WHERE hypay_id = :txn AND payment_id = :id::uuid AND NOT verified
RETURNING 1"""

_BY_KEY = f"SELECT {_COLUMNS} FROM public.refunds WHERE idempotency_key = :key"
_BY_ID = f"SELECT {_COLUMNS} FROM public.refunds WHERE id = :id::uuid"

# The journal's row of the transaction to refund (closed by an operator: refunded through Hyp's portal); whether it is
# a refund's own transaction (money that went back); whether a refund of the payment has no Id of its own yet (being
# asked, its answer lost, or given without one).
_JOURNAL_ROW = """
SELECT j.amount::text, j.currency, j.decision, j.ccode, j.first_seen, j.amount_named_by IS NOT NULL, j.detail,
       j.closed_as, j.closed_by, NOT j.verified,
       (SELECT r.id::text FROM public.refunds r WHERE r.hypay_refund_id = j.hypay_id LIMIT 1),
       EXISTS (SELECT 1 FROM public.refunds r
                WHERE r.payment_id = j.payment_id AND r.method = 'refund'
                  AND (r.status IN ('attempted', 'unknown') OR (r.status = 'succeeded' AND r.hypay_refund_id IS NULL))),
       j.contradictions > 0
  FROM public.hypay_transactions j WHERE j.hypay_id = :txn AND j.payment_id = :id::uuid"""

# A payment's approved transactions held for a human (a payment in review, or closed): what a refund without
# `hypay_id` of a payment no transaction paid may mean.
_HELD = """
SELECT hypay_id FROM public.hypay_transactions
 WHERE payment_id = :id::uuid AND decision = 'review' AND ccode = 0 ORDER BY first_seen, hypay_id"""

_SUMS = """
SELECT COALESCE(sum(amount) FILTER (WHERE status IN ('attempted', 'succeeded', 'unknown')), 0)::text,
       COALESCE(sum(amount) FILTER (WHERE status = 'succeeded' AND id IS DISTINCT FROM :me::uuid), 0)::text
  FROM public.refunds WHERE payment_id = :id::uuid AND ltrim(original_hypay_id, '0') = ltrim(:txn, '0')"""

_INSERT = f"""
INSERT INTO public.refunds (id, payment_id, original_hypay_id, method, amount, currency, status, reason,
                            idempotency_key, admin, request)
VALUES (:rid::uuid, :id::uuid, :txn, :method, :amount::numeric, :currency, 'attempted', :reason, :key, :admin,
        :request::jsonb)
RETURNING {_COLUMNS}"""

# A released row (Hyp never asked) taken up again by a retry with its key.
_RETAKE = f"""
UPDATE public.refunds SET status = 'attempted', method = :method, amount = :amount::numeric, ccode = NULL,
       message = NULL, request = :request::jsonb, updated_at = now()
 WHERE id = :rid::uuid AND status = 'refused' AND ccode IS NULL
RETURNING {_COLUMNS}"""

# The credits the payment left granted before any refund of ours, and those its other refunds took back already. The
# first is what its purchase rows granted, less what the web app itself reversed: its ledger (purchase and refund rows:
# a double grant the web app's old code made and reversed, our own take-backs) with what our refunds took added back,
# never more than the purchases (a refund of ours whose take-back has no ledger row, written under another rule).
_GRANTED = """
WITH taken AS (
    SELECT COALESCE(sum(credits_taken), 0) AS credits FROM public.refunds
     WHERE payment_id = :id::uuid AND status = 'succeeded' AND id <> :me::uuid
), ledger AS (
    SELECT COALESCE(sum(amount) FILTER (WHERE type = 'purchase'), 0) AS purchased,
           COALESCE(sum(amount) FILTER (WHERE type IN ('purchase', 'refund')), 0) AS net
      FROM public.credit_transactions WHERE payment_id = :id::uuid
)
SELECT LEAST(ledger.purchased, ledger.net + taken.credits), taken.credits FROM ledger, taken"""

_BALANCE = "SELECT credits FROM public.profiles WHERE id = :user::uuid FOR UPDATE"

_OUTCOME = f"""
UPDATE public.refunds SET status = :status, hypay_refund_id = :hyp, ccode = :ccode, message = :message,
       credits_taken = :taken, updated_at = now()
 WHERE id = :rid::uuid AND status = 'attempted'
RETURNING {_COLUMNS}"""

# Hyp's success answer settles a refund stored as unknown by another writer meanwhile (its answer had been lost).
_SUCCEEDED_OUTCOME = _OUTCOME.replace("AND status = 'attempted'", "AND status IN ('attempted', 'unknown')")

# What the journal and the other refunds say of a Hyp Id an operator names as a refund's own transaction.
# (A payment or a refund holding the number in another spelling counts: the web app may have written leading zeros.)
_REFUND_ID_FACTS = f"""
SELECT j.payment_id::text, j.decision, j.detail, j.source, j.amount::text,
       (SELECT id::text FROM public.payments WHERE hypay_transaction_id IN {SPELLINGS} LIMIT 1),
       (SELECT id::text FROM public.refunds WHERE hypay_refund_id = :hyp AND id <> :rid::uuid LIMIT 1),
       EXISTS (SELECT 1 FROM public.refunds WHERE ltrim(original_hypay_id, '0') = ltrim(:hyp, '0'))
  FROM (SELECT 1) one LEFT JOIN public.hypay_transactions j ON j.hypay_id = :hyp"""

# An attempt not yet older than `settle` seconds, by the database's clock (the one that wrote updated_at; a Lambda's
# clock may run ahead of it): it may still be asking Hyp.
_ASKING = """
SELECT status = 'attempted' AND updated_at >= now() - make_interval(secs => :settle)
  FROM public.refunds WHERE id = :rid::uuid"""

# An operator found at Hyp that a refund whose outcome was unknown moved nothing: refused, its amount free again. An
# attempt not yet older than `settle` seconds may still be asking Hyp: left as it is.
_NOT_REFUNDED = f"""
UPDATE public.refunds SET status = 'refused', ccode = NULL, message = :message, updated_at = now()
 WHERE id = :rid::uuid
   AND (status = 'unknown' OR (status = 'attempted' AND updated_at < now() - make_interval(secs => :settle)))
RETURNING {_COLUMNS}"""

_NOTE_ANSWER = """
UPDATE public.refunds SET message = :message, updated_at = now()
 WHERE id = :rid::uuid AND status = 'attempted'
RETURNING 1"""

# A same-day cancellation about to be sent, when a verified delivery has contradicted the money of its transaction since
# the attempt was planned (contradictions on the journal's row): CancelTrans would cancel Hyp's whole charge whatever
# the row says, so the same attempt goes out as a zikoyAPI refund of the row's amount (capped by Hyp), recorded before
# the call. The method the attempt goes out with: a second sending (a broken connection) finds it switched already.
_METHOD_TO_SEND = """
WITH switched AS (
    UPDATE public.refunds r SET method = 'refund', message = :message, updated_at = now()
     WHERE r.id = :rid::uuid AND r.status = 'attempted' AND r.method = 'cancel'
       AND EXISTS (SELECT 1 FROM public.hypay_transactions j
                    WHERE j.hypay_id = r.original_hypay_id AND j.payment_id = r.payment_id AND j.contradictions > 0)
    RETURNING r.method
)
SELECT COALESCE((SELECT method FROM switched), (SELECT method FROM public.refunds WHERE id = :rid::uuid))"""

_SWITCH = f"""
UPDATE public.refunds SET method = 'refund', message = :message, updated_at = now()
 WHERE id = :rid::uuid AND status = 'attempted' AND method = 'cancel'
RETURNING {_COLUMNS}"""

_TAKE_BACK = """
WITH ledger AS (
    INSERT INTO public.credit_transactions (user_id, amount, type, description, payment_id)
    VALUES (:user::uuid, -:taken::integer, 'refund', :description, :id::uuid)
    RETURNING user_id
)
UPDATE public.profiles u SET credits = u.credits - :taken::integer, updated_at = now()
  FROM ledger l WHERE u.id = l.user_id
RETURNING u.credits"""

# The refund's own transaction. Hyp may have reported it first, through a callback for the payment's Order: that row
# (in review, or unverified) becomes the refund's. Anything else Hyp journaled under that Id is kept as it is.
_JOURNAL_REFUND = """
INSERT INTO public.hypay_transactions AS t
    (hypay_id, payment_id, order_ref, ccode, amount, currency, source, verified, decision, detail,
     previous_status, approval_code)
VALUES (:hyp, :id::uuid, :order_ref, 0, :amount::numeric, :currency, 'refund', true, 'refunded', :detail,
        :previous_status, :acode)
ON CONFLICT (hypay_id) DO UPDATE SET
    source = 'refund', decision = 'refunded', verified = true, ccode = 0, amount = EXCLUDED.amount,
    currency = EXCLUDED.currency, detail = concat_ws('; ', t.detail, EXCLUDED.detail), decided_at = now(),
    last_seen = now()
 WHERE t.payment_id = EXCLUDED.payment_id AND t.decision IN ('review', 'unverified') AND t.hypay_id <> :original
RETURNING 1"""

# A note on a refund stored as Hyp answered it whose own transaction the journal holds as something else.
_NOTE_CONFLICT = f"""
UPDATE public.refunds SET message = concat_ws('; ', message, :note), updated_at = now()
 WHERE id = :rid::uuid
RETURNING {_COLUMNS}"""

# The amount of a transaction Hyp's answer gave unreadably, as an operator read it from Hyp (with a refund of it); a
# named one may be named again (corrected) while no refund of it moved or may have moved money (`_plan` checks).
_LEARN_ORIGINAL = """
UPDATE public.hypay_transactions
   SET amount = :amount::numeric, currency = :currency, amount_named_by = :admin,
       detail = concat_ws('; ', detail, :note)
 WHERE hypay_id = :txn AND (amount IS NULL OR amount_named_by IS NOT NULL)"""

# A cancellation's answer names no new transaction (Hyp documents `TransId`, `CCode`, `ReversalStatus`):
# the original's journal row says it was cancelled; the refunds row holds the rest.
_JOURNAL_CANCELLED = """
UPDATE public.hypay_transactions SET detail = concat_ws('; ', detail, :note), last_seen = now()
 WHERE hypay_id = :txn"""

_UNRESOLVED = f"""
SELECT {_COLUMNS} FROM public.refunds
 WHERE status = 'unknown' OR (status = 'attempted' AND updated_at < now() - make_interval(secs => :older))
 ORDER BY created_at"""


def _row(values: list[Any]) -> RefundRow:
    (
        rid,
        pid,
        orig,
        method,
        amount,
        currency,
        status,
        hyp,
        ccode,
        message,
        taken,
        reason,
        admin,
        created,
        updated,
        asked,
    ) = values
    return RefundRow(
        UUID(rid),
        UUID(pid),
        orig,
        Method(method),
        stored_money(amount, currency),
        RefundStatus(status),
        hyp,
        ccode,
        message,
        int(taken),
        reason,
        admin,
        created,
        updated,
        asked if isinstance(asked, dict) else None,
    )


def _asked_otherwise(row: RefundRow, request: dict[str, Any] | None, hypay_id: str | None) -> bool:
    """Whether a request differs from the one the row was made for (as far as a row from before 017, which keeps
    none, tells: the transaction it is for, `hypay_id`)."""
    if row.request is not None:
        return request is not None and row.request != request
    return hypay_id is not None and hypay_id.lstrip("0") != row.original_hypay_id.lstrip("0")


def _before(target: Target, attempted: RefundRow) -> Money | None:
    """What remained before this attempt (the attempted row is already counted in `reserved`); None: unknown."""
    remaining = target.remaining
    return None if remaining is None else Money(remaining.minor + attempted.amount.minor, remaining.currency)


def _money(text: str, currency: Currency) -> Money:
    return stored_money(text, currency)


_UNSETTLED = (RefundStatus.ATTEMPTED, RefundStatus.UNKNOWN)


def _as_journaled(tx: Transaction, hypay_id: str | None) -> str | None:
    """`hypay_id` as the journal holds that number (with or without leading zeros), else as given."""
    if hypay_id is None:
        return None
    held = Journal(tx).spellings(hypay_id)
    return held[0] if held else hypay_id


class RefundsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- before Hyp is asked ------------------------------------------------------------------

    @staticmethod
    def _read(tx: Transaction, refund_id: UUID) -> RefundRow:
        """The refund row. Read once to know which payment to lock, and again after `_target` has locked it: every
        writer of an outcome locks the payment first, so a writer that held the lock meanwhile has committed, and a
        second outcome is never written over the first (nor a conditional update left with no row)."""
        return _row(tx.run(bind(_BY_ID, id=str(refund_id)))[0])

    def _meant(self, tx: Transaction, payment_id: UUID, row: RefundRow) -> str | None:
        """For a row from before 017 (it keeps no request), the transaction a request naming none is for: the one a
        refund of the payment reverses by default ("" when none can be: then not the row's)."""
        if row.request is not None:
            return None
        try:
            return self._target(tx, payment_id, None, None, planning=True).original_hypay_id
        except NotRefundable:
            return ""

    def _target(
        self, tx: Transaction, payment_id: UUID, hypay_id: str | None, me: UUID | None, *, planning: bool = False
    ) -> Target:
        """The locked payment and the transaction a refund reverses. `planning` (a new attempt, before Hyp is asked):
        what may not be refunded is refused (`NotRefundable`). Otherwise (a retry answered from its row, Hyp's answer
        being stored, an operator's finding) nothing is refused: after Hyp was asked, nothing may stand between its
        answer and the database."""
        rows = tx.run(bind(_LOCK_PAYMENT, id=str(payment_id)))
        if not rows:
            raise NoSuchPayment(str(payment_id))
        status, user, amount, currency, paying_id, paid_at, charge_attempted_at, declined_code, granted_by = rows[0]
        payment_currency = Currency(currency)
        if paying_id is not None and protocol.hyp_number(paying_id) is None:
            # The web app wrote something that is no Hyp transaction id (`abc`, ` 12`, `1e3`): never sent to Hyp,
            # never taken for this payment's transaction. The operator names the one to refund, checked as any other.
            if planning and hypay_id is None:
                raise NotRefundable(
                    "the payment's stored Hyp transaction id is not one (1 to 20 ASCII digits): name the transaction"
                    " to refund (hypay_id)"
                )
            paying_id = None
        # The payment's own Id as the journal spells its number, else as Hyp writes it (no leading zero: the web app
        # may have written some): what Hyp is asked about, and what the journal's row and refunds are found by.
        txn = (
            hypay_id or (Journal(tx).as_hyp_writes(paying_id) if paying_id else None) or self._held_one(tx, payment_id)
        )
        journal = tx.run(bind(_JOURNAL_ROW, txn=txn, id=str(payment_id)))
        original: Money | None
        named = unjournaled = unverified = contradicted = False
        if journal:
            (j_amount, j_currency, decision, ccode, first_seen, named, detail, closed_as, closed_by, unverified,
             refund_of, unnamed, contradicted) = journal[0]  # fmt: skip
            if planning and refund_of is not None:
                raise NotRefundable(f"Hyp transaction {txn} is refund {refund_of}'s own: money that went back")
            if planning and closed_as is not None:
                # Refunded through Hyp's portal, as an operator found (services.close_transaction): never again here
                raise NotRefundable(f"Hyp transaction {txn} was closed as {closed_as} by {closed_by}")
            if planning and (ccode != 0 or decision not in ("granted", "review")):
                raise NotRefundable(f"Hyp transaction {txn} is not an approved payment of this payment ({decision})")
            if planning and unnamed and held_while_a_refund_has_no_id(decision, detail):
                # It may be that refund's own transaction: refunding it would undo the customer's refund.
                raise NotRefundable(
                    f"Hyp transaction {txn} may be the own transaction of a refund of this payment whose outcome is"
                    " not confirmed: settle that refund first (POST /admin/refunds/{refund_id}/outcome), then"
                    " refund this one if Hyp's refunds show it is a payment"
                )
            # An amount Hyp's answer gave unreadably is unknown here, not the payment's price (Hyp knows it).
            original = _money(j_amount, Currency(j_currency or payment_currency)) if j_amount is not None else None
            original_at = first_seen
        elif protocol.same_hyp_id(txn, paying_id):
            original, original_at = _money(amount, payment_currency), paid_at  # paid before the journal existed
        elif (
            hypay_id is not None
            and charge_attempted_at is not None
            # in review (its outcome unknown), or failed by an operator (a decline sets Hyp's code)
            and (status == "needs_review" or (status == "failed" and declined_code is None))
            and tx.run(bind(_NAMEABLE, txn=txn, id=str(payment_id)))[0][0]
        ):
            # A saved-card charge whose answer was lost (Hyp never sends a callback for those): the operator names the
            # Id Hyp's transactions show for its Order, and the amount they show (`original_amount`, as for any
            # amount Hyp's answer did not give). Refunded without granting first: it completed nothing.
            original, original_at, unjournaled = None, charge_attempted_at, True
        elif planning:
            raise NotRefundable(f"Hyp transaction {txn} is not a transaction of this payment")
        else:
            # Not refused once Hyp was asked: a transaction the journal does not tie to this payment, its amount unknown
            original, original_at = None, paid_at
        reserved, refunded = tx.run(bind(_SUMS, id=str(payment_id), txn=txn, me=str(me) if me else None))[0]
        price = _money(amount, payment_currency)
        currency = original.currency if original is not None else payment_currency
        return Target(
            payment_id,
            UUID(user),
            status,
            txn,
            original,
            original_at,
            _money(reserved, currency),
            _money(refunded, currency),
            # Only one transaction pays a payment (a refund of another takes no credits): the one the journal holds
            # as granting its credits, whatever the payments row says (the web app writes it); without one (paid
            # before the journal), the payments row's.
            protocol.same_hyp_id(txn, granted_by or paying_id),
            price,
            bool(named),
            unjournaled,
            bool(unverified),
            bool(contradicted),
        )

    @staticmethod
    def _held_one(tx: Transaction, payment_id: UUID) -> str:
        """A refund without `hypay_id` of a payment no transaction paid (in review, or closed): the one approved
        transaction held for a human, when there is exactly one."""
        held = [row[0] for row in tx.run(bind(_HELD, id=str(payment_id)))]
        if not held:
            raise NotRefundable("the payment was never paid through Hyp: there is no transaction to refund")
        if len(held) > 1:
            raise NotRefundable(
                f"Hyp took several payments for it ({', '.join(held)}), none of which completed it: name the one to"
                " refund (hypay_id)"
            )
        return str(held[0])

    def begin(
        self,
        *,
        payment_id: UUID,
        hypay_id: str | None,
        key: str,
        plan: Callable[[Target], Planned],
        request: dict[str, Any] | None = None,
    ) -> Began:
        """Under the payment's lock: the key's row when it exists (a retry: `created` False), else `plan`
        decides (or raises, and nothing is written) and the `attempted` row is inserted (with `request`, what it was
        asked for) and committed."""

        # The row's id is chosen here, once: when the COMMIT's answer is lost and the work runs again, the row
        # it finds with this id is its own (inserted, Hyp not asked yet), not an earlier invocation's attempt.
        attempt = uuid.uuid4()
        mine = {attempt}  # rows this call inserted or took up again

        def work(tx: Transaction) -> Began:
            existing = tx.run(bind(_BY_KEY, key=key))
            row = _row(existing[0]) if existing else None
            if row is not None and row.payment_id != payment_id:
                raise NotRefundable("this Idempotency-Key belongs to a refund of another payment")
            planning = row is None or row.released
            target = self._target(tx, payment_id, row.original_hypay_id if row else hypay_id, None, planning=planning)
            if row is not None and row.id in mine and row.status == RefundStatus.ATTEMPTED:
                return Began(row, target, created=True)  # our own insert, committed before the connection broke
            if row is not None and not row.released:
                return Began(row, target, created=False)
            if row is not None and _asked_otherwise(row, request, hypay_id or self._meant(tx, payment_id, row)):
                # Released (Hyp never asked), its idempotency record deleted with it: the key may be sent again for
                # the same request only. Taken up for another, the row would refund its own transaction (the one the
                # first request named) for a request naming another.
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used for another refund request of this payment; use a new key"
                )
            planned = plan(target)
            if target.unjournaled:
                detail = f"saved-card charge whose answer was lost, named by {planned.admin} for a refund"
                journaled = tx.run(
                    bind(
                        _JOURNAL_NAMED_CHARGE,
                        txn=target.original_hypay_id,
                        id=str(payment_id),
                        detail=detail,
                        status=target.payment_status,
                    )
                )
                if not journaled:
                    raise NotRefundable(f"Hyp transaction {target.original_hypay_id} was journaled meanwhile: retry")
            elif target.journaled_unverified:
                # Its row is written with the attempt, still this payment's and unverified, or the refund is refused: a
                # callback settling it meanwhile (a page payment's, proving the operator named another payment's
                # transaction) either committed first (the row is no longer ours) or finds the row changed when it
                # writes and decides again, seeing this attempt (journal.py, `seen`).
                touched = tx.run(bind(_TOUCH_UNVERIFIED, txn=target.original_hypay_id, id=str(payment_id)))
                if not touched:
                    raise NotRefundable(f"Hyp transaction {target.original_hypay_id} was journaled meanwhile: retry")
            if planned.learned_original is not None:
                tx.run(
                    bind(
                        _LEARN_ORIGINAL,
                        txn=target.original_hypay_id,
                        amount=planned.learned_original.amount,
                        currency=str(planned.learned_original.currency),
                        admin=planned.admin,
                        note=f"amount {planned.learned_original} as read from Hyp by {planned.admin}",
                    )
                )
            method = planned.method
            if row is not None and row.method == Method.REFUND:
                # A released attempt that had become a refund (Hyp refused to cancel it, then was not asked to
                # refund): taken up as a refund, Hyp never asked to cancel it again.
                method = Method.REFUND
            params = {
                "method": str(method),
                "amount": planned.amount.amount,
                "request": json.dumps(request, sort_keys=True) if request is not None else None,
            }
            if row is not None:
                retaken = tx.run(bind(_RETAKE, rid=str(row.id), **params))
                mine.add(row.id)
                return Began(_row(retaken[0]), target, created=True)
            inserted = tx.run(
                bind(
                    _INSERT,
                    rid=str(attempt),
                    id=str(payment_id),
                    txn=target.original_hypay_id,
                    currency=str(planned.amount.currency),
                    reason=planned.reason,
                    key=key,
                    admin=planned.admin,
                    **params,
                )
            )
            return Began(_row(inserted[0]), target, created=True)

        return self.db.atomic(work, retry_on=(UNIQUE_VIOLATION,), read_committed=True)

    def switch_to_refund(self, refund_id: UUID, message: str) -> RefundRow | None:
        """CancelTrans was refused (nothing moved): the same attempted row goes on as a zikoyAPI refund. A transaction
        of its own: its lock wait and time are cut to what the invocation has left (Hyp's answer, stored after the
        call)."""
        sql = bind(_SWITCH, rid=str(refund_id), message=message[:500])
        rows = self.db.atomic(lambda tx: tx.run(sql), read_committed=True)
        if rows:
            return _row(rows[0])
        # `atomic` runs it again when the connection broke at its COMMIT: the first run may have switched it
        current = self.get(refund_id)
        if current is not None and current.status == RefundStatus.ATTEMPTED and current.method == Method.REFUND:
            return current
        return None

    def method_to_send(self, refund_id: UUID, message: str) -> Method:
        """The method an attempted cancellation goes out with, asked right before the call: a zikoyAPI refund (the
        switch recorded, with `message`) when a verified delivery has contradicted its transaction's money since it
        was planned (`_METHOD_TO_SEND`). One statement, safe to send again."""
        rows = self.db.run(bind(_METHOD_TO_SEND, rid=str(refund_id), message=message[:500]))
        return Method(rows[0][0])

    def note_answer(self, refund_id: UUID, message: str) -> bool:
        """Hyp's answer, in words, on a row still attempted (the one statement it takes: no lock on the payment or
        the balance), for when storing the outcome itself failed: a human settles the refund with it. Whether the
        row took it. A transaction of its own: its lock wait and time are cut to what the invocation has left."""
        sql = bind(_NOTE_ANSWER, rid=str(refund_id), message=message[:1000])
        return bool(self.db.atomic(lambda tx: tx.run(sql), read_committed=True))

    # -- after Hyp answered ---------------------------------------------------------------------

    def succeeded(
        self,
        refund_id: UUID,
        *,
        hypay_refund_id: str | None,
        approval_code: str | None,
        audit: Callable[[Transaction, dict[str, Any], dict[str, Any]], None],
        found_by_operator: bool = False,
        settle_seconds: int = 0,
    ) -> Finished:
        """In one transaction: the row, the journal, the credits taken back (never below zero), the audit.
        `found_by_operator`: the outcome is an operator's finding, not Hyp's answer: a `hypay_refund_id` that cannot
        be this refund's own transaction is refused (`NotRefundable`), and so is an attempt not yet older than
        `settle_seconds` (`StillAsking`), under the payment's lock."""
        answered_id = hypay_refund_id

        def work(tx: Transaction) -> Finished:
            current = self._read(tx, refund_id)
            target = self._target(tx, current.payment_id, current.original_hypay_id, current.id)
            current = self._read(tx, refund_id)  # as it is once the payment is ours
            # Hyp's refund transaction as the journal holds that number, if it does (a callback of Hyp's may have
            # reported it first, written with leading zeros): one row per number (sql/014), so the answer is stored on
            # it rather than refused by the unique index after Hyp has refunded.
            hypay_refund_id = _as_journaled(tx, answered_id)
            if found_by_operator and current.status == RefundStatus.ATTEMPTED:
                [[asking]] = tx.run(bind(_ASKING, rid=str(refund_id), settle=settle_seconds))
                if asking:
                    raise StillAsking("the refund may still be asking Hyp")
            if found_by_operator and hypay_refund_id is not None and current.status in _UNSETTLED:
                problem = self._refund_id_problem(tx, current, hypay_refund_id)
                if problem is not None:
                    raise NotRefundable(problem)
            if current.status not in _UNSETTLED:
                # Stored before (retried, or another writer's outcome): as it is. An unknown one is settled by this
                # answer: 'unknown' only meant that Hyp's answer was lost, and here it is.
                return self._finished(current, target, shortfall=0, balance=None)
            granted = taken_before = 0
            if target.pays_the_payment:
                granted, taken_before = tx.run(bind(_GRANTED, id=str(current.payment_id), me=str(current.id)))[0]
            due = credits_to_take(
                granted,
                target.credits_basis.minor,
                target.refunded.minor,
                current.amount.minor,
                free_minor=target.credits_free,
            )
            # Never more than granted in all, whatever the basis of each refund's share was when it was taken (rows
            # written under another rule included).
            due = min(due, max(0, int(granted) - int(taken_before)))
            balance_rows = tx.run(bind(_BALANCE, user=str(target.user_id)))
            balance = int(balance_rows[0][0]) if balance_rows else 0
            taken = max(0, min(due, balance))
            shortfall = due - taken
            message = (
                f"{shortfall} of {due} credits not taken back: the balance held {max(balance, 0)}"
                if shortfall
                else None
            )
            row = _row(
                tx.run(
                    bind(
                        _SUCCEEDED_OUTCOME,
                        rid=str(refund_id),
                        status="succeeded",
                        hyp=hypay_refund_id,
                        ccode=0,
                        message=message,
                        taken=taken,
                    )
                )[0]
            )
            after_balance = balance
            if taken:
                after_balance = int(
                    tx.run(
                        bind(
                            _TAKE_BACK,
                            user=str(target.user_id),
                            taken=taken,
                            id=str(current.payment_id),
                            description=f"Refund of {current.amount} (Hyp {current.original_hypay_id})",
                        )
                    )[0][0]
                )
            detail = f"{row.method} of Hyp transaction {row.original_hypay_id}: {row.reason}"[:1000]
            conflict = None
            if hypay_refund_id:
                journaled = tx.run(
                    bind(
                        _JOURNAL_REFUND,
                        hyp=hypay_refund_id,
                        original=row.original_hypay_id,
                        id=str(current.payment_id),
                        order_ref=str(current.payment_id),
                        amount=current.amount.amount,
                        currency=str(current.amount.currency),
                        detail=detail,
                        previous_status=target.payment_status,
                        acode=approval_code or None,
                    )
                )
                problem = None if journaled else self._refund_id_problem(tx, row, hypay_refund_id)
                if problem is not None:
                    # The journal holds that number as another decision's: written while this one waited on its row (an
                    # operator naming it for another payment at the same moment), or before.
                    if found_by_operator:
                        raise NotRefundable(problem)  # a finding never takes it: refused, nothing of it stored
                    # Hyp's own answer: stored as it is (the money went back), what the journal holds said on the row.
                    conflict = (
                        f"Hyp answered with refund transaction {hypay_refund_id}, but {problem}: compare the two and"
                        " correct the wrong one"
                    )
                    row = _row(tx.run(bind(_NOTE_CONFLICT, rid=str(row.id), note=conflict))[0])
            else:
                tx.run(
                    bind(
                        _JOURNAL_CANCELLED,
                        txn=row.original_hypay_id,
                        note=f"cancelled (CancelTrans) by refund {row.id}",
                    )
                )
            finished = self._finished(row, target, shortfall=shortfall, balance=after_balance, conflict=conflict)
            audit(
                tx,
                {"refunded": str(target.refunded), "remaining": str(_before(target, current)), "balance": balance},
                {
                    "refund_status": str(row.status),
                    "method": str(row.method),  # as sent: a cancellation switched to a refund says so here
                    "refunded": str(finished.refunded),
                    "remaining": str(finished.remaining),
                    "balance": after_balance,
                    "credits_taken": taken,
                    "credits_shortfall": shortfall,
                    "hypay_refund_id": hypay_refund_id,
                },
            )
            return finished

        return self.db.atomic(work, read_committed=True)

    def not_moved_or_unknown(
        self,
        refund_id: UUID,
        *,
        status: RefundStatus,
        ccode: int | None,
        message: str,
        audit: Callable[[Transaction, dict[str, Any], dict[str, Any]], None] | None,
    ) -> RefundRow:
        """refused (Hyp said no, or was never asked), or unknown (the answer was lost), with the audit row."""

        def work(tx: Transaction) -> RefundRow:
            current = self._read(tx, refund_id)
            target = self._target(tx, current.payment_id, current.original_hypay_id, current.id)
            current = self._read(tx, refund_id)  # as it is once the payment is ours
            if current.status != RefundStatus.ATTEMPTED:
                return current
            rows = tx.run(
                bind(
                    _OUTCOME,
                    rid=str(refund_id),
                    status=str(status),
                    hyp=None,
                    ccode=ccode,
                    message=message[:1000],
                    taken=0,
                )
            )
            if not rows:  # changed since it was read (every writer holds the payment's lock: none should): as it is now
                return self._read(tx, refund_id)
            row = _row(rows[0])
            if audit is not None:
                before = _before(target, current)
                after = before if status == RefundStatus.REFUSED else target.remaining  # unknown: still reserved
                audit(
                    tx,
                    {"refunded": str(target.refunded), "remaining": str(before)},
                    {"refund_status": str(status), "refunded": str(target.refunded), "remaining": str(after)},
                )
            return row

        return self.db.atomic(work, read_committed=True)

    @staticmethod
    def _refund_id_problem(tx: Transaction, row: RefundRow, hypay_refund_id: str) -> str | None:
        """Why `hypay_refund_id` cannot be the own transaction of refund `row` (None: it can). A refund's own
        transaction is known nowhere yet, or journaled for this payment as Hyp reported it before the refund's answer
        was stored: unverified, or held for a human because a refund of the payment had no Id (for the refund's
        amount, when known). Never a transaction that paid a payment, one refunded itself, a saved-card charge, one
        decided otherwise (a second charge: money the customer paid), nor another refund's."""
        journaled_for, decision, detail, source, amount, paying, other, refunded = tx.run(
            bind(_REFUND_ID_FACTS, hyp=hypay_refund_id, txn=hypay_refund_id, rid=str(row.id))
        )[0]
        if paying is not None:
            return f"Hyp transaction {hypay_refund_id} paid payment {paying}: it is no refund"
        if other is not None:
            return f"Hyp transaction {hypay_refund_id} is refund {other}'s own"
        if refunded:
            return f"Hyp transaction {hypay_refund_id} was refunded itself: it is a payment, not a refund"
        if decision is None:
            return None
        held = held_while_a_refund_has_no_id(decision, detail)
        if journaled_for != str(row.payment_id) or source == "token_charge" or not (held or decision == "unverified"):
            owner = f"payment {journaled_for}" if journaled_for else "no payment of ours (unmatched)"
            return (
                f"Hyp transaction {hypay_refund_id} is journaled for {owner}, decided {decision}: not a transaction"
                " Hyp reported for a refund of this payment"
            )
        if amount is not None and Decimal(amount) != row.amount.amount:
            return f"Hyp transaction {hypay_refund_id} is of {amount}, this refund of {row.amount.amount}"
        return None

    def not_refunded(
        self,
        refund_id: UUID,
        *,
        message: str,
        settle_seconds: int,
        audit: Callable[[Transaction, dict[str, Any], dict[str, Any]], None],
    ) -> RefundRow | None:
        """An operator's finding that a refund of unknown outcome moved nothing (refused, with the audit row), under
        the payment's lock; None when the row is not unknown (nor an attempt older than `settle_seconds`)."""

        def work(tx: Transaction) -> RefundRow | None:
            current = self._read(tx, refund_id)
            target = self._target(tx, current.payment_id, current.original_hypay_id, current.id)
            rows = tx.run(bind(_NOT_REFUNDED, rid=str(refund_id), message=message[:1000], settle=settle_seconds))
            if not rows:
                return None
            before = target.remaining
            after = Money(before.minor + current.amount.minor, before.currency) if before is not None else None
            audit(
                tx,
                {"refund_status": str(current.status), "remaining": str(before)},
                {"refund_status": str(RefundStatus.REFUSED), "remaining": str(after)},
            )
            return _row(rows[0])

        return self.db.atomic(work, read_committed=True)

    def _finished(
        self, row: RefundRow, target: Target, *, shortfall: int, balance: int | None, conflict: str | None = None
    ) -> Finished:
        refunded = target.refunded
        if row.status == RefundStatus.SUCCEEDED:
            refunded = Money(refunded.minor + row.amount.minor, refunded.currency)
        return Finished(row, shortfall, balance, refunded, target.remaining, conflict)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, refund_id: UUID) -> RefundRow | None:
        rows = self.db.run(bind(_BY_ID, id=str(refund_id)))
        return _row(rows[0]) if rows else None

    def unresolved(self, *, older_than_seconds: int = 300) -> list[RefundRow]:
        """For the review queue: refunds whose outcome is unknown, or attempted and never finished."""
        return [_row(r) for r in self.db.run(bind(_UNRESOLVED, older=older_than_seconds))]


__all__ = [
    "NOT_SENT",
    "Began",
    "Finished",
    "NoSuchPayment",
    "NotRefundable",
    "Planned",
    "RefundRow",
    "RefundsStore",
    "Target",
]

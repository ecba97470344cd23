"""Completing a paid payment: the one code path that grants credits (callback and saved-card charges).

Everything happens in ONE statement (so one transaction): the payment goes `pending` ->
`completed` only if it is still pending and the amount and currency are exactly what it asked for;
the purchase row is written, the profile's credits increase and the invoice is recorded. Unique
constraints (one Hyp transaction per payment, one purchase per payment, one invoice per payment)
are the last line of defence: however often or concurrently the same completion arrives, credits
are granted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from payments.adapters.db import Database, QueryError, bind
from payments.adapters.payments_store import PaymentsStore, is_unique_violation
from payments.domain.money import Currency, Money
from payments.domain.payment import PaymentStatus


class Outcome(StrEnum):
    COMPLETED = "completed"  # this call granted the credits
    ALREADY_COMPLETED = "already_completed"  # an earlier delivery of the same transaction did
    AMOUNT_MISMATCH = "amount_mismatch"  # nothing granted; the payment is flagged for review
    DUPLICATE_TRANSACTION = "duplicate_transaction"  # the Hyp transaction already paid another payment
    NOT_PENDING = "not_pending"  # failed, expired or under review: nothing granted
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Completion:
    outcome: Outcome
    payment_id: UUID
    user_id: UUID | None = None
    credits_granted: int = 0
    balance: int | None = None
    save_card: bool = False  # the buyer asked to keep the card: a token is fetched after success


_COMPLETE = """
WITH paid AS (
    UPDATE public.payments p
       SET status = 'completed', hypay_transaction_id = :txn, hypay_ccode = 0, hypay_approval_code = :acode,
           completed_at = now(), updated_at = now()
     WHERE p.id = :id::uuid AND p.status = 'pending' AND p.amount = :amount::numeric AND p.currency = :currency
    RETURNING p.id, p.user_id, p.amount, p.save_card,
              COALESCE(p.credits,
                       (SELECT k.credits FROM public.credit_packs k WHERE k.id = p.credit_pack_id)) AS credits,
              (SELECT k.name FROM public.credit_packs k WHERE k.id = p.credit_pack_id) AS pack_name
), granted AS (
    INSERT INTO public.credit_transactions (user_id, amount, type, description, payment_id)
    SELECT user_id, credits, 'purchase', COALESCE(pack_name, 'Credit pack'), id FROM paid WHERE credits > 0
    RETURNING user_id, amount
), credited AS (
    UPDATE public.profiles u SET credits = u.credits + g.amount, updated_at = now()
      FROM granted g WHERE u.id = g.user_id
    RETURNING u.credits
), invoiced AS (
    INSERT INTO public.invoices (user_id, payment_id, invoice_number, amount)
    SELECT user_id, id, :invoice, amount FROM paid WHERE :invoice::text IS NOT NULL
    RETURNING 1
)
SELECT (SELECT user_id::text FROM paid), (SELECT amount FROM granted), (SELECT credits FROM credited),
       (SELECT save_card FROM paid)"""

_DIAGNOSE = """
SELECT p.status, p.amount::text, p.currency, p.hypay_transaction_id, p.user_id::text,
       EXISTS (SELECT 1 FROM public.payments o WHERE o.hypay_transaction_id = :txn AND o.id <> p.id)
  FROM public.payments p WHERE p.id = :id::uuid"""


def complete_payment(
    db: Database,
    *,
    payment_id: UUID,
    transaction_id: str,
    amount: Money,
    approval_code: str | None = None,
    invoice_number: str | None = None,
) -> Completion:
    """Complete `payment_id` as paid by Hyp transaction `transaction_id` for exactly `amount`."""
    params = {
        "id": str(payment_id),
        "txn": transaction_id,
        "acode": approval_code or None,
        "amount": amount.amount,
        "currency": str(amount.currency),
        "invoice": invoice_number or None,
    }
    try:
        user, granted, balance, save_card = db.run(bind(_COMPLETE, **params))[0]
    except QueryError as exc:
        if not is_unique_violation(exc):
            raise
        user = None  # a constraint stopped a second grant or a reused transaction id: nothing was written
    if user is not None:
        return Completion(Outcome.COMPLETED, payment_id, UUID(user), int(granted or 0), balance, bool(save_card))
    return _why_not(db, payment_id, transaction_id, amount)


def _why_not(db: Database, payment_id: UUID, transaction_id: str, amount: Money) -> Completion:
    rows = db.run(bind(_DIAGNOSE, id=str(payment_id), txn=transaction_id))
    if not rows:
        return Completion(Outcome.NOT_FOUND, payment_id)
    status, stored_amount, currency, stored_txn, user, used_elsewhere = rows[0]
    user_id = UUID(user)
    if status == "completed" and stored_txn == transaction_id:
        return Completion(Outcome.ALREADY_COMPLETED, payment_id, user_id)
    if used_elsewhere:
        return Completion(Outcome.DUPLICATE_TRANSACTION, payment_id, user_id)
    if status == "pending" and Money.of(Decimal(stored_amount), Currency(currency)) != amount:
        PaymentsStore(db).flag_for_review(
            payment_id,
            f"amount mismatch: Hyp transaction {transaction_id} paid {amount}, expected {stored_amount} {currency}",
            status=PaymentStatus.NEEDS_REVIEW,
        )
        return Completion(Outcome.AMOUNT_MISMATCH, payment_id, user_id)
    return Completion(Outcome.NOT_PENDING, payment_id, user_id)

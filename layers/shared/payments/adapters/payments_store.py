"""SQL for payments, packs, profiles, saved cards and rate limits. One statement per state change (a saved-card
charge's mark: one transaction, under the user's lock)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

from payments.adapters.db import Database, QueryError, Transaction, bind, stored_money
from payments.domain.money import Money
from payments.domain.payment import PaymentStatus
from payments.records import Record

if TYPE_CHECKING:
    from payments.adapters.journal import HypTransaction

UNIQUE_VIOLATION = "23505"
# The advisory lock (first key) under which a user's saved-card charges are marked one at a time; arbitrary, constant.
_CHARGE_LOCK = 1_213_223_251
# A payment whose saved-card charge has no stored outcome while it is in one of these (asked of Hyp now; its answer
# lost and sent to review): a charge may exist.
_UNSETTLED = "('pending', 'needs_review')"


class ChargeMark(StrEnum):
    MARKED = "marked"
    HELD = "held"  # another attempt holds the payment, or it is no longer pending
    ANOTHER_UNSETTLED = "another_unsettled"  # another payment of the user has a charge with no stored outcome


class Pack(Record):
    id: UUID
    name: str
    credits: int
    price: Money
    active: bool


class Profile(Record):
    id: UUID
    email: str | None
    full_name: str | None
    credits: int = 0  # the balance when read


class Payment(Record):
    id: UUID
    user_id: UUID
    status: PaymentStatus
    amount: Money
    credits: int | None
    credit_pack_id: UUID | None
    payment_url: str | None
    hypay_transaction_id: str | None
    save_card: bool


class OpenedPayment(Record):
    """The payment behind an Idempotency-Key: new, or what an earlier attempt left."""

    id: UUID
    created: bool
    status: PaymentStatus
    payment_url: str | None
    charge_attempt_id: UUID | None
    ccode: int | None
    message: str | None
    credit_pack_id: UUID | None
    save_card: bool
    amount: Money  # what the payment asks: an interrupted attempt is finished at this price, whatever the pack says now
    credits: int | None


# An existing payment as `OpenedPayment` reads it (`created` false).
_OPENED = (
    "id::text, false, status, payment_url, charge_attempt_id::text, hypay_ccode, hypay_message, credit_pack_id::text,"
    " save_card, amount::text, currency, credits"
)


class SavedCard(Record):
    """A user's saved card (Hyp's token of it). The token never shows in a repr."""

    _hidden = frozenset({"token"})
    token: str
    expiry_month: int
    expiry_year: int
    last4: str | None


_PAYMENT_COLUMNS = (
    "p.id::text, p.user_id::text, p.status, p.amount::text, p.currency, p.credits, p.credit_pack_id::text,"
    " p.payment_url, p.hypay_transaction_id, p.save_card"
)


def _payment(row: list[Any]) -> Payment:
    pid, user, status, amount, currency, credits, pack, url, txn, save_card = row
    return Payment(
        UUID(pid),
        UUID(user),
        PaymentStatus.from_db(status),
        stored_money(amount, currency),
        credits,
        UUID(pack) if pack else None,
        url,
        txn,
        bool(save_card),
    )


def _opened(row: list[Any]) -> OpenedPayment:
    pid, created, status, url, attempt, ccode, message, pack_id, saved, amount, currency, credits = row
    return OpenedPayment(
        UUID(pid),
        bool(created),
        PaymentStatus.from_db(status),
        url,
        UUID(attempt) if attempt else None,
        ccode,
        message,
        UUID(pack_id) if pack_id else None,
        bool(saved),
        stored_money(amount, currency),
        credits,
    )


class PaymentsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def pack_and_profile(self, pack_id: UUID, user_id: UUID) -> tuple[Pack | None, Profile | None]:
        """Both in one round trip: the pack (whatever its state) and the buyer's profile."""
        rows = self.db.run(
            bind(
                """
            SELECT k.id::text, k.name, k.credits, k.price::text, k.is_active, u.id::text, u.email, u.full_name,
                   u.credits
              FROM (SELECT 1) one
              LEFT JOIN public.credit_packs k ON k.id = :pack::uuid
              LEFT JOIN public.profiles u ON u.id = :user::uuid""",
                pack=str(pack_id),
                user=str(user_id),
            )
        )
        kid, name, credits, price, active, uid, email, full_name, balance = rows[0]
        # A price that is not a number (numeric holds 'NaN') is no price: read as 0, a pack not sold (409, as a price of
        # 0), never the buyer's bad request
        amount = Decimal(price) if kid else Decimal(0)
        price_of = Money.of(amount if amount.is_finite() else Decimal(0))
        pack = Pack(UUID(kid), name, int(credits), price_of, bool(active)) if kid else None
        profile = Profile(UUID(uid), email, full_name, int(balance or 0)) if uid else None
        return pack, profile

    def open_pending(self, *, user_id: UUID, pack: Pack, idempotency_key: str, save_card: bool) -> OpenedPayment | None:
        """Insert the pending payment, or find the one an earlier attempt with this key left (whatever
        became of it: a page sent, a charge attempted, paid). None only when the key is another user's."""
        rows = self.db.run(
            bind(
                """
            WITH inserted AS (
                INSERT INTO public.payments (user_id, credit_pack_id, amount, currency, credits, status,
                                             idempotency_key, save_card)
                VALUES (:user::uuid, :pack::uuid, :amount::numeric, :currency, :credits, 'pending', :key, :save)
                ON CONFLICT (idempotency_key) DO NOTHING
                RETURNING id
            )
            SELECT id::text, true, 'pending', NULL, NULL, NULL, NULL, :pack, :save, :amount::numeric::text,
                   :currency, :credits
              FROM inserted
            UNION ALL
            SELECT id::text, false, status, payment_url, charge_attempt_id::text, hypay_ccode, hypay_message,
                   credit_pack_id::text, save_card, amount::text, currency, credits
              FROM public.payments
             WHERE idempotency_key = :key AND user_id = :user::uuid AND NOT EXISTS (SELECT 1 FROM inserted)""",
                user=str(user_id),
                pack=str(pack.id),
                amount=pack.price.amount,
                currency=str(pack.price.currency),
                credits=pack.credits,
                key=idempotency_key,
                save=save_card,
            )
        )
        return _opened(rows[0]) if rows else None

    def mark_charge_attempt(self, payment_id: UUID, attempt_id: UUID) -> ChargeMark:
        """Before asking Hyp to charge: durably mark the attempt. `HELD` when another attempt holds the payment (or
        it is no longer pending); `ANOTHER_UNSETTLED` when another payment of the same user has a saved-card charge
        whose outcome is not stored (asked of Hyp right now, or its answer lost and a human checking it): a user's
        card is charged by one payment at a time, so a purchase retried with a new key while the first one's
        outcome is unknown never charges the card a second time. The user's charges are marked one at a time (a
        transaction-scoped advisory lock on the user), and the mark is decided by a statement sent after the lock
        is held, whose snapshot sees every mark committed before. Resending after a lost answer (the transaction
        runs again) finds our own mark."""

        def mark(tx: Transaction) -> ChargeMark:
            locked = tx.run(
                bind(
                    f"SELECT pg_advisory_xact_lock({_CHARGE_LOCK}, hashtext(user_id::text)) FROM public.payments"
                    " WHERE id = :id::uuid",
                    id=str(payment_id),
                )
            )
            if not locked:
                return ChargeMark.HELD
            rows = tx.run(
                bind(
                    "WITH this AS (SELECT id, user_id, status = 'pending'"
                    " AND (charge_attempt_id IS NULL OR charge_attempt_id = :a::uuid) AS markable"
                    " FROM public.payments WHERE id = :id::uuid),"
                    " other AS (SELECT EXISTS (SELECT 1 FROM public.payments o, this WHERE o.user_id = this.user_id"
                    f" AND o.id <> this.id AND o.charge_attempt_id IS NOT NULL AND o.status IN {_UNSETTLED})"
                    " AS unsettled),"
                    # The payment's own conditions on the row itself, so that a change committed meanwhile (the
                    # cleanup expiring it) is seen when the row's lock is granted (READ COMMITTED rechecks them).
                    " marked AS (UPDATE public.payments p SET charge_attempt_id = :a::uuid,"
                    " charge_attempted_at = now(), updated_at = now() FROM other WHERE p.id = :id::uuid"
                    " AND p.status = 'pending' AND (p.charge_attempt_id IS NULL OR p.charge_attempt_id = :a::uuid)"
                    " AND NOT other.unsettled RETURNING 1)"
                    " SELECT this.markable, other.unsettled, EXISTS (SELECT 1 FROM marked) FROM this, other",
                    a=str(attempt_id),
                    id=str(payment_id),
                )
            )
            markable, unsettled, marked = rows[0] if rows else (False, False, False)
            if marked:
                return ChargeMark.MARKED
            return ChargeMark.ANOTHER_UNSETTLED if markable and unsettled else ChargeMark.HELD

        # READ COMMITTED whatever the database's default isolation: under REPEATABLE READ or SERIALIZABLE the
        # deciding statement's snapshot would be the lock statement's, taken before it waited, blind to the mark the
        # lock's holder committed. (The user's lock serializes the marks.)
        return self.db.atomic(mark, read_committed=True)

    def charge_unsettled(self, user_id: UUID, idempotency_key: str) -> bool:
        """Whether another payment of the user than the one of this (scoped) key has a saved-card charge with no
        stored outcome: the read-only check before anything is written (the mark decides, under the user's lock)."""
        rows = self.db.run(
            bind(
                "SELECT EXISTS (SELECT 1 FROM public.payments"
                " WHERE user_id = :u::uuid AND charge_attempt_id IS NOT NULL"
                f" AND status IN {_UNSETTLED} AND idempotency_key IS DISTINCT FROM :k)",
                u=str(user_id),
                k=idempotency_key,
            )
        )
        return bool(rows[0][0])

    def release_charge_attempt(self, payment_id: UUID, attempt_id: UUID) -> None:
        """Hyp certainly did not charge (our credentials were refused): a retry may try again."""
        self.db.run(
            bind(
                "UPDATE public.payments SET charge_attempt_id = NULL, charge_attempted_at = NULL, updated_at = now()"
                " WHERE id = :id::uuid AND status = 'pending' AND charge_attempt_id = :a::uuid",
                a=str(attempt_id),
                id=str(payment_id),
            )
        )

    def by_key(self, user_id: UUID, idempotency_key: str) -> OpenedPayment | None:
        """The user's payment an earlier attempt with this (scoped) key left, if any."""
        rows = self.db.run(
            bind(
                f"SELECT {_OPENED} FROM public.payments WHERE idempotency_key = :key AND user_id = :user::uuid",
                key=idempotency_key,
                user=str(user_id),
            )
        )
        return _opened(rows[0]) if rows else None

    def charge_state(self, payment_id: UUID) -> OpenedPayment | None:
        rows = self.db.run(
            bind(
                f"SELECT {_OPENED} FROM public.payments WHERE id = :id::uuid",
                id=str(payment_id),
            )
        )
        return _opened(rows[0]) if rows else None

    def set_payment_url(self, payment_id: UUID, url: str) -> None:
        self.db.run(
            bind(
                "UPDATE public.payments SET payment_url = :url, updated_at = now()"
                " WHERE id = :id::uuid AND status = 'pending'",
                url=url,
                id=str(payment_id),
            )
        )

    def get_for_owner(self, payment_id: UUID, user_id: UUID) -> Payment | None:
        rows = self.db.run(
            bind(
                f"SELECT {_PAYMENT_COLUMNS} FROM public.payments p WHERE p.id = :id::uuid AND p.user_id = :user::uuid",
                id=str(payment_id),
                user=str(user_id),
            )
        )
        return _payment(rows[0]) if rows else None

    def get(self, payment_id: UUID) -> Payment | None:
        rows = self.db.run(
            bind(f"SELECT {_PAYMENT_COLUMNS} FROM public.payments p WHERE p.id = :id::uuid", id=str(payment_id))
        )
        return _payment(rows[0]) if rows else None

    def mark_failed(self, payment_id: UUID, *, ccode: int | None, message: str | None) -> bool:
        """pending -> failed with Hyp's code and message; False when it was not pending any more. A transaction of its
        own: its lock wait and time are cut to what the invocation has left (Hyp's answer, stored after the call)."""
        sql = bind(
            "UPDATE public.payments SET status = 'failed', hypay_ccode = :ccode, hypay_message = :message,"
            " updated_at = now() WHERE id = :id::uuid AND status = 'pending' RETURNING 1",
            ccode=ccode,
            message=message,
            id=str(payment_id),
        )
        return bool(self.db.atomic(lambda tx: tx.run(sql), read_committed=True))

    def flag_for_review(self, payment_id: UUID, reason: str, *, journaled: HypTransaction | None = None) -> bool:
        """A pending payment goes to needs_review, saying why. False when it was not pending any more. A transaction of
        its own: its lock wait and time are cut to what the invocation has left (a fallback after Hyp answered).

        `journaled`: the Hyp transaction that paid it (a charge Hyp approved whose settlement did not pass), written
        to the journal with it, decided `review` (the payment's row alone is not a record of the transaction: the
        journal's is what the queue lists, what an operator completes with, and what holds its invoice)."""
        sql = bind(
            "UPDATE public.payments SET review_reason = :reason, status = 'needs_review',"
            " updated_at = now() WHERE id = :id::uuid AND status = 'pending' RETURNING 1",
            reason=reason,
            id=str(payment_id),
        )

        def flag(tx: Transaction) -> bool:
            flagged = bool(tx.run(sql))
            if journaled is not None:
                from payments.adapters.journal import Action, Journal, Verdict  # a fallback's: off the cold start

                Journal(tx).apply(
                    journaled,
                    action=Action.NONE,
                    verdict=Verdict.REVIEW,
                    detail=reason,
                    previous_status=PaymentStatus.PENDING,
                )
            return flagged

        return self.db.atomic(flag, read_committed=True)

    def saved_card(self, user_id: UUID) -> SavedCard | None:
        rows = self.db.run(
            bind(
                "SELECT token, expiry_month, expiry_year, last4 FROM public.saved_cards WHERE user_id = :user::uuid",
                user=str(user_id),
            )
        )
        return SavedCard(rows[0][0], int(rows[0][1]), int(rows[0][2]), rows[0][3]) if rows else None

    def card_owed(self, payment_id: UUID, hypay_id: str, last4: str | None = None) -> bool:
        """The payment, completed by Hyp transaction `hypay_id`, was bought with "keep my card", and the user's
        saved card is neither from it nor from a payment completed after it (a newer card is never replaced by an
        older one); or it is from it, saved without its last four digits, which `last4` (a delivery VERIFY confirmed)
        now gives. Payments are compared by when they completed, never by when a card happened to be written."""
        rows = self.db.run(
            bind(
                """
            SELECT p.save_card AND p.status = 'completed' AND ltrim(p.hypay_transaction_id, '0') = ltrim(:hyp, '0')
                   AND p.completed_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM public.saved_cards c
                                     LEFT JOIN public.payments q ON q.id = c.payment_id
                                    WHERE c.user_id = p.user_id
                                      AND ((c.payment_id = p.id AND (c.last4 IS NOT NULL OR :last4::text IS NULL))
                                           OR q.completed_at > p.completed_at))
              FROM public.payments p WHERE p.id = :payment::uuid""",
                payment=str(payment_id),
                hyp=hypay_id,
                last4=last4,
            )
        )
        return bool(rows and rows[0][0])

    def save_card(
        self, *, user_id: UUID, payment_id: UUID, token: str, expiry_month: int, expiry_year: int, last4: str | None
    ) -> None:
        """One saved card per user: the card of the payment completed last. A card from a payment that completed
        earlier than the saved one's (a slow getToken, a late redelivery) never replaces it.

        The token is sent as a parameter, never in the statement's text: the server logs the text of a statement
        that fails (a constraint, a timeout), and its log is exported (CloudWatch Logs on RDS)."""
        values = {
            "user": str(user_id),
            "token": token,
            "month": expiry_month,
            "year": expiry_year,
            "last4": last4,
            "payment": str(payment_id),
        }
        self.db.atomic(lambda tx: tx.run_with_parameters(_SAVE_CARD, **values), read_committed=True)

    def hit_rate_limit(self, bucket: str, window_seconds: int, request: str, *, limit: int) -> tuple[int, int]:
        """Count `request` in the current fixed window, unless the window already holds `limit` requests (one
        atomic statement, the database's clock): a refused request writes nothing.

        Safe to send twice (Database.run resends after a dropped connection): the same request as the window's
        last one is not counted again. Returns (requests in this window with this one: more than `limit` when it
        is refused, seconds until the window ends).
        """
        rows = self.db.run(
            bind(
                """
            WITH w AS (SELECT to_timestamp(floor(extract(epoch FROM now()) / :w) * :w) AS start),
            hit AS (
                INSERT INTO public.rate_limits AS r (bucket, window_start, count, last_request)
                SELECT :bucket, w.start, 1, :request FROM w
                ON CONFLICT (bucket, window_start) DO UPDATE
                   SET count = r.count + (r.last_request IS DISTINCT FROM EXCLUDED.last_request)::int,
                       last_request = EXCLUDED.last_request
                 WHERE r.count < :limit OR r.last_request IS NOT DISTINCT FROM EXCLUDED.last_request
                RETURNING count)
            SELECT COALESCE((SELECT count FROM hit), :limit + 1),
                   GREATEST(1, ceil(extract(epoch FROM w.start) + :w - extract(epoch FROM now())))::int
              FROM w""",
                bucket=bucket,
                w=window_seconds,
                request=request,
                limit=limit,
            )
        )
        return int(rows[0][0]), int(rows[0][1])


def is_unique_violation(exc: QueryError) -> bool:
    return exc.sqlstate == UNIQUE_VIOLATION


_SAVE_CARD = """
INSERT INTO public.saved_cards AS c (user_id, token, expiry_month, expiry_year, last4, payment_id)
VALUES (CAST(:user AS uuid), :token, :month, :year, :last4, CAST(:payment AS uuid))
ON CONFLICT (user_id) DO UPDATE SET token = EXCLUDED.token, expiry_month = EXCLUDED.expiry_month,
    expiry_year = EXCLUDED.expiry_year,
    -- the same payment's card again: its last four digits are never taken back (a delivery trusted less than the one
    -- that saved them, settled on its Sign alone, has none)
    last4 = CASE WHEN c.payment_id = EXCLUDED.payment_id THEN COALESCE(EXCLUDED.last4, c.last4) ELSE EXCLUDED.last4 END,
    payment_id = EXCLUDED.payment_id,
    updated_at = now()
 WHERE NOT EXISTS (
    SELECT 1 FROM public.payments saved, public.payments incoming
     WHERE saved.id = c.payment_id AND incoming.id = EXCLUDED.payment_id
       AND saved.completed_at > COALESCE(incoming.completed_at, '-infinity'::timestamptz))"""

__all__ = ["OpenedPayment", "Pack", "Payment", "PaymentsStore", "Profile", "SavedCard", "is_unique_violation"]

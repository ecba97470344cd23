"""SQL of the Hyp journal (`hypay_transactions`) and of settling a transaction against its payment.

Settling is one transaction of two statements: `facts()` locks the payment (`FOR UPDATE`) and reads
what a decision needs, including the journal's row for the Hyp `Id`; `apply()` changes the payment
as decided (grant, fail, review, or nothing) and writes the journal row in the same statement. A
concurrent settlement of the same payment waits on the lock and then reads the payment as the first
one left it, but not the first one's journal row (the statement's snapshot predates it): its write
says the row existed (`Applied.existed`), and the settlement is decided again on it. The unique
indexes on `payments.hypay_transaction_id` and on one purchase per payment stop anything else.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from payments.adapters.db import Rows, bind, stored_money
from payments.domain.money import Money
from payments.domain.payment import PaymentStatus
from payments.records import Record


class Runner(Protocol):
    def run(self, sql: str) -> Rows: ...


class Source(StrEnum):
    REDIRECT = "redirect"
    NOTIFY = "notify"
    TOKEN_CHARGE = "token_charge"


class Verdict(StrEnum):
    """What was decided about a Hyp transaction (the journal's `decision`)."""

    GRANTED = "granted"
    DUPLICATE = "duplicate"
    DECLINED = "declined"
    REVIEW = "review"
    UNMATCHED = "unmatched"
    UNVERIFIED = "unverified"
    REFUNDED = "refunded"  # the row of a refund's own Hyp transaction (sql/007): never a charge


class Action(StrEnum):
    """What settling does to the payment."""

    NONE = "none"
    GRANT = "grant"
    BIND = "bind"  # an operator's complete of a payment whose credits were granted before (by the web app): no grant
    FAIL = "fail"
    REVIEW = "review"


class HypTransaction(Record):
    """A Hyp transaction as the backend learned of it. No card data."""

    hypay_id: str
    order_ref: str
    payment_id: UUID | None
    ccode: int
    amount: Money | None
    source: Source
    verified: bool
    approval_code: str | None = None
    invoice_number: str | None = None
    message: str | None = None  # Hyp's errMsg (redacted), for a decline
    currency_known: bool = True  # False: its Coin is not a currency we sell in (the amount's currency is a stand-in)


class JournalEntry(Record):
    decision: Verdict
    payment_id: UUID | None
    verified: bool
    source: str | None = None  # how the journal learned of it (a Source, or 'refund')
    ccode: int | None = None  # what the journaled delivery said
    amount: Decimal | None = None
    currency: str | None = None  # None: a currency we do not sell in, or not read
    # The row's version when read (its xmin): the write that follows changes it only if no one else did meanwhile.
    version: str | None = None
    # An operator closed it as refunded through Hyp's portal (`services.close_transaction`): its money went back.
    closed_as: str | None = None
    # The Id as the row spells it (the transaction's number is one row, however a delivery spells it).
    hypay_id: str | None = None


class PaymentFacts(Record):
    """The locked payment, as a decision needs it, and the journal's row for the transaction."""

    status: PaymentStatus
    amount: Money
    user_id: UUID
    hypay_transaction_id: str | None
    granted_before: bool  # a purchase row exists for this payment
    transaction_used_elsewhere: bool  # another payment holds this Hyp Id
    # The largest refund of this payment whose own Hyp transaction is not named yet (asked, its outcome unknown, or
    # done without its Id), None without one: an approved transaction new to the journal, of no more than that,
    # may be that refund's own.
    largest_unnamed_refund: Decimal | None = None
    # A refund of another payment that sent this transaction's money back, or may have (attempted, succeeded, its
    # outcome unknown): an operator named it as that payment's lost saved-card charge. None without one.
    refunded_by_another: UUID | None = None
    # The credits it sold (SOLD_CREDITS), read under the payment's lock: what a grant gives (passed to it, never read
    # again: the catalogue may change meanwhile). None when not known.
    credits_sold: int | None = None

    @property
    def credits_known(self) -> bool:
        """What it sold is known, and is some credits."""
        return self.credits_sold is not None and self.credits_sold > 0


class Applied(Record):
    """What `apply` changed."""

    # The decision the journal holds now (an earlier verified one is never overwritten); None when the row changed
    # since it was read (`seen`) and was left as it is: the caller decides again.
    journaled: Verdict | None
    user_id: UUID | None = None
    credits_granted: int = 0
    save_card: bool = False
    existed: bool = False  # the journal already had a row for the transaction (this statement updated it)


# The transaction is read by its number, whatever the spelling of the delivery's Id: every spelling of the number (at
# most 20 digits) is looked up by the journal's key and the payments' unique Id, whatever became of sql/014's index.
# A delivery spelling it with more or fewer leading zeros than its journal row is decided as the same transaction
# (`hypay_id` answers the row's spelling, which the decision's writes then use), never a second row; another payment
# holding the number in any spelling holds this transaction. A journal adopted with one number in two spellings
# (ops/migrate.py leaves the later row out of the index, for a human to settle) answers one row, the delivery's own
# spelling first, else the first seen (as `Journal.spellings` orders them). SPELLINGS: every spelling of `:txn`'s
# number, for `IN`.
SPELLINGS = """(SELECT repeat('0', z) || ltrim(:txn, '0') FROM generate_series(0, 20 - length(ltrim(:txn, '0'))) z)"""
# The credits payment `p` sold: those it recorded when it was priced (`payments.credits`). A payment the web app wrote
# without them (NULL) sold its pack's credits, read from the catalogue only while the pack still sells at the price the
# payment asked (the catalogue's prices are in shekels): repriced since (ten times the credits at ten times the price,
# say), what the catalogue says is not what was paid for. (Other credits at the same price are what the catalogue sells
# for that price: granted.) NULL when not known, 0 when the pack sells none: a callback then grants nothing (a human
# decides), an operator cannot complete it.
SOLD_CREDITS = """COALESCE(p.credits, (SELECT k.credits FROM public.credit_packs k
                             WHERE k.id = p.credit_pack_id AND k.price = p.amount AND p.currency = 'ILS'))"""

# The journal's row for a Hyp Id alone (`_FACTS`'s `j`): what a kept callback is compared with.
_ENTRY = f"""
SELECT decision, payment_id::text, verified, source, ccode, amount::text, currency, xmin::text, closed_as, hypay_id
  FROM public.hypay_transactions
 WHERE hypay_id IN {SPELLINGS}
 ORDER BY hypay_id = :txn DESC, first_seen, hypay_id
 LIMIT 1"""

_FACTS = f"""
WITH j AS (
    SELECT decision, payment_id::text AS payment_id, verified, source, ccode, amount::text AS amount, currency,
           xmin::text AS version, closed_as, hypay_id
      FROM public.hypay_transactions
     WHERE hypay_id IN {SPELLINGS}
     ORDER BY hypay_id = :txn DESC, first_seen, hypay_id
     LIMIT 1
), p AS (
    SELECT p.status, p.amount::text AS amount, p.currency, p.user_id::text AS user_id, p.hypay_transaction_id,
           EXISTS (SELECT 1 FROM public.credit_transactions c WHERE c.payment_id = p.id AND c.type = 'purchase')
               AS granted_before,
           EXISTS (SELECT 1 FROM public.payments o WHERE o.hypay_transaction_id IN {SPELLINGS} AND o.id <> p.id)
               AS used_elsewhere,
           (SELECT max(r.amount)::text FROM public.refunds r
             WHERE r.payment_id = p.id AND r.method = 'refund'
               AND (r.status IN ('attempted', 'unknown')
                    OR (r.status = 'succeeded' AND r.hypay_refund_id IS NULL))) AS unnamed_refund,
           (SELECT r.id::text FROM public.refunds r
             WHERE ltrim(r.original_hypay_id, '0') = ltrim(:txn, '0') AND r.payment_id <> p.id
               AND r.status IN ('attempted', 'succeeded', 'unknown')
             ORDER BY r.created_at LIMIT 1) AS refunded_by_another,
           {SOLD_CREDITS} AS credits_sold
      FROM public.payments p WHERE p.id = :id::uuid FOR UPDATE
)
SELECT p.status, p.amount, p.currency, p.user_id, p.hypay_transaction_id, p.granted_before, p.used_elsewhere,
       p.unnamed_refund, p.refunded_by_another, p.credits_sold, j.decision, j.payment_id, j.verified, j.source,
       j.ccode, j.amount, j.currency, j.version, j.closed_as, j.hypay_id
  FROM (SELECT 1) one LEFT JOIN p ON true LEFT JOIN j ON true"""

# The journal row, inserted, or on a later delivery touched (last_seen, deliveries). Overwritten only by
# a verified transaction over an unverified row, or when the decision says so (`:override`: an
# approval arriving after Hyp declined the same Id, an operator's complete naming the Id): never, then, a row of another
# payment's (verified or not: a refund's naming of a lost charge's Id journals it unverified) or a refund's own
# transaction, whatever the caller read before (another decision may have journaled the Id since: the statement then
# answers `duplicate`, and the caller decides again). Unverified never overwrites anything.
_FOREIGN = "(t.source = 'refund' OR (t.payment_id IS NOT NULL AND t.payment_id IS DISTINCT FROM EXCLUDED.payment_id))"
_KEEP = f"((:override AND {_FOREIGN}) OR NOT ((NOT t.verified AND EXCLUDED.verified) OR :override))"
_JOURNAL = (
    (
        """
journal AS (
    INSERT INTO public.hypay_transactions AS t
        (hypay_id, payment_id, order_ref, ccode, amount, currency, source, verified, decision, detail,
         previous_status, approval_code, raw_callback, invoice_number)
    VALUES (:txn, :id::uuid, :order_ref, :ccode, :amount::numeric, :currency, :source, :verified, :decision,
            :detail, :previous_status, :acode, :raw, :numbered)
    ON CONFLICT (hypay_id) DO UPDATE SET
        last_seen = now(), deliveries = t.deliveries + 1,
        contradictions = t.contradictions + CASE WHEN :contradiction::text IS NULL THEN 0 ELSE 1 END,
        last_contradiction = COALESCE(:contradiction, t.last_contradiction),
        last_contradiction_at = CASE WHEN :contradiction::text IS NULL THEN t.last_contradiction_at ELSE now() END,
        payment_id = CASE WHEN {keep} THEN t.payment_id ELSE EXCLUDED.payment_id END,
        order_ref = CASE WHEN {keep} THEN t.order_ref ELSE EXCLUDED.order_ref END,
        ccode = CASE WHEN {keep} THEN t.ccode ELSE EXCLUDED.ccode END,
        amount = CASE WHEN {keep} THEN t.amount ELSE EXCLUDED.amount END,
        -- (a kept row whose currency was not known, decided on a Sign alone: a delivery that verified it fills it in)
        currency = CASE WHEN {keep} THEN COALESCE(t.currency, CASE WHEN EXCLUDED.verified THEN EXCLUDED.currency END)
                        ELSE EXCLUDED.currency END,
        source = CASE WHEN {keep} THEN t.source ELSE EXCLUDED.source END,
        decision = CASE WHEN {keep} THEN t.decision ELSE EXCLUDED.decision END,
        detail = CASE WHEN {keep} THEN t.detail ELSE EXCLUDED.detail END,
        previous_status = CASE WHEN {keep} THEN t.previous_status ELSE EXCLUDED.previous_status END,
        approval_code = CASE WHEN {keep} THEN t.approval_code ELSE EXCLUDED.approval_code END,
        raw_callback = CASE WHEN {keep} THEN t.raw_callback ELSE EXCLUDED.raw_callback END,
        decided_at = CASE WHEN {keep} THEN t.decided_at ELSE now() END,
        -- (one transaction, one invoice: the first number a trusted delivery or answer gave stays; never one from a
        -- write about another payment's row or a refund's, decided `duplicate` against it; a row overwritten becomes
        -- the writer's, its number with it)
        invoice_number = CASE WHEN NOT {keep} THEN COALESCE(EXCLUDED.invoice_number, t.invoice_number)
                              WHEN {foreign} THEN t.invoice_number
                              ELSE COALESCE(t.invoice_number, EXCLUDED.invoice_number) END,
        verified = t.verified OR EXCLUDED.verified
     WHERE :seen::text IS NULL OR t.xmin::text = :seen
    RETURNING CASE WHEN :override AND (t.source = 'refund' OR t.payment_id IS DISTINCT FROM :id::uuid)
                   THEN 'duplicate' ELSE t.decision END,
              t.xmax::text <> '0' AS existed
)"""
    )
    .replace("{keep}", _KEEP)
    .replace("{foreign}", _FOREIGN)
)

_LOCK_NAMED_PAYMENT = "SELECT 1 FROM public.payments WHERE id = :id::uuid FOR UPDATE"

_KEEP_UNVERIFIED = """
INSERT INTO public.hypay_unverified_callbacks AS u (raw_sha256, hypay_id, payment_id, source, reason, raw_callback)
VALUES (:sha, :txn, :id::uuid, :source, :reason, :raw)
ON CONFLICT (raw_sha256) DO UPDATE SET last_seen = now(), deliveries = u.deliveries + 1, reason = EXCLUDED.reason"""

# A kept callback sent again and found forged: marked (its text, not its Id: a forger's copy of a genuine Id marks only
# the forger's text).
_FOUND_FORGED = """
UPDATE public.hypay_unverified_callbacks SET found_forged_at = now()
 WHERE raw_sha256 = :sha AND found_forged_at IS NULL
RETURNING hypay_id"""

# Whether the ledger holds payment `p`'s credits in full: its purchase rows net of the web app's own reversals ('refund'
# rows of it, as refunds_store._GRANTED counts them) make the credits it sells. A purchase row alone is not enough:
# the web app may have written one of another amount, or reversed it.
GRANTED_IN_FULL = """(
    (SELECT COALESCE(sum(c.amount), 0) FROM public.credit_transactions c
      WHERE c.payment_id = p.id AND c.type IN ('purchase', 'refund'))
    = {SOLD_CREDITS})""".replace("{SOLD_CREDITS}", SOLD_CREDITS)

# Action.BIND (an operator's complete of a payment whose credits were granted before: a purchase row the web app wrote
# while it was pending, the ledger holding its credits in full) is this statement with `{bound}` requiring that, and no
# purchase row or balance change (`{granting}` false): its credits then stand on the transaction (a refund of it takes
# them back). A callback's grant (Action.GRANT) has neither condition in its text, so nothing more to plan.
_GRANT = """
WITH paid AS (
    UPDATE public.payments p
       SET status = 'completed', hypay_transaction_id = :txn, hypay_ccode = 0, hypay_approval_code = :acode,
           completed_at = now(), updated_at = now()
     WHERE p.id = :id::uuid AND p.status = :previous_status
       {bound}
    RETURNING p.id, p.user_id, p.amount, p.save_card, :credits::int AS credits,
              (SELECT k.name FROM public.credit_packs k WHERE k.id = p.credit_pack_id) AS pack_name
), granted AS (
    INSERT INTO public.credit_transactions (user_id, amount, type, description, payment_id)
    SELECT user_id, credits, 'purchase', COALESCE(pack_name, 'Credit pack'), id FROM paid
     WHERE credits > 0 AND {granting}
    RETURNING user_id, amount
), credited AS (
    UPDATE public.profiles u SET credits = u.credits + g.amount, updated_at = now()
      FROM granted g WHERE u.id = g.user_id
    RETURNING 1
), invoiced AS (
    INSERT INTO public.invoices (user_id, payment_id, invoice_number, amount)
    SELECT user_id, id, :invoice, amount FROM paid WHERE :invoice::text IS NOT NULL
    ON CONFLICT (payment_id) WHERE payment_id IS NOT NULL AND legacy_duplicate_of IS NULL DO NOTHING
    RETURNING 1
), {journal}
SELECT (SELECT decision FROM journal), (SELECT user_id::text FROM paid), (SELECT amount FROM granted),
       (SELECT save_card FROM paid), (SELECT existed FROM journal)"""

_FAIL = """
WITH failed AS (
    UPDATE public.payments SET status = 'failed', hypay_ccode = :ccode, hypay_message = :detail, updated_at = now()
     WHERE id = :id::uuid AND status = 'pending'
    RETURNING 1
), {journal}
SELECT (SELECT decision FROM journal), NULL, NULL, NULL, (SELECT existed FROM journal)"""

_REVIEW = """
WITH flagged AS (
    UPDATE public.payments SET status = 'needs_review', review_reason = :detail, updated_at = now()
     WHERE id = :id::uuid AND status IN ('pending', 'failed', 'expired')
    RETURNING 1
), {journal}
SELECT (SELECT decision FROM journal), NULL, NULL, NULL, (SELECT existed FROM journal)"""

# Nothing to change on the payment; but a delivery VERIFY confirmed, of the transaction the payment completed with,
# gives the invoice number one settled on its Sign alone (Hesh is not signed) could not: kept when none is. Only for
# a transaction this backend granted (its journal row says the payment was pending, failed or expired when it was
# decided, or in review: an operator's complete), never one the web app completed (journaled 'granted before', the
# payment 'completed' then): the web app invoices its own way.
_NOTHING = """
WITH invoiced AS (
    INSERT INTO public.invoices (user_id, payment_id, invoice_number, amount)
    SELECT p.user_id, p.id, :invoice, p.amount FROM public.payments p
     WHERE :invoice::text IS NOT NULL AND p.id = :id::uuid AND p.status = 'completed'
       AND ltrim(p.hypay_transaction_id, '0') = ltrim(:txn, '0')
       AND EXISTS (SELECT 1 FROM public.hypay_transactions j
                    WHERE j.hypay_id = :txn AND j.payment_id = p.id AND j.decision = 'granted'
                      AND j.previous_status IN ('pending', 'failed', 'expired', 'needs_review'))
    ON CONFLICT (payment_id) WHERE payment_id IS NOT NULL AND legacy_duplicate_of IS NULL DO NOTHING
    RETURNING 1
), {journal}
SELECT (SELECT decision FROM journal), NULL, NULL, NULL, (SELECT existed FROM journal)"""

_RAW_KEPT = 8192  # the longest callback text kept (hypay_unverified_callbacks.raw_callback's check)


def _raw_sha256(raw_callback: str) -> str:
    """The key of a kept callback: the SHA-256 of its text as kept."""
    return hashlib.sha256(raw_callback[:_RAW_KEPT].encode()).hexdigest()


_STATEMENTS = {
    Action.GRANT: _GRANT.format(journal=_JOURNAL.strip(), bound="", granting="true"),
    Action.BIND: _GRANT.format(
        journal=_JOURNAL.strip(), bound=f"AND COALESCE({GRANTED_IN_FULL}, false)", granting="false"
    ),
    Action.FAIL: _FAIL.format(journal=_JOURNAL.strip()),
    Action.REVIEW: _REVIEW.format(journal=_JOURNAL.strip()),
    Action.NONE: _NOTHING.format(journal=_JOURNAL.strip()),
}


def _entry(
    decision: str | None,
    payment_id: str | None,
    verified: Any,
    source: str | None,
    ccode: int | None,
    amount: str | None,
    currency: str | None,
    version: str | None,
    closed_as: str | None,
    hypay_id: str | None,
) -> JournalEntry | None:
    if not decision:
        return None
    return JournalEntry(
        Verdict(decision),
        UUID(payment_id) if payment_id else None,
        bool(verified),
        source,
        ccode,
        Decimal(amount) if amount is not None else None,
        currency,
        version,
        closed_as,
        hypay_id,
    )


class Journal:
    """The journal's statements, on a database or inside a transaction."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def spellings(self, hypay_id: str) -> list[str]:
        """The Ids the journal holds that are this Hyp Id, with or without leading zeros ("123", "0123"), as held: this
        spelling first, then as first seen (two only in a journal adopted so, `_FACTS`)."""
        rows = self.runner.run(
            bind(
                f"SELECT hypay_id FROM public.hypay_transactions WHERE hypay_id IN {SPELLINGS}"
                " ORDER BY hypay_id = :txn DESC, first_seen, hypay_id",
                txn=hypay_id,
            )
        )
        return [row[0] for row in rows]

    def as_hyp_writes(self, hypay_id: str) -> str:
        """`hypay_id` as the journal holds its number, else as Hyp writes it (no leading zero): one transaction, one
        spelling, whoever wrote the Id (an operator, the web app)."""
        held = self.spellings(hypay_id)
        return held[0] if held else hypay_id.lstrip("0")

    def facts(self, txn: HypTransaction) -> tuple[PaymentFacts | None, JournalEntry | None]:
        """Lock the claimed payment (when it exists) and read the journal's row for the transaction."""
        row = self.runner.run(bind(_FACTS, id=str(txn.payment_id) if txn.payment_id else None, txn=txn.hypay_id))[0]
        (
            status,
            amount,
            currency,
            user,
            stored_txn,
            granted_before,
            used_elsewhere,
            unnamed_refund,
            refunded_by_another,
            credits_sold,
            decision,
            jpid,
            jverified,
            jsrc,
            jccode,
            jamount,
            jcurrency,
            jversion,
            jclosed,
            jspelled,
        ) = row
        facts = (
            PaymentFacts(
                PaymentStatus.from_db(status),
                stored_money(amount, currency),
                UUID(user),
                stored_txn,
                bool(granted_before),
                bool(used_elsewhere),
                Decimal(unnamed_refund) if unnamed_refund is not None else None,
                UUID(refunded_by_another) if refunded_by_another else None,
                int(credits_sold) if credits_sold is not None else None,
            )
            if status is not None
            else None
        )
        return facts, _entry(decision, jpid, jverified, jsrc, jccode, jamount, jcurrency, jversion, jclosed, jspelled)

    def entry(self, txn: HypTransaction) -> JournalEntry | None:
        """The journal's row for the transaction alone (no payment read, none locked)."""
        rows = self.runner.run(bind(_ENTRY, txn=txn.hypay_id))
        return _entry(*rows[0]) if rows else None

    def lock_payment(self, payment_id: UUID | None) -> None:
        """The payment a callback names locked, as settling locks it (none when it names none, or none that exists)."""
        if payment_id is not None:
            self.runner.run(bind(_LOCK_NAMED_PAYMENT, id=str(payment_id)))

    def apply(
        self,
        txn: HypTransaction,
        *,
        action: Action,
        verdict: Verdict,
        detail: str | None,
        previous_status: PaymentStatus | None,
        raw_callback: str | None = None,
        override: bool = False,
        contradiction: str | None = None,
        seen: str | None = None,
        credits: int | None = None,
    ) -> Applied:
        """Change the payment as decided and write the journal row, in one statement. `contradiction`: what a
        verified redelivery said against the journal's decided row, kept on it (counted, the last one's text). `seen`:
        the row's version the decision was taken on (`JournalEntry.version`); changed since (a refund's attempt on it,
        say), the row is left as it is and `journaled` is None. `credits`: what a grant gives, the payment's credits
        sold as read under its lock (SOLD_CREDITS): some, or no grant is made."""
        if action == Action.GRANT and not (credits is not None and credits > 0):
            raise ValueError("a grant needs the credits the payment sold")
        params: dict[str, Any] = {
            "credits": credits,
            "txn": txn.hypay_id,
            "id": str(txn.payment_id) if txn.payment_id else None,
            "order_ref": txn.order_ref[:200] or None,
            "ccode": txn.ccode,
            "amount": txn.amount.amount if txn.amount else None,
            "currency": str(txn.amount.currency) if txn.amount and txn.currency_known else None,
            "source": str(txn.source),
            "verified": txn.verified,
            "decision": str(verdict),
            "detail": detail,
            "previous_status": str(previous_status) if previous_status else None,
            "acode": txn.approval_code or None,
            "raw": raw_callback[:_RAW_KEPT] if raw_callback else None,
            "override": override,
            "contradiction": contradiction[:500] if contradiction else None,
            "seen": seen,
        }
        # The invoice Hyp numbered: with a grant, or (`_NOTHING`) from a verified delivery of a transaction this backend
        # granted before (`_NOTHING` checks the journal's row). Only a delivery whose unsigned fields VERIFY confirmed
        # carries one.
        invoiced = action in (Action.GRANT, Action.BIND) or (
            action == Action.NONE and verdict == Verdict.GRANTED and txn.verified and contradiction is None
        )
        params["invoice"] = (txn.invoice_number or None) if invoiced else None
        # The journal keeps the number whatever is decided (a review's operator completes with it): from a transaction
        # whose fields were trusted only (an unverified delivery's Hesh is anyone's).
        params["numbered"] = (txn.invoice_number or None) if txn.verified else None
        journaled, user, granted, save_card, existed = self.runner.run(bind(_STATEMENTS[action], **params))[0]
        return Applied(
            Verdict(journaled) if journaled is not None else None,
            UUID(user) if user else None,
            int(granted or 0),
            bool(save_card),
            bool(existed),
        )

    def found_forged(self, raw_callback: str) -> str | None:
        """A callback a check found forged: if it is one kept unverified (the same text), it is marked so. The Hyp Id
        it named, or None (not kept: the usual forgery)."""
        if len(raw_callback) > _RAW_KEPT:
            return None  # kept cut short: a text sharing its first part with a genuine one must not mark it
        rows = self.runner.run(bind(_FOUND_FORGED, sha=_raw_sha256(raw_callback)))
        return rows[0][0] if rows else None

    def record_unverified(
        self,
        txn: HypTransaction,
        *,
        detail: str,
        raw_callback: str,
        contradiction: str | None = None,
        locked: bool = False,
    ) -> None:
        """A callback that could not be verified yet (our side): every distinct one kept as received, and
        the journal's row for its Id (only when there is none yet: an unverified claim overwrites nothing). Kept under
        the Id as the journal spells its number, when it holds it (its one row; a second spelling's row would be
        refused by sql/014's index, and the copy with it). `contradiction`: what a verified one, kept instead of
        settled, says against the row (counted on it, as `apply` counts a settled redelivery's).

        The payment it names is locked first, as settling locks it (`locked`: the caller has locked it already): the
        cleanup skips a payment locked so, and never expires one whose callback is being kept (its own statement's
        snapshot could not see the keep)."""
        if not locked:
            self.lock_payment(txn.payment_id)
        held = self.spellings(txn.hypay_id)
        if held:  # its own spelling first, when held
            txn = txn._replace(hypay_id=held[0])
        raw = raw_callback[:_RAW_KEPT]
        self.runner.run(
            bind(
                _KEEP_UNVERIFIED,
                sha=_raw_sha256(raw),
                txn=txn.hypay_id,
                id=str(txn.payment_id) if txn.payment_id else None,
                source=str(txn.source),
                reason=detail[:500],
                raw=raw,
            )
        )
        self.apply(
            txn,
            action=Action.NONE,
            verdict=Verdict.UNVERIFIED,
            detail=detail,
            previous_status=None,
            raw_callback=raw,
            contradiction=contradiction,
        )


__all__ = [
    "SPELLINGS",
    "Action",
    "Applied",
    "HypTransaction",
    "Journal",
    "JournalEntry",
    "PaymentFacts",
    "Source",
    "Verdict",
]

"""Acting on a verified Hypay callback (browser redirect or server notification): exactly once per Hyp `Id`.

The redirect, its reloads and the notification all carry the same parameters. They are made
idempotent on Hyp's transaction `Id` with the Powertools utility on the Postgres store, validated on
the fields that say what happened (`Order`, `Amount`, `Coin`, `CCode`): whichever arrives first does
the work, the others get its outcome. The work is `settle()`: one transaction that locks the payment,
decides, and writes the decision with its journal row; the journal and the database's unique
constraints make a second grant impossible even if the idempotency record were gone.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyPersistenceConsistencyError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from payments.adapters.db import Database, QueryError, Transaction
from payments.adapters.hypay import HypayClient
from payments.adapters.journal import HypTransaction, Journal, Source
from payments.adapters.payments_store import PaymentsStore
from payments.domain import hypay as protocol
from payments.domain.money import CURRENCY_OF_COIN, Currency, Money
from payments.errors import (
    DatabaseUnavailable,
    GatewayDeclined,
    GatewayRejected,
    InvalidRequest,
    PaymentError,
)
from payments.idempotency import PostgresPersistenceLayer
from payments.observability import logger, metrics
from payments.records import Record
from payments.services.settle import Result, Settlement, contradiction_kept, settle

_APPROVAL_CODE = re.compile(r"[0-9A-Za-z]{0,20}", re.ASCII)
_LAST4 = re.compile(r"[0-9]{4}", re.ASCII)
# The fields `Callback.parse` reads (only these are decoded).
_PARSED_FIELDS = frozenset({"Id", "CCode", "Amount", "Order", "Coin", "Hesh", "L4digit", "ACode", "errMsg"})


class CallbackOutcome(Record):
    result: Result
    payment_id: UUID | None


class CallbackInProgress(PaymentError):
    """Another delivery of the same transaction is being processed right now."""

    code = "callback_in_progress"


class Callback(Record):
    """The fields of a callback that processing relies on, each in a strict format.

    Only verified fields are trusted: with the HMAC alone (`currency_trusted=False`) `Coin`, `Hesh`,
    `L4digit` and `errMsg` are unsigned, so they are not read (the currency is the payment's own).
    `raw_query` is the callback as received (kept when it cannot be settled yet); never in the repr.
    """

    _hidden = frozenset({"raw_query"})
    _uncompared = frozenset({"raw_query"})
    transaction_id: str
    order_ref: str
    payment_id: UUID | None
    ccode: int
    amount: Money
    approval_code: str
    invoice_number: str | None
    last4: str | None
    message: str | None
    currency_trusted: bool = True
    currency_known: bool = True
    raw_query: str | None = None

    @classmethod
    def parse(cls, raw_query: str, *, currency_trusted: bool = True) -> Callback:
        """Validate the format of what Hyp sent. `Order` need not be ours: a paid unknown one is journaled."""
        fields = protocol.decode_fields(raw_query, _PARSED_FIELDS)
        transaction_id = fields.get("Id", "")
        if protocol.hyp_id(transaction_id) is None:
            raise InvalidRequest(protocol.HYP_ID_PROBLEM)
        ccode = fields.get("CCode", "")
        if not protocol.CCODE.fullmatch(ccode):
            raise InvalidRequest("CCode is not a Hyp code (1 to 3 ASCII digits)")
        raw_amount = fields.get("Amount", "")
        if not protocol.AMOUNT.fullmatch(raw_amount):
            raise InvalidRequest("Amount is not an amount (digits, at most 2 decimals)")
        order = fields.get("Order", "")[:200]  # longer is never ours: kept (truncated) as an unmatched claim
        try:
            payment_id: UUID | None = UUID(order) if len(order) == 36 else None
        except ValueError:
            payment_id = None
        # Coin not read (HMAC alone): the amount's currency is a stand-in until the payment's own replaces it
        currency, currency_known = Currency.ILS, False
        if currency_trusted:
            found = CURRENCY_OF_COIN.get(fields.get("Coin", "1") or "1")
            # Verified but not a currency we sell in: journaled for review, never refused unrecorded
            currency, currency_known = (found, True) if found is not None else (Currency.ILS, False)
        hesh = fields.get("Hesh", "") if currency_trusted else ""
        last4 = fields.get("L4digit", "") if currency_trusted else ""
        acode = fields.get("ACode", "")
        return cls(
            transaction_id=transaction_id,
            order_ref=order,
            payment_id=payment_id,
            ccode=int(ccode),
            amount=Money.of(raw_amount, currency),
            approval_code=acode if _APPROVAL_CODE.fullmatch(acode) else "",
            invoice_number=hesh if protocol.INVOICE_NUMBER.fullmatch(hesh) else None,
            last4=last4 if _LAST4.fullmatch(last4) else None,
            message=(protocol.redact(fields.get("errMsg", "").strip())[: protocol.MESSAGE_CHARS] or None)
            if currency_trusted
            else None,
            currency_trusted=currency_trusted,
            currency_known=currency_known,
            raw_query=raw_query,
        )

    def transaction(self, source: Source, *, verified: bool = True) -> HypTransaction:
        return HypTransaction(
            hypay_id=self.transaction_id,
            order_ref=self.order_ref,
            payment_id=self.payment_id,
            ccode=self.ccode,
            amount=self.amount,
            source=source,
            verified=verified,
            approval_code=self.approval_code or None,
            invoice_number=self.invoice_number,
            message=self.message,
            currency_known=self.currency_known,
        )

    def log_keys(self) -> dict[str, str | None]:
        """What a log line about this callback names it by: Hyp's Id and our payment id, nothing of its fields."""
        return {
            "hypay_transaction_id": self.transaction_id,
            "payment_id": str(self.payment_id) if self.payment_id else None,
        }

    def fingerprint(self) -> dict[str, Any]:
        return {
            "order": self.order_ref,
            "amount": str(self.amount.amount),
            "currency": str(self.amount.currency) if self.currency_trusted and self.currency_known else None,
            "ccode": self.ccode,
        }


def keep_unverified(
    db: Database, raw_query: str, *, source: Source, reason: str, verified: bool = False, currency_trusted: bool = True
) -> None:
    """A callback we cannot verify yet (our configuration, Hyp unreachable), or a `verified` one the database did not
    settle (another delivery held it, a statement did not pass): keep it for reconciliation.

    Needs the database only (not the gateway, whose configuration may be what is broken). Best effort:
    a malformed one has nothing to keep, and a database failure is logged with the Hyp Id. A verified one is read as
    its verification allows (`currency_trusted`: Coin and the other unsigned fields not read without it), and what it
    says against the journal's decided row is kept on that row and counted, as a settled redelivery's would be.
    """
    try:
        callback = Callback.parse(raw_query, currency_trusted=currency_trusted or not verified)
    except InvalidRequest:
        return
    txn = callback.transaction(source, verified=False)

    def keep(tx: Transaction) -> str | None:
        journal = Journal(tx)
        if not verified:
            journal.record_unverified(txn, detail=reason, raw_callback=raw_query)
            return None
        journal.lock_payment(txn.payment_id)  # as settling does, before the journal's row is read
        contradiction = contradiction_kept(journal, callback.transaction(source))
        journal.record_unverified(txn, detail=reason, raw_callback=raw_query, contradiction=contradiction, locked=True)
        return contradiction

    try:
        # Both rows or neither: the journal's row is what the queue shows and what holds the payment pending.
        contradiction = db.atomic(keep, read_committed=True)
    except PaymentError as exc:
        logger.error("unverified hypay callback not kept", extra={**callback.log_keys(), "reason": exc.code})
        return
    logger.warning(
        "unverified hypay callback kept for reconciliation",
        extra={**callback.log_keys(), "ccode": callback.ccode, "reason": reason},
    )
    if contradiction is not None:
        metrics.add_metric(name="ContradictingDelivery", unit=MetricUnit.Count, value=1)
        logger.warning(
            "hyp transaction delivered again with other facts",
            extra={**callback.log_keys(), "source": str(source), "detail": contradiction},
        )


class _Delivery(dict[str, Any]):
    """What the idempotency utility hashes: built for one call and never changed after, so Powertools' defensive
    deep copy of it (taken before the work runs, so that what is hashed at the end is what was hashed at the
    start) can be the object itself."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Delivery:
        return self


class _Progress:
    """How far one delivery's work got: whether it began (its claim passed), and the statement the database did not
    pass in it, if one did (what the caller acts on even when clearing the claim afterwards failed too)."""

    __slots__ = ("began", "failed")

    def __init__(self) -> None:
        self.began = False
        self.failed: QueryError | None = None


class HandleCallback:
    """`HandleCallback(store, gateway, persistence)(raw_query, source=...)`: the same outcome for every delivery."""

    def __init__(
        self,
        store: PaymentsStore,
        gateway: HypayClient,
        persistence: PostgresPersistenceLayer,
        *,
        expires_after_seconds: int = 7 * 86400,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.config = IdempotencyConfig(
            event_key_jmespath="transaction_id",
            payload_validation_jmespath="fingerprint",
            expires_after_seconds=expires_after_seconds,
            raise_on_no_idempotency_key=True,
        )
        self._once = idempotent_function(
            data_keyword_argument="delivery",
            config=self.config,
            persistence_store=persistence,
            key_prefix="hypay_callback",
        )(self._process)

    def __call__(
        self, raw_query: str, *, source: Source = Source.REDIRECT, currency_trusted: bool = True, context: Any = None
    ) -> CallbackOutcome:
        callback = Callback.parse(raw_query, currency_trusted=currency_trusted)
        if context is not None:
            self.config.register_lambda_context(context)
        delivery = _Delivery(transaction_id=callback.transaction_id, fingerprint=callback.fingerprint())
        progress = _Progress()
        try:
            stored = self._once(delivery=delivery, callback=callback, source=source, progress=progress)
        except IdempotencyValidationError:
            # The same Hyp Id with another Order, amount or code: the journal decides (never a second grant).
            return self._outcome(self._settle(callback, source))
        except (IdempotencyAlreadyInProgressError, IdempotencyInconsistentStateError):
            # Another delivery holds the claim, or the record changed under ours past Powertools' retries: not yet.
            raise CallbackInProgress("another delivery of this transaction is being processed") from None
        except IdempotencyPersistenceLayerError as exc:
            cause = exc.__cause__
            if isinstance(cause, IdempotencyPersistenceConsistencyError) and not progress.began:
                # A row another system (the web app) wrote holds this transaction's key: the record can never be
                # ours. As for a changed payload, the journal decides, once (its unique constraints make a second
                # grant impossible without the record), on every delivery.
                logger.error(
                    "hypay callback key held by a record this service did not write", extra=callback.log_keys()
                )
                return self._outcome(self._settle(callback, source))
            if isinstance(cause, QueryError) and not progress.began:
                # The database answered the claim (or the read of the record) but did not pass it this time (a lock
                # wait, a timeout, a conflict past its retries) or refused it for good: the work never began. As a
                # settling statement's failure: the caller keeps a verified callback the database did not take (a
                # redirect may never come again), and one refused for good is kept here, counted and alarmed.
                if cause.refused_for_good:
                    self._not_settled(callback, source, cause)
                raise cause from exc
            if progress.failed is not None:
                # The work's own statement did not pass (kept already if refused for good), and clearing the claim
                # after it failed too: the work's failure is what the caller acts on (a verified redirect is kept).
                raise progress.failed from exc
            raise DatabaseUnavailable("the payment store is unavailable") from exc
        payment = stored.get("payment_id")
        return CallbackOutcome(Result(stored["result"]), UUID(payment) if payment else None)

    def keep_unverified(self, raw_query: str, *, source: Source, reason: str) -> None:
        keep_unverified(self.store.db, raw_query, source=source, reason=reason)

    # -- the work, once per Hyp transaction ------------------------------------------------------

    def _process(
        self, delivery: dict[str, Any], callback: Callback, source: Source, progress: _Progress
    ) -> dict[str, Any]:
        progress.began = True
        try:
            outcome = self._outcome(self._settle(callback, source))
        except QueryError as exc:
            progress.failed = exc
            raise
        return {"result": str(outcome.result), "payment_id": str(outcome.payment_id) if outcome.payment_id else None}

    def _settle(self, callback: Callback, source: Source) -> Settlement:
        try:
            settlement = settle(self.store.db, callback.transaction(source), currency_trusted=callback.currency_trusted)
        except QueryError as exc:
            if exc.refused_for_good:
                self._not_settled(callback, source, exc)
            raise
        if self._card_owed(callback, settlement):
            assert settlement.user_id is not None and callback.payment_id is not None
            self._save_card(callback, settlement.user_id, callback.payment_id)
        return settlement

    def _not_settled(self, callback: Callback, source: Source, exc: QueryError) -> None:
        """A verified callback the database refused to settle (a constraint, a trigger, a bug in a statement: not
        a conflict that passes). The delivery is answered "not yet" as any failure of ours, but Hyp's transaction
        must not live only in a log: it is kept as an unverified callback would be (its journal row, which also
        keeps the cleanup from expiring the payment), counted and alarmed. Best effort: the database may refuse
        that too."""
        metrics.add_metric(name="CallbackNotSettled", unit=MetricUnit.Count, value=1)
        logger.error(
            "verified hypay callback could not be settled", extra={**callback.log_keys(), "sqlstate": exc.sqlstate}
        )
        raw = callback.raw_query
        if raw is not None:
            keep_unverified(
                self.store.db,
                raw,
                source=source,
                reason=f"verified, but not settled: database error {exc.sqlstate}",
                verified=True,
                currency_trusted=callback.currency_trusted,
            )

    def _card_owed(self, callback: Callback, settlement: Settlement) -> bool:
        """The buyer asked to keep the card that paid this payment, and it is not kept yet.

        Asked of the database, not only of this delivery's grant: when the grant's answer was lost (the
        transaction re-run finds it granted), the invocation died before Hyp's token was fetched, or saving
        failed, a later delivery of the same transaction still owes the card."""
        if settlement.result != Result.COMPLETED or settlement.user_id is None or callback.payment_id is None:
            return False
        if settlement.credits_granted:
            return settlement.save_card  # granted just now: the grant statement said whether the buyer opted in
        return self.store.card_owed(callback.payment_id, callback.transaction_id, callback.last4)

    @staticmethod
    def _outcome(settlement: Settlement) -> CallbackOutcome:
        return CallbackOutcome(settlement.result, settlement.payment_id)

    def _save_card(self, callback: Callback, user_id: UUID, payment_id: UUID) -> None:
        """After success, the buyer having opted in: fetch Hyp's token and keep it (never the card number).

        Hyp refusing the token or answering one that cannot be kept, or the database refusing the card's values (a
        constraint, a value out of range: the same every time), is final: counted (CardNotSaved), logged, not raised.
        Any other failure may pass and raises CardNotSavedYet: the credits stay granted, the delivery is "not yet"
        and the next one (Hyp retries its notify; the cleanup never expires a completed payment) saves the card.
        Those are ours or passing: Hyp or the database unavailable, our credentials refused, the Hyp secret
        unreadable or malformed, a permission or a table missing (a configuration), a read-only server (a
        failover), a conflict, a timeout, out of disk or memory, an I/O error."""
        try:
            token = self.gateway.get_token(callback.transaction_id)
            self.store.save_card(
                user_id=user_id,
                payment_id=payment_id,
                token=token.value,
                expiry_month=token.expiry_month,
                expiry_year=token.expiry_year,
                last4=callback.last4,
            )
        except (GatewayDeclined, GatewayRejected) as exc:  # Hyp refused the token
            self._not_saved(payment_id, exc)
        except QueryError as exc:
            if exc.bad_data:  # the card's values refused (a CHECK, a value out of range): the same every time
                self._not_saved(payment_id, exc)
            else:
                self._not_saved_yet(payment_id, exc)
        except PaymentError as exc:
            self._not_saved_yet(payment_id, exc)

    @staticmethod
    def _not_saved(payment_id: UUID, exc: PaymentError) -> None:
        """Final: Hyp refused the token, or the database refuses the statement for good. The payment stands."""
        metrics.add_metric(name="CardNotSaved", unit=MetricUnit.Count, value=1)
        logger.error("card token not saved", extra={"payment_id": str(payment_id), "code": exc.code})

    @staticmethod
    def _not_saved_yet(payment_id: UUID, exc: PaymentError) -> None:
        metrics.add_metric(name="CardNotSavedYet", unit=MetricUnit.Count, value=1)
        logger.warning("card token not saved yet", extra={"payment_id": str(payment_id), "code": exc.code})
        raise CardNotSavedYet("the payment is complete; its card is not saved yet") from exc


class CardNotSavedYet(DatabaseUnavailable):
    """The payment completed, but the card the buyer asked to keep could not be saved yet: "not yet" (503)."""

    code = "card_not_saved_yet"


__all__ = ["Callback", "CallbackInProgress", "CardNotSavedYet", "CallbackOutcome", "HandleCallback", "Result"]
